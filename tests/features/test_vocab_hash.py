"""Vocabularies (min_count, OOV, padding, sharing) and hashing."""
import os

import farmhash
import numpy as np
import pytest
import tensorflow as tf

from features import encoders as E
from features.vocab import build_vocab, read_vocab
from pipeline.preprocess_config import FeatureSpec


def _spec(name="city", dtype="string", kind="categorical", **enc):
    return FeatureSpec(name, kind, dtype, "user", enc)


def test_vocab_min_count_order_and_ids(tmp_path):
    counts = {"b": 5, "a": 5, "c": 9, "rare": 1, "d": 2}
    f = E.build_feature(_spec(type="vocab", min_count=2), {"counts": counts}, str(tmp_path))
    # count desc then value: c(9), a(5), b(5), d(2); 'rare' is below min_count
    assert read_vocab(os.path.join(tmp_path, "vocab", "city.txt")) == ["c", "a", "b", "d"]
    assert f.encoding["vocab_file"] == "vocab/city.txt" and f.num_ids == 6
    enc = E.NumpyEncoder(f, str(tmp_path))
    ids = enc.encode(["c", "a", "b", "d", "rare", "never", "", None, np.nan])
    assert ids[:, 0].tolist() == [2, 3, 4, 5, 1, 1, 0, 0, 0]


def test_vocab_max_size_and_unstorable_keys():
    counts = {"x": 3, "y": 2, "z": 1, "has\nnewline": 9, "": 50}
    assert build_vocab(counts, max_size=2) == ["x", "y"]
    assert build_vocab(counts) == ["x", "y", "z"]


def test_int_values_compare_as_decimal_strings(tmp_path):
    counts = E.count_values(_spec(dtype="int64", type="vocab"), [7, 7, 12, -3, None])
    assert counts == {"7": 2, "12": 1, "-3": 1}
    f = E.build_feature(_spec(dtype="int64", type="vocab"), {"counts": counts}, str(tmp_path))
    enc = E.NumpyEncoder(f, str(tmp_path))
    same = [enc.encode(v)[:, 0].tolist() for v in
            ([7, 12, -3, 5], ["7", "12", "-3", "5"], np.array([7.0, 12.0, -3.0, 5.0]), np.array([7, 12, -3, 5]))]
    assert all(s == [2, 4, 3, 1] for s in same)  # vocab: "7" (count 2), then "-3" < "12"
    tf_enc = E.make_tf_encoder(f, str(tmp_path))
    for x in (tf.constant([7, 12, -3, 5], tf.int32), tf.constant(["7", "12", "-3", "5"]),
              tf.constant([7.0, 12.0, -3.0, 5.0], tf.float64)):
        assert tf_enc(x).numpy()[:, 0].tolist() == [2, 4, 3, 1]
    assert enc.encode(np.array([7.0, np.nan]))[:, 0].tolist() == [2, 0]
    with pytest.raises(E.EncodeError, match="city.*rows \\[1\\]"):
        enc.encode([7, 2.5])


def test_default_replaces_missing_and_required_rows_fail(tmp_path):
    counts = {"a": 3, "b": 1}
    f = E.build_feature(FeatureSpec("c", "categorical", "string", "user", {"type": "vocab"}, default="b"),
                        {"counts": counts}, str(tmp_path))
    assert E.NumpyEncoder(f, str(tmp_path)).encode([None, "a", ""])[:, 0].tolist() == [3, 2, 3]
    fr = E.build_feature(FeatureSpec("r", "categorical", "string", "user", {"type": "vocab"}, required=True),
                         {"counts": counts}, str(tmp_path))
    with pytest.raises(E.EncodeError) as err:
        E.NumpyEncoder(fr, str(tmp_path)).encode(["a", None, "b", ""])
    assert err.value.feature == "r" and err.value.rows == [1, 3]


def test_share_vocab_with(tmp_path):
    item = FeatureSpec("item", "categorical", "string", "item", {"type": "vocab"})
    hist = FeatureSpec("hist", "sequence", "string", "sequence",
                       {"type": "sequence_vocab", "max_len": 4, "share_vocab_with": "item"})
    order = E.sort_for_build([hist, item])
    assert [s.name for s in order] == ["item", "hist"]
    assert E.analyzers_needed(hist) == set() and E.analyzers_needed(item) == {"counts"}
    fi = E.build_feature(item, {"counts": {"i1": 3, "i2": 2}}, str(tmp_path))
    fh = E.build_feature(hist, {}, str(tmp_path))
    assert fh.encoding["vocab_file"] == fi.encoding["vocab_file"] and fh.num_ids == fi.num_ids
    ids_item = E.NumpyEncoder(fi, str(tmp_path)).encode(["i2", "i1"])[:, 0].tolist()
    ids_hist = E.NumpyEncoder(fh, str(tmp_path)).encode([["i2", "i1"]])[0].tolist()
    assert ids_hist == ids_item + [0, 0]


def test_share_vocab_errors(tmp_path):
    a = FeatureSpec("a", "categorical", "string", "item", {"type": "hash", "num_buckets": 5})
    b = FeatureSpec("b", "categorical", "string", "item", {"type": "vocab", "share_vocab_with": "a"})
    with pytest.raises(E.EncodeError, match="own vocabulary"):
        E.sort_for_build([a, b])
    c = FeatureSpec("c", "categorical", "string", "item", {"type": "vocab", "share_vocab_with": "zz"})
    with pytest.raises(E.EncodeError, match="'c'.*'zz'"):
        E.sort_for_build([c])
    with pytest.raises(E.EncodeError, match="build 'x' first"):
        E.build_feature(FeatureSpec("d", "categorical", "string", "item",
                                    {"type": "vocab", "share_vocab_with": "x"}), {}, str(tmp_path))


def test_pyfarmhash_equals_tf_fingerprint():
    rng = np.random.default_rng(3)
    keys = ["", "a", "héllo", "日本語", "tab\there", "x" * 5000] + \
           ["".join(map(chr, rng.integers(32, 0x2FFF, rng.integers(0, 40)))) for _ in range(2000)]
    ours = np.array([farmhash.fingerprint64(k) for k in keys], dtype=np.uint64)
    tf_fp = tf.strings.to_hash_bucket_fast(keys, 2 ** 63 - 1).numpy().astype(np.uint64)
    np.testing.assert_array_equal(ours % np.uint64(2 ** 63 - 1), tf_fp)


def test_hash_ids_deterministic_and_in_range(tmp_path):
    f = E.build_feature(_spec(type="hash", num_buckets=7), {}, str(tmp_path))
    assert f.num_ids == 8
    enc = E.NumpyEncoder(f, str(tmp_path))
    vals = [f"u{i}" for i in range(500)] + [None, ""]
    a, b = enc.encode(vals)[:, 0], E.NumpyEncoder(f, str(tmp_path)).encode(vals)[:, 0]
    np.testing.assert_array_equal(a, b)
    assert a[-2:].tolist() == [0, 0] and a[:-2].min() >= 1 and a[:-2].max() <= 7
    assert len(set(a[:-2].tolist())) == 7  # all buckets used
    assert a[0] == farmhash.fingerprint64("u0") % 7 + 1
    with pytest.raises(E.EncodeError, match="num_buckets"):
        E.build_feature(_spec(type="hash"), {}, str(tmp_path))


def test_tf_table_reads_unusual_keys_like_numpy(tmp_path):
    keys = [" ", "a b", "tab\tkey", "x\x0by", "line\u2028sep", "é", "日本", "#", "\\n", "-0", "0"]
    counts = {k: 100 - i for i, k in enumerate(keys)}
    f = E.build_feature(_spec(type="vocab"), {"counts": counts}, str(tmp_path))
    assert read_vocab(os.path.join(tmp_path, f.encoding["vocab_file"])) == keys
    probe = keys + ["", "unseen", "a  b", "0.0"]
    expect = list(range(2, 2 + len(keys))) + [0, 1, 1, 1]
    assert E.NumpyEncoder(f, str(tmp_path)).encode(probe)[:, 0].tolist() == expect
    assert E.make_tf_encoder(f, str(tmp_path))(tf.constant(probe)).numpy()[:, 0].tolist() == expect


def test_empty_vocabulary_is_all_oov(tmp_path):
    f = E.build_feature(_spec(type="vocab", min_count=5), {"counts": {"a": 1}}, str(tmp_path))
    assert f.num_ids == 2
    assert E.NumpyEncoder(f, str(tmp_path)).encode(["a", ""])[:, 0].tolist() == [1, 0]
    assert E.make_tf_encoder(f, str(tmp_path))(tf.constant(["a", ""])).numpy()[:, 0].tolist() == [1, 0]
