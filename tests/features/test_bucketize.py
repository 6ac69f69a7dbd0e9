"""Bucketization: quantile boundaries, explicit boundaries, Criteo log2sq."""
import math

import numpy as np
import pytest

from features import encoders as E
from features.bucketize import log2sq_boundaries, log2sq_max_id
from pipeline.preprocess_config import FeatureSpec


def _build(tmp_path, stats=None, dtype="float32", **enc):
    spec = FeatureSpec("x", "numeric", dtype, "context", {"type": "bucketize", **enc})
    f = E.build_feature(spec, stats or {}, str(tmp_path))
    return f, E.NumpyEncoder(f, str(tmp_path))


def test_quantile_boundaries_equal_frequency(tmp_path):
    # the Beam job takes quantiles of numeric_values(), i.e. after the float32 rounding
    sample = np.sort(np.random.default_rng(0).exponential(3.0, 10_001).astype(np.float32).astype(np.float64))
    f, enc = _build(tmp_path, {"quantiles": sample}, num_buckets=4)
    # boundary i = sorted sample[ceil(n * i / 4)]: indices 2501, 5001, 7501
    assert f.encoding["boundaries"] == sample[[2501, 5001, 7501]].tolist()
    assert f.num_ids == 3 + 3
    ids = enc.encode(sample)[:, 0]
    assert np.bincount(ids).tolist() == [0, 0, 2501, 2500, 2500, 2500]  # equal-frequency buckets
    assert enc.encode([np.nan, -1e30, 1e30, np.inf])[:, 0].tolist() == [0, 2, 5, 5]


def test_quantile_ties_give_distinct_boundaries(tmp_path):
    sample = np.array([0.0] * 70 + [1.0] * 20 + [5.0] * 10)
    f, enc = _build(tmp_path, {"quantiles": sample}, num_buckets=10)
    assert f.encoding["boundaries"] == [0.0, 1.0, 5.0] and f.num_ids == 6
    assert enc.encode([-0.5, 0.0, 0.99, 1.0, 7.0])[:, 0].tolist() == [2, 3, 3, 4, 5]


def test_explicit_boundaries(tmp_path):
    f, enc = _build(tmp_path, boundaries=[0, 10, 100])
    assert f.encoding["method"] == "boundaries" and E.analyzers_needed(
        FeatureSpec("x", "numeric", "float32", "context", {"type": "bucketize", "boundaries": [1]})) == set()
    assert enc.encode([-1, 0, 9.99, 10, 100, 1e9, None])[:, 0].tolist() == [2, 3, 3, 4, 5, 5, 0]
    with pytest.raises(E.EncodeError, match="strictly increasing"):
        _build(tmp_path, boundaries=[0, 0, 1])


def test_log2sq_by_hand(tmp_path):
    f, enc = _build(tmp_path, method="log2sq", max_id=60)
    ids = enc.encode([3, 100, 4, 8, 1024, 2, 1, 0, 0.5, 1.5, -1, -1e30, 2.01, np.nan])[:, 0].tolist()
    # x > 2: 5 + floor(log2(x)^2): 3 -> 2, 100 -> 44, 4 -> 4, 8 -> 9 (exact at powers of two), 1024 -> 100 -> cap
    # 0 <= x <= 2: 3 + floor(x); negatives: 2; missing: 0; 2.01 -> floor(1.01^2) = 1
    assert ids == [7, 49, 9, 14, 60, 5, 4, 3, 3, 4, 2, 2, 6, 0]
    xs = np.exp(np.random.default_rng(1).uniform(0.7, 6.0, 2000))  # 2 < x < 403
    got = enc.encode(xs)[:, 0]
    expect = np.minimum(5 + np.floor(np.log2(xs) ** 2), 60)
    np.testing.assert_array_equal(got, expect)
    assert f.num_ids == 61


def test_log2sq_default_max_id_from_train_max(tmp_path):
    f, _ = _build(tmp_path, {"quantiles": np.array([-5.0, 0.0, 100.0])}, method="log2sq")
    assert f.encoding["max_id"] == 49 and f.num_ids == 50
    assert log2sq_max_id([1.0]) == 4 and log2sq_max_id([-2.0]) == 3  # never below 3 (ids 2..3)
    b = log2sq_boundaries(10)
    assert len(b) == 8 and b[3] == math.nextafter(2.0, math.inf) and b[6] == 4.0


def test_int64_raw_and_bad_values(tmp_path):
    f, enc = _build(tmp_path, dtype="int64", boundaries=[0, 2 ** 62])
    assert enc.encode([E.INT_MISSING, 0, 2 ** 63 - 1, -(2 ** 62)])[:, 0].tolist() == [0, 3, 4, 2]
    with pytest.raises(E.EncodeError, match="'x'.*not numbers.*rows \\[1\\]"):
        enc.encode(["3", "abc", ""])
    assert enc.encode(["3", "", " -7 ", "nan"])[:, 0].tolist() == [3, 0, 2, 0]


def test_options_checked(tmp_path):
    with pytest.raises(E.EncodeError, match="takes no \\['max_id'\\]"):
        _build(tmp_path, {"quantiles": [1.0]}, method="quantile", max_id=5)
    with pytest.raises(E.EncodeError, match="unknown bucketize option"):
        _build(tmp_path, buckets=3)
    with pytest.raises(E.EncodeError, match="method 'nope'"):
        _build(tmp_path, method="nope")
    with pytest.raises(E.EncodeError, match="no finite training values"):
        _build(tmp_path, {"quantiles": np.array([np.nan])})
