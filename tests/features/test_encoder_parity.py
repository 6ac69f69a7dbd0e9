"""NumpyEncoder == TF encoder, exactly, for every encoding type over random and edge values.

TF inputs are what a serving client sends: missing strings as "", missing floats as
NaN, missing ints as INT_MISSING; sequences as a RaggedTensor or padded with those.
Each TF encoder runs eagerly, inside a ``tf.function`` with an input signature, and
from a reloaded SavedModel whose vocabulary files were removed from the data dir.
"""
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from features import encoders as E
from pipeline.preprocess_config import FeatureSpec

N = 600
RNG = np.random.default_rng(42)
F32_MAX = float(np.finfo(np.float32).max)

STR_EDGES = ["", None, " ", "héllo", "日本語", "tab\tx", "a" * 1000, "0", "-1", "1e30", "never-seen", "t0"]
INT_EDGES = [0, None, 1, -1, 2 ** 63 - 1, -(2 ** 63 - 1), 2 ** 53 + 1, 10 ** 12, 7]
FLOAT_EDGES = [0.0, -0.0, None, math.nan, 1.0, 2.0, 2.0000001, 3.0, 100.0, 51.0, 0.5, -0.5, -3.0,
               F32_MAX, -F32_MAX, 1e30, -1e30, 1e40, math.inf, -math.inf, 1e-45, -1e-45, 5e-324, -5e-324, 2 ** 24 + 1.0]
INT_NUM_EDGES = [0, None, 1, -1, 2, 3, 100, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1, -(2 ** 63 - 1)]


def _tokens(n, universe):
    return [f"t{int(v)}" for v in RNG.zipf(1.5, n) % universe]


def _floats(n):
    mag = np.exp(RNG.uniform(-3, 12, n)) * RNG.choice([-1.0, 1.0], n, p=[0.2, 0.8])
    return np.where(RNG.random(n) < 0.2, np.round(mag), mag).tolist()


def _ints(n, lo=-50, hi=5000):
    return RNG.integers(lo, hi, n).tolist()


def _lists(make, n, max_len=12, missing=None):
    rows = []
    for _ in range(n):
        r = RNG.random()
        if r < 0.05:
            rows.append(None)
        else:
            row = make(int(RNG.integers(0, max_len)))
            if missing is not None and row and RNG.random() < 0.3:
                row[int(RNG.integers(0, len(row)))] = missing
            rows.append(row)
    return rows


TRAIN_STR, TRAIN_INT, TRAIN_FLOAT = _tokens(3000, 400), _ints(3000), _floats(3000)
EVAL = {
    "string": _tokens(N, 800) + STR_EDGES,
    "int64": _ints(N, -100, 6000) + INT_EDGES,
    "float32": _floats(N) + FLOAT_EDGES,
    "int64num": _ints(N, -10 ** 6, 10 ** 9) + INT_NUM_EDGES,
}


def _spec(name, kind, dtype, enc, **kw):
    return FeatureSpec(name, kind, dtype, "user", enc, **kw)


SPECS = [
    (_spec("v_str", "categorical", "string", {"type": "vocab", "min_count": 2, "max_size": 50}), "string"),
    (_spec("v_def", "categorical", "string", {"type": "vocab"}, default="t1"), "string"),
    (_spec("v_int", "categorical", "int64", {"type": "vocab", "min_count": 3}), "int64"),
    (_spec("h_str", "categorical", "string", {"type": "hash", "num_buckets": 97}), "string"),
    (_spec("h_int", "categorical", "int64", {"type": "hash", "num_buckets": 10 ** 6}), "int64"),
    (_spec("b_q", "numeric", "float32", {"type": "bucketize", "num_buckets": 16}), "float32"),
    (_spec("b_qi", "numeric", "int64", {"type": "bucketize"}), "int64num"),
    (_spec("b_log", "numeric", "float32", {"type": "bucketize", "method": "log2sq"}), "float32"),
    (_spec("b_logi", "numeric", "int64", {"type": "bucketize", "method": "log2sq", "max_id": 30}), "int64num"),
    (_spec("b_fix", "numeric", "float32", {"type": "bucketize", "boundaries": [-1, 0, 2, 2.5, 1e6]}), "float32"),
    (_spec("m_def", "numeric", "float32", {"type": "mnse"}), "float32"),
    (_spec("m_scale", "numeric", "float32",
           {"type": "mnse", "bases": [2, 3, 10], "digits": [8, 5, 3], "scale": 100, "signed": False}), "float32"),
    (_spec("m_int", "numeric", "int64", {"type": "mnse", "bases": [2, 7]}), "int64num"),
    (_spec("m_dflt", "numeric", "float32", {"type": "mnse", "bases": [3]}, default=51), "float32"),
    (_spec("id_raw", "numeric", "float32", {"type": "identity"}), "float32"),
    (_spec("id_std", "numeric", "float32", {"type": "identity", "standardize": True}), "float32"),
    (_spec("id_int", "numeric", "int64", {"type": "identity", "standardize": True}, default=3), "int64num"),
    (_spec("s_str", "sequence", "string", {"type": "sequence_vocab", "max_len": 5, "min_count": 2}), "seq_string"),
    (_spec("s_int", "sequence", "int64", {"type": "sequence_vocab", "max_len": 4, "share_vocab_with": "v_int"}),
     "seq_int64"),
    (_spec("sf_f", "sequence", "float32", {"type": "sequence_float", "max_len": 4}), "seq_float32"),
    (_spec("sf_i", "sequence", "int64", {"type": "sequence_float", "max_len": 3}), "seq_int64num"),
    (_spec("dn", "dense", "float32", {"type": "dense", "dim": 3}), "dense"),
]
assert {s.encoding["type"] for s, _ in SPECS} == set(E.ENCODING_TYPES)

SEQ_EVAL = {
    "seq_string": _lists(lambda k: _tokens(k, 800), N, missing="") + [["t1"] * 20, [], [None, None], ["", "t1"]],
    "seq_int64": _lists(lambda k: _ints(k, -100, 6000), N, missing=None) + [[2 ** 63 - 1, 0], [], [None]],
    "seq_float32": _lists(lambda k: _floats(k), N, missing=math.nan) + [[1e40, -math.inf, 0.0, None, 1.5e9], []],
    "seq_int64num": _lists(lambda k: _ints(k, -10 ** 9, 10 ** 12), N) + [[2 ** 63 - 1, -(2 ** 63 - 1)], []],
    "dense": [None if RNG.random() < 0.05 else _floats(3) for _ in range(N)] +
             [[math.nan, 1e40, -0.0], [1e-45, F32_MAX, -math.inf], None],
}


def _train(kind):
    if kind.startswith("seq") or kind == "dense":
        return SEQ_EVAL[kind][: N // 2]
    return {"string": TRAIN_STR, "int64": TRAIN_INT, "float32": TRAIN_FLOAT, "int64num": TRAIN_INT}[kind]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("encoded"))
    kinds = {s.name: k for s, k in SPECS}
    feats = {}
    for spec in E.sort_for_build([s for s, _ in SPECS]):
        feats[spec.name] = E.build_feature(spec, E.compute_stats(spec, _train(kinds[spec.name])), out)
    return out, feats, kinds


_MISSING = {"string": "", "int64": E.INT_MISSING, "float32": math.nan}


def _tf_scalars(values, dtype, tf_dtype=None):
    fill = _MISSING[dtype]
    vals = [fill if v is None else v for v in values]
    return tf.constant(vals, tf_dtype or {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[dtype])


def _tf_lists(rows, dtype, ragged):
    fill = _MISSING[dtype]
    rows = [[fill if v is None else v for v in (r or [])] for r in rows]
    tfd = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[dtype]
    if ragged:
        return tf.ragged.constant(rows, dtype=tfd, ragged_rank=1)
    width = max(1, max(len(r) for r in rows))
    return tf.constant([r + [fill] * (width - len(r)) for r in rows], tfd)


def _inputs(kind):
    """(numpy values, [TF inputs...]) for one feature."""
    dtype = "int64" if "int64" in kind else ("string" if "string" in kind else "float32")
    if kind == "dense":
        rows = SEQ_EVAL["dense"]
        full = [[math.nan] * 3 if r is None else r for r in rows]
        return rows, [tf.constant(full, tf.float32), tf.constant(full, tf.float64), _tf_lists(rows, "float32", True)]
    if kind.startswith("seq"):
        rows = SEQ_EVAL[kind]
        return rows, [_tf_lists(rows, dtype, True), _tf_lists(rows, dtype, False)]
    values = EVAL[kind]
    ins = [_tf_scalars(values, dtype)]
    if dtype == "float32":
        ins.append(_tf_scalars(values, dtype, tf.float64))  # a float64 request is cast like numpy does
        ins.append(tf.reshape(ins[0], [-1, 1]))  # [batch, 1] works too
    return values, ins


def _signature(x):
    if isinstance(x, tf.RaggedTensor):
        return tf.RaggedTensorSpec([None, None], x.dtype, ragged_rank=1, row_splits_dtype=x.row_splits.dtype)
    return tf.TensorSpec([None] * x.shape.rank, x.dtype)


def _numpy_input(kind, values):
    """Numpy-side inputs: lists for strings and ints (None = missing), arrays for floats."""
    if kind in ("float32",):
        return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return values


@pytest.mark.parametrize("name", [s.name for s, _ in SPECS])
def test_numpy_equals_tf(built, name):
    out, feats, kinds = built
    f = feats[name]
    kind = kinds[name]
    values, tf_inputs = _inputs(kind)
    expect = E.NumpyEncoder(f, out).encode(_numpy_input(kind, values))
    assert expect.shape == (len(values), f.width)
    assert expect.dtype == (np.int64 if f.encoded_dtype == "int64" else np.float32)
    if f.is_integer:
        assert expect.min() >= 0 and expect.max() < f.num_ids
        if f.encoding["type"] in ("bucketize", "mnse"):
            assert not (expect == 1).any()  # id 1 (OOV) is reserved, never produced
    enc = E.make_tf_encoder(f, out)
    for x in tf_inputs:
        np.testing.assert_array_equal(enc(x).numpy(), expect, err_msg=f"{name} eager {x.dtype}")
        graph = tf.function(enc, input_signature=[_signature(x)])
        got = graph(x).numpy()
        assert got.dtype == expect.dtype
        np.testing.assert_array_equal(got, expect, err_msg=f"{name} tf.function {x.dtype}")


def test_edges_really_exercise_the_encodings(built):
    out, feats, _ = built
    vs = E.NumpyEncoder(feats["v_str"], out).encode(EVAL["string"])[:, 0]
    assert {0, 1}.issubset(set(vs.tolist())) and vs.max() > 2  # padding, OOV and known values all occur
    m = E.NumpyEncoder(feats["m_scale"], out).encode(EVAL["float32"])
    assert (m == 0).all(axis=1).sum() == 2  # None and NaN
    top = [2 + 2 * 7 + 1, 2 + 16 + 3 * 4 + 2, 2 + 16 + 15 + 10 * 2 + 9]  # saturated MSB of each system
    assert (m[:, [0, 8, 13]] == top).all(axis=1).sum() > 5
    assert feats["m_def"].encoding["signed"] is True  # the train data has negatives
    ide = E.NumpyEncoder(feats["id_raw"], out).encode(EVAL["float32"])[:, 0]
    assert np.isinf(ide).sum() == 3 and not np.isnan(ide).any()  # 1e40 -> inf in float32; NaN -> 0


def test_saved_model_carries_vocab_assets(built, tmp_path):
    out, feats, kinds = built
    names = [n for n in feats if not kinds[n].startswith("seq") and kinds[n] != "dense"] + ["s_str", "s_int", "dn"]
    module = tf.Module()
    module.encoders = {n: E.make_tf_encoder(feats[n], out) for n in names}
    inputs, expect = {}, {}
    for n in names:
        values, tf_ins = _inputs(kinds[n])
        inputs[n] = tf_ins[-1] if kinds[n].startswith("seq") else tf_ins[0]  # padded dense tensors
        expect[n] = E.NumpyEncoder(feats[n], out).encode(_numpy_input(kinds[n], values))
    sig = {n: tf.TensorSpec([None] * x.shape.rank, x.dtype, name=n) for n, x in inputs.items()}

    @tf.function(input_signature=[sig])
    def serve(raw):
        return {n: module.encoders[n](raw[n]) for n in names}

    module.serve = serve
    export = str(tmp_path / "sm")
    tf.saved_model.save(module, export, signatures={"serving_default": serve})
    moved = out + "_moved"
    shutil.move(out, moved)  # the SavedModel must read its own asset copies
    try:
        loaded = tf.saved_model.load(export)
        got = loaded.signatures["serving_default"](**inputs)
    finally:
        shutil.move(moved, out)
    assert os.listdir(os.path.join(export, "assets"))
    for n in names:
        np.testing.assert_array_equal(got[n].numpy(), expect[n], err_msg=n)


@pytest.mark.parametrize("name", ["v_str", "h_int", "b_q", "m_def", "id_std", "s_str", "sf_f", "dn"])
def test_empty_batch(built, name):
    out, feats, kinds = built
    f, kind = feats[name], kinds[name]
    got = E.NumpyEncoder(f, out).encode([])
    assert got.shape == (0, f.width)
    dtype = {"string": tf.string, "int64": tf.int64}.get(f.dtype, tf.float32)
    x = tf.zeros([0, f.width], dtype) if kind == "dense" else (
        tf.ragged.constant([], dtype=dtype, ragged_rank=1) if kind.startswith("seq") else tf.zeros([0], dtype))
    assert E.make_tf_encoder(f, out)(x).shape == (0, f.width)


# ---- the serving graph's dense rewrites: equal to numpy on their edge cases --------------------
@pytest.mark.parametrize("name", ["s_str", "s_int", "sf_f", "sf_i"])
def test_sequence_requests_of_any_width(built, name):
    """Padded requests narrower and wider than ``max_len``, with missing elements inside, all
    missing, and of width 0 (every list empty): the last ``max_len`` present elements."""
    out, feats, kinds = built
    f = feats[name]
    dtype = "int64" if "int64" in kinds[name] else ("string" if "string" in kinds[name] else "float32")
    known = [r for r in SEQ_EVAL[kinds[name]] if r and None not in r and all(v == v for v in r)]
    pool = [v for r in known for v in r][:40]
    fill = _MISSING[dtype]
    L = f.encoding["max_len"]
    rows = [pool[:1], pool[:L - 1], pool[:L + 3], [None] * (L + 2), [], pool[:2] + [None] + pool[2:L + 2],
            [None, None] + pool[:L], pool[:3] + [None] * L + pool[3:5]]
    enc = E.make_tf_encoder(f, out)
    graph = tf.function(enc, input_signature=[tf.TensorSpec([None, None], _tf_scalars([], dtype).dtype)])
    for width in (0, 1, L - 1, L + 8):
        sub = [r[:width] for r in rows]
        x = _tf_lists(sub, dtype, ragged=False) if width else tf.reshape(_tf_scalars([], dtype), [len(rows), 0])
        if width:
            x = x[:, :width] if x.shape[1] > width else x
        expect = E.NumpyEncoder(f, out).encode([[fill if v is None else v for v in r] if dtype == "float32" else r
                                                for r in sub])
        np.testing.assert_array_equal(graph(x).numpy(), expect, err_msg=f"{name} width {width}")


@pytest.mark.parametrize("name", ["b_fix", "b_log", "b_logi"])
def test_bucket_boundaries_and_their_neighbours(built, name):
    out, feats, kinds = built
    f = feats[name]
    b = E.NumpyEncoder(f, out).encoding.boundaries
    b = b[np.isfinite(b)][:40]
    x = np.concatenate([b, np.nextafter(b, -np.inf), np.nextafter(b, np.inf), [np.nan]])
    if f.dtype == "int64":
        x = np.concatenate([np.floor(b), np.floor(b) - 1, np.floor(b) + 1])
        values, tf_x = [int(v) for v in x], tf.constant(x.astype(np.int64))
    else:
        values, tf_x = x.astype(np.float32).astype(np.float64), tf.constant(x.astype(np.float32))
    expect = E.NumpyEncoder(f, out).encode(values)
    assert len(np.unique(expect)) > 3
    np.testing.assert_array_equal(E.make_tf_encoder(f, out)(tf_x).numpy(), expect)


@pytest.mark.parametrize("bases,digits", [([2], [52]), ([3, 10], [32, 15]), ([3], [33]), ([2, 7], [53, 18])])
def test_mnse_digits_exact_up_to_the_largest_codes(tmp_path, bases, digits):
    """Digits of integers near ``b^K`` (float64 division is exact up to ``b^K = 2^52``; beyond,
    int64): equal to numpy's int64 arithmetic."""
    spec = _spec("m_big", "numeric", "int64", {"type": "mnse", "bases": bases, "digits": digits, "signed": True})
    f = E.build_feature(spec, {}, str(tmp_path))
    top = [b ** k for b, k in zip(bases, digits)]
    x = sorted({v for t in top for v in (t - 1, t - 2, t // 2 + 1, t // 3, t // 7 * 5 + 3, t)} |
               {int(v) for v in RNG.integers(0, max(top), 200)} | {2 ** 52 - 1, 2 ** 53 - 1, 0, 1})
    x += [-v for v in x[:50]]
    expect = E.NumpyEncoder(f, str(tmp_path)).encode(x)
    np.testing.assert_array_equal(E.make_tf_encoder(f, str(tmp_path))(tf.constant(x, tf.int64)).numpy(), expect)
