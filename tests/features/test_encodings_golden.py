"""Every encoding, fitted and applied to a small fixture, gives the codes it gave before the
encodings became classes (``features/encodings/``): the same schema entries, vocabulary files
and codes, through the numpy encoder (the Beam job's TFRecords) and the TF encoder (the
serving graph), eagerly and inside a ``tf.function``.

The expected values were computed with the code before that change and are hard-coded. A few
are worked by hand below: the MNSE code of 51, a hash bucket, a bucket index, the OOV id.
"""
import math

import farmhash
import numpy as np
import pytest
import tensorflow as tf

from features import encoders as E
from pipeline.preprocess_config import FeatureSpec

INF = math.inf


def _spec(name, kind, dtype, enc, **kw):
    return FeatureSpec(name, kind, dtype, "user", enc, **kw)


# spec, train values (statistics), values to encode (None = missing)
FIXTURE = [
    (_spec("city", "categorical", "string", {"type": "vocab", "min_count": 2}),
     ["a", "b", "a", "c", "a", "b", "rare", "c", "d", "d", "d", "d"],
     ["a", "b", "rare", "unseen", "", None, "d", "c"]),
    (_spec("city_d", "categorical", "string", {"type": "vocab", "max_size": 2}, default="b"),
     ["a", "b", "a", "c", "b", "b"], ["a", None, "c", "b"]),
    (_spec("item", "categorical", "int64", {"type": "vocab"}), [7, 12, 7, -3, 12, 7], [7, 12, -3, 99, None, 12]),
    (_spec("h_str", "categorical", "string", {"type": "hash", "num_buckets": 97}), [],
     ["a", "hello", "日本語", "", None, "42"]),
    (_spec("h_int", "categorical", "int64", {"type": "hash", "num_buckets": 1000}), [], [42, -7, 2 ** 62, None]),
    (_spec("b_q", "numeric", "float32", {"type": "bucketize", "num_buckets": 4}),
     [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5], [-1.0, 0.5, 3.0, 5.5, 7.0, 100.0, None, math.nan]),
    (_spec("b_log", "numeric", "float32", {"type": "bucketize", "method": "log2sq"}),
     [0.0, 1.0, 3.0, 10.0, 1000.0], [-2.0, 0.0, 1.5, 2.0, 3.0, 100.0, 1e9, INF, None]),
    (_spec("b_fix", "numeric", "int64", {"type": "bucketize", "boundaries": [-1, 0, 2.5]}, default=1),
     [], [-5, -1, 0, 2, 3, None]),
    (_spec("m", "numeric", "float32", {"type": "mnse"}),
     [-3.0, 0.0, 51.0, 120.5], [51.0, -3.7, 0.0, 120.9, 1e6, None, math.nan]),
    (_spec("m_s", "numeric", "float32",
           {"type": "mnse", "bases": [2, 10], "digits": [6, 3], "scale": 100, "signed": False}),
     [], [0.51, 1.234, -0.07, 99.0]),
    (_spec("id", "numeric", "float32", {"type": "identity"}), [], [1.5, None, -0.25, 1e40]),
    (_spec("id_std", "numeric", "int64", {"type": "identity", "standardize": True}, default=3),
     [1, 2, 3, 4, 10], [1, 4, None, 10]),
    (_spec("seq", "sequence", "string", {"type": "sequence_vocab", "max_len": 3, "share_vocab_with": "city"}),
     [], [["a", "b", "c", "d"], ["zzz", None, "a"], [], None, ["", "d"]]),
    (_spec("seq_own", "sequence", "int64", {"type": "sequence_vocab", "max_len": 2}),
     [[5, 6], [5], [6, 6, 8]], [[5, 6, 8], [9], [None, 5], None]),
    (_spec("ts", "sequence", "float32", {"type": "sequence_float", "max_len": 3}),
     [], [[1.0, 2.0, 3.0, 4.5], [None, 7.25], [], None]),
    (_spec("emb", "dense", "float32", {"type": "dense", "dim": 2}), [], [[1.0, -2.5], None, [math.nan, 0.125]]),
]

# schema entry (encoding, num_ids, width, encoded dtype), vocabulary file lines, codes
GOLDEN = {
    "city": ({"type": "vocab", "min_count": 2, "max_size": None, "vocab_file": "vocab/city.txt", "vocab_size": 4},
             6, 1, "int64", ["d", "a", "b", "c"], [[3], [4], [1], [1], [0], [0], [2], [5]]),
    "city_d": ({"type": "vocab", "min_count": 1, "max_size": 2, "vocab_file": "vocab/city_d.txt", "vocab_size": 2},
               4, 1, "int64", ["b", "a"], [[3], [2], [1], [2]]),
    "item": ({"type": "vocab", "min_count": 1, "max_size": None, "vocab_file": "vocab/item.txt", "vocab_size": 3},
             5, 1, "int64", ["7", "12", "-3"], [[2], [3], [4], [1], [0], [3]]),
    "h_str": ({"type": "hash", "num_buckets": 97}, 98, 1, "int64", None, [[54], [23], [69], [0], [0], [33]]),
    "h_int": ({"type": "hash", "num_buckets": 1000}, 1001, 1, "int64", None, [[737], [63], [504], [0]]),
    "b_q": ({"type": "bucketize", "method": "quantile", "num_buckets": 4, "boundaries": [3.5, 5.5, 8.5]},
            6, 1, "int64", None, [[2], [2], [2], [4], [4], [5], [0], [0]]),
    "b_log": ({"type": "bucketize", "method": "log2sq", "max_id": 104}, 105, 1, "int64", None,
              [[2], [3], [4], [5], [7], [49], [104], [104], [0]]),
    "b_fix": ({"type": "bucketize", "method": "boundaries", "boundaries": [-1.0, 0.0, 2.5]}, 6, 1, "int64", None,
              [[2], [3], [4], [4], [5], [4]]),
    "m": ({"type": "mnse", "bases": [2, 3, 10], "digits": [7, 5, 3], "scale": 1, "signed": True}, 63, 16, "int64",
          None, [[14, 13, 11, 8, 6, 5, 3, 28, 26, 24, 21, 16, 51, 46, 32, 61],
                 [14, 12, 10, 8, 6, 5, 3, 28, 25, 22, 20, 16, 51, 41, 34, 62],
                 [14, 12, 10, 8, 6, 4, 2, 28, 25, 22, 19, 16, 51, 41, 31, 61],
                 [15, 13, 11, 9, 6, 4, 2, 29, 26, 23, 20, 16, 52, 43, 31, 61],
                 [15, 13, 11, 9, 7, 5, 3, 30, 27, 24, 21, 18, 60, 50, 40, 61],
                 [0] * 16, [0] * 16]),
    "m_s": ({"type": "mnse", "bases": [2, 10], "digits": [6, 3], "scale": 100, "signed": False}, 44, 9, "int64",
            None, [[13, 11, 8, 6, 5, 2, 34, 29, 14], [13, 11, 9, 7, 5, 3, 35, 26, 17],
                   [12, 10, 8, 7, 5, 3, 34, 24, 21], [13, 11, 9, 7, 5, 3, 43, 33, 23]]),
    "id": ({"type": "identity", "standardize": False}, 0, 1, "float32", None, [[1.5], [0.0], [-0.25], [INF]]),
    "id_std": ({"type": "identity", "standardize": True, "mean": 4.0, "std": 3.1622776601683795}, 0, 1, "float32",
               None, [[-0.9486833214759827], [0.0], [-0.3162277638912201], [1.8973666429519653]]),
    "seq": ({"type": "sequence_vocab", "share_vocab_with": "city", "vocab_file": "vocab/city.txt", "vocab_size": 4,
             "max_len": 3}, 6, 3, "int64", ["d", "a", "b", "c"], [[4, 5, 2], [1, 3, 0], [0, 0, 0], [0, 0, 0], [2, 0, 0]]),
    "seq_own": ({"type": "sequence_vocab", "min_count": 1, "max_size": None, "vocab_file": "vocab/seq_own.txt",
                 "vocab_size": 3, "max_len": 2}, 5, 2, "int64", ["6", "5", "8"], [[2, 4], [1, 0], [3, 0], [0, 0]]),
    "ts": ({"type": "sequence_float", "max_len": 3}, 0, 3, "float32", None,
           [[2.0, 3.0, 4.5], [7.25, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    "emb": ({"type": "dense", "dim": 2}, 0, 2, "float32", None, [[1.0, -2.5], [0.0, 0.0], [0.0, 0.125]]),
}
assert {s.encoding["type"] for s, _, _ in FIXTURE} == set(E.ENCODING_TYPES)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("golden"))
    train = {s.name: t for s, t, _ in FIXTURE}
    feats = {}
    for spec in E.sort_for_build([s for s, _, _ in FIXTURE]):
        stats = E.compute_stats(spec, train[spec.name]) if train[spec.name] else {}
        feats[spec.name] = E.build_feature(spec, stats, out)
    return out, feats


def _tf_input(spec, values):
    """What a serving client sends: missing as "" / INT_MISSING / NaN; sequences ragged;
    dense vectors [n, dim] with a missing vector all NaN."""
    dtype = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[spec.dtype]
    fill = {"string": "", "int64": E.INT_MISSING, "float32": math.nan}[spec.dtype]
    if spec.kind == "dense":
        dim = spec.encoding["dim"]
        return tf.constant([[fill] * dim if r is None else r for r in values], dtype)
    if spec.kind == "sequence":
        return tf.ragged.constant([[fill if v is None else v for v in (r or [])] for r in values], dtype,
                                  ragged_rank=1)
    return tf.constant([fill if v is None else v for v in values], dtype)


@pytest.mark.parametrize("spec,train,values", FIXTURE, ids=[s.name for s, _, _ in FIXTURE])
def test_schema_entry_and_vocabulary_unchanged(fitted, spec, train, values):
    out, feats = fitted
    f = feats[spec.name]
    encoding, num_ids, width, encoded_dtype, vocab_lines, _ = GOLDEN[spec.name]
    assert (f.encoding, f.num_ids, f.width, f.encoded_dtype) == (encoding, num_ids, width, encoded_dtype)
    if vocab_lines is not None:
        with open(f"{out}/{f.encoding['vocab_file']}", encoding="utf-8") as fh:
            assert fh.read().split("\n") == vocab_lines


@pytest.mark.parametrize("spec,train,values", FIXTURE, ids=[s.name for s, _, _ in FIXTURE])
def test_numpy_and_tf_codes_unchanged(fitted, spec, train, values):
    out, feats = fitted
    f = feats[spec.name]
    codes = np.array(GOLDEN[spec.name][-1], dtype=np.int64 if f.is_integer else np.float32)
    got = E.NumpyEncoder(f, out).encode(values)
    assert got.dtype == codes.dtype
    np.testing.assert_array_equal(got, codes, err_msg=f"{spec.name} numpy")
    enc = E.make_tf_encoder(f, out)
    x = _tf_input(spec, values)
    np.testing.assert_array_equal(enc(x).numpy(), codes, err_msg=f"{spec.name} TF eager")
    sig = (tf.RaggedTensorSpec([None, None], x.dtype, ragged_rank=1) if isinstance(x, tf.RaggedTensor)
           else tf.TensorSpec([None] * x.shape.rank, x.dtype))
    np.testing.assert_array_equal(tf.function(enc, input_signature=[sig])(x).numpy(), codes,
                                  err_msg=f"{spec.name} tf.function")


def test_known_codes_by_hand():
    """The hard-coded values above agree with hand computations of the encodings' rules."""
    # MNSE of 51, bases 2/3/10 with 7/5/3 digits: id = offset_b + b * (k - 1) + digit, most significant first
    binary = [2 + 2 * (k - 1) + d for k, d in zip(range(7, 0, -1), [0, 1, 1, 0, 0, 1, 1])]  # 51 = 0110011
    ternary = [16 + 3 * (k - 1) + d for k, d in zip(range(5, 0, -1), [0, 1, 2, 2, 0])]  # 51 = 01220
    decimal = [31 + 10 * (k - 1) + d for k, d in zip(range(3, 0, -1), [0, 5, 1])]
    assert GOLDEN["m"][-1][0] == binary + ternary + decimal + [61]  # sign offset 31 + 30, v >= 0
    # hash: 1 + FarmHash Fingerprint64(key) mod num_buckets
    assert GOLDEN["h_str"][-1][0] == [1 + farmhash.fingerprint64("a") % 97]
    # bucketize: 2 + #{boundaries <= x}; 5.5 is on the boundary 5.5 of [3.5, 5.5, 8.5]
    assert GOLDEN["b_q"][-1][3] == [2 + 2]
    # OOV: "rare" is below min_count 2, "unseen" never occurred; missing is padding 0
    assert GOLDEN["city"][-1][2:6] == [[1], [1], [0], [0]]
