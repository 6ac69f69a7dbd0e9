"""build_feature / analyzers / raw-value handling / sequences, identity and dense by hand."""
import numpy as np
import pytest

from features import encoders as E
from pipeline.preprocess_config import FeatureSpec


def _build(tmp_path, name, kind, dtype, enc, stats=None, **kw):
    f = E.build_feature(FeatureSpec(name, kind, dtype, "user", enc, **kw), stats or {}, str(tmp_path))
    return f, E.NumpyEncoder(f, str(tmp_path))


def test_analyzers_needed():
    def need(kind, dtype, enc):
        return E.analyzers_needed(FeatureSpec("f", kind, dtype, "user", enc))

    assert need("categorical", "string", {"type": "vocab"}) == {"counts"}
    assert need("categorical", "string", {"type": "hash", "num_buckets": 3}) == set()
    assert need("numeric", "float32", {"type": "bucketize"}) == {"quantiles"}
    assert need("numeric", "float32", {"type": "bucketize", "method": "log2sq"}) == {"quantiles"}
    assert need("numeric", "float32", {"type": "bucketize", "method": "log2sq", "max_id": 9}) == set()
    assert need("numeric", "float32", {"type": "mnse"}) == {"quantiles"}
    assert need("numeric", "float32", {"type": "mnse", "digits": [4, 3, 2], "signed": False}) == set()
    assert need("numeric", "float32", {"type": "identity"}) == set()
    assert need("numeric", "float32", {"type": "identity", "standardize": True}) == {"moments"}
    assert need("sequence", "string", {"type": "sequence_vocab", "max_len": 3}) == {"counts"}
    assert need("sequence", "float32", {"type": "sequence_float", "max_len": 3}) == set()
    assert need("dense", "float32", {"type": "dense", "dim": 3}) == set()


@pytest.mark.parametrize("kind,dtype,enc,match", [
    ("categorical", "string", {"type": "vocab", "min_cnt": 2}, "unknown vocab option.*min_cnt"),
    ("categorical", "string", {"type": "embedding"}, "encoding.type 'embedding'"),
    ("numeric", "float32", {"type": "vocab"}, "dtype in \\('string', 'int64'\\)"),
    ("categorical", "string", {"type": "mnse"}, "kind in \\('numeric',\\)"),
    ("sequence", "string", {"type": "sequence_vocab"}, "max_len must be an integer"),
    ("categorical", "string", {"type": "vocab", "min_count": 0}, "min_count must be an integer >= 1"),
    ("categorical", "string", {"type": "hash", "num_buckets": True}, "num_buckets"),
    ("numeric", "float32", {"type": "mnse", "scale": -1, "digits": [2, 2, 2], "signed": False}, "scale"),
    ("categorical", "string", {"type": "vocab", "share_vocab_with": "x", "min_count": 2}, "cannot be combined"),
])
def test_bad_specs_name_feature_and_option(tmp_path, kind, dtype, enc, match):
    with pytest.raises(E.EncodeError, match="feature 'f': .*" + match) as err:
        E.build_feature(FeatureSpec("f", kind, dtype, "user", enc), {"counts": {"a": 1}}, str(tmp_path))
    assert err.value.feature == "f" and err.value.reason


def test_missing_statistic_and_bad_default(tmp_path):
    with pytest.raises(E.EncodeError, match="train statistic 'counts'"):
        _build(tmp_path, "f", "categorical", "string", {"type": "vocab"})
    with pytest.raises(E.EncodeError, match="default"):
        _build(tmp_path, "f", "numeric", "float32", {"type": "identity"}, default="abc")
    with pytest.raises(E.EncodeError, match="takes no default"):
        _build(tmp_path, "f", "dense", "float32", {"type": "dense", "dim": 2}, default=[0, 0])
    with pytest.raises(E.EncodeError, match="feature names"):
        _build(tmp_path, "../x", "dense", "float32", {"type": "dense", "dim": 2})


def test_resolved_features_are_plain_json(tmp_path):
    import json

    f, _ = _build(tmp_path, "p", "numeric", "float32", {"type": "mnse"}, {"quantiles": np.float32([1, 2, 5e3])})
    g, _ = _build(tmp_path, "q", "numeric", "float32", {"type": "bucketize"}, {"quantiles": np.arange(100.0)})
    for feat in (f, g):
        assert json.loads(json.dumps(feat.encoding)) == feat.encoding


def test_sequence_vocab_keeps_last_max_len(tmp_path):
    f, enc = _build(tmp_path, "hist", "sequence", "string", {"type": "sequence_vocab", "max_len": 3},
                    {"counts": {"a": 3, "b": 2, "c": 1}})
    assert f.width == 3 and f.num_ids == 5 and f.encoded_dtype == "int64"
    got = enc.encode([["a", "b", "c", "a", "z"], ["b"], [], None, ["a", None, "", "b"], np.array(["c", "a"])])
    assert got.tolist() == [[4, 2, 1], [3, 0, 0], [0, 0, 0], [0, 0, 0], [2, 3, 0], [4, 2, 0]]
    with pytest.raises(E.EncodeError, match="'hist'.*list.*rows \\[1\\]"):
        enc.encode([["a"], "abc"])


def test_sequence_float_and_dense(tmp_path):
    f, enc = _build(tmp_path, "ts", "sequence", "float32", {"type": "sequence_float", "max_len": 2})
    got = enc.encode([[1.0, 2.0, 3.0], [None, 4.5], None, [float("nan")]])
    assert got.dtype == np.float32 and got.tolist() == [[2.0, 3.0], [4.5, 0.0], [0.0, 0.0], [0.0, 0.0]]
    f, enc = _build(tmp_path, "emb", "dense", "float32", {"type": "dense", "dim": 2})
    got = enc.encode([[1.0, 2.0], None, [float("nan"), -3.0]])
    assert got.dtype == np.float32 and got.tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, -3.0]]
    with pytest.raises(E.EncodeError, match="exactly 2 values.*rows \\[0, 2\\]"):
        enc.encode([[1.0], [1.0, 2.0], [1.0, 2.0, 3.0]])


def test_identity_fill_and_standardize(tmp_path):
    f, enc = _build(tmp_path, "x", "numeric", "float32", {"type": "identity"})
    assert f.encoded_dtype == "float32" and f.num_ids == 0
    assert enc.encode([1.5, None, float("nan")])[:, 0].tolist() == [1.5, 0.0, 0.0]
    _, enc = _build(tmp_path, "s", "numeric", "float32", {"type": "identity", "standardize": True},
                    {"moments": {"count": 10, "mean": 2.0, "var": 16.0}})
    assert enc.encode([6.0, None, 0.0])[:, 0].tolist() == [1.0, 0.0, -0.5]  # missing -> the mean
    _, enc = _build(tmp_path, "d", "numeric", "float32", {"type": "identity", "standardize": True},
                    {"moments": {"count": 10, "mean": 2.0, "var": 0.0}}, default=5)
    assert enc.encode([None, 2.0])[:, 0].tolist() == [3.0, 0.0]  # zero variance -> std 1


def test_required_numeric_rows(tmp_path):
    _, enc = _build(tmp_path, "r", "numeric", "float32", {"type": "bucketize", "boundaries": [0]}, required=True)
    with pytest.raises(E.EncodeError) as err:
        enc.encode([1.0, None, float("nan"), 2.0])
    assert err.value.rows == [1, 2] and "required" in err.value.reason


def test_canonical_forms_for_the_beam_job():
    keys, missing = E.categorical_keys([b"x", "y", 3, 4.0, None, float("nan"), "", E.INT_MISSING])
    assert keys.tolist() == ["x", "y", "3", "4", "", "", "", ""]
    assert missing.tolist() == [False] * 4 + [True] * 4
    x = E.numeric_values([0.1, "2", None, "", E.INT_MISSING, 1e40], "float32")
    assert x[0] == float(np.float32(0.1)) and x[1] == 2.0 and np.isnan(x[2:5]).all() and np.isinf(x[5])
    spec = FeatureSpec("h", "sequence", "string", "sequence", {"type": "sequence_vocab", "max_len": 2})
    assert E.count_values(spec, [["a", "b"], None, ["a", ""]]) == {"a": 2, "b": 1}
