"""NumpyEncoder on FlatLists (flat values + row offsets, the Beam job's form) == on per-row lists."""
import math

import numpy as np
import pytest

from features import encoders as E
from pipeline.preprocess_config import FeatureSpec

RNG = np.random.default_rng(11)


def _build(tmp_path, name, dtype, enc, stats=None, kind="sequence", **kw):
    f = E.build_feature(FeatureSpec(name, kind, dtype, "sequence", enc, **kw), stats or {}, str(tmp_path))
    return E.NumpyEncoder(f, str(tmp_path))


def flat(rows, dtype, missing_fill):
    """Per-row lists (None = missing row, None elements = null) -> FlatLists with a typed
    value array whose null elements hold ``missing_fill`` (as Arrow -> numpy leaves them)."""
    lengths = [0 if r is None else len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    elems = [x for r in rows if r is not None for x in r]
    null_values = np.array([x is None for x in elems], dtype=bool)
    values = np.array([missing_fill if x is None else x for x in elems], dtype=dtype)
    return E.FlatLists(values, offsets, np.array([r is None for r in rows]), null_values)


def random_rows(make, n=300, max_len=9):
    rows = []
    for _ in range(n):
        if RNG.random() < 0.08:
            rows.append(None)
            continue
        row = [make() for _ in range(int(RNG.integers(0, max_len)))]
        for j in range(len(row)):
            if RNG.random() < 0.1:
                row[j] = None
        rows.append(row)
    return rows


STR_ROWS = random_rows(lambda: f"t{int(RNG.zipf(1.4)) % 40}") + [["", "t1"], [], ["t1"] * 30]
INT_ROWS = random_rows(lambda: int(RNG.integers(-5, 40))) + [[E.INT_MISSING, 3], [2 ** 63 - 1]]
FLOAT_ROWS = random_rows(lambda: float(RNG.normal(0, 100))) + [[math.nan, 1e40, -math.inf, 2.5], []]


@pytest.mark.parametrize("dtype,rows,np_dtype,fill", [
    ("string", STR_ROWS, object, None), ("string", STR_ROWS, str, ""), ("int64", INT_ROWS, np.int64, 0)])
def test_sequence_vocab_flat_equals_lists(tmp_path, dtype, rows, np_dtype, fill):
    spec = FeatureSpec("s", "sequence", dtype, "sequence", {"type": "sequence_vocab", "max_len": 5, "min_count": 2})
    train = rows[:100]  # later rows hold values unseen in train: OOV
    counts = E.count_values(spec, train)
    assert E.count_values(spec, flat(train, np_dtype, fill)) == counts
    enc = _build(tmp_path, "s", dtype, {"type": "sequence_vocab", "max_len": 5, "min_count": 2}, {"counts": counts})
    expect = enc.encode(rows)
    np.testing.assert_array_equal(enc.encode(flat(rows, np_dtype, fill)), expect)
    assert (expect > 1).any() and (expect == 1).any() and (expect == 0).any()  # known, OOV and padding ids


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_sequence_float_flat_equals_lists(tmp_path, dtype):
    rows = FLOAT_ROWS if dtype == "float32" else INT_ROWS
    enc = _build(tmp_path, "ts", dtype, {"type": "sequence_float", "max_len": 4})
    expect = enc.encode(rows)
    np.testing.assert_array_equal(enc.encode(flat(rows, np.float64 if dtype == "float32" else np.int64, 0)), expect)
    # the last max_len present elements, right-padded: [None, 4.5] -> [4.5, 0]; 5 values -> last 4
    np.testing.assert_array_equal(enc.encode(flat([[1.0, 2.0, 3.0, 4.0, 5.0], [None, 4.5]], np.float64, 0)),
                                  np.float32([[2, 3, 4, 5], [4.5, 0, 0, 0]]))


def test_dense_flat_equals_lists_and_names_bad_rows(tmp_path):
    enc = _build(tmp_path, "emb", "float32", {"type": "dense", "dim": 3}, kind="dense")
    rows = [[float(x) for x in RNG.normal(size=3)] if RNG.random() > 0.1 else None for _ in range(200)]
    rows += [[math.nan, None, -0.0], [1e40, 1e-45, 2.0]]
    expect = enc.encode(rows)
    np.testing.assert_array_equal(enc.encode(flat(rows, np.float64, math.nan)), expect)
    assert expect[-2].tolist() == [0.0, 0.0, 0.0] and math.isinf(expect[-1, 0]) and expect[-1, 1] == 0.0
    bad = [[1.0, 2.0, 3.0], [1.0], None, [1.0, 2.0, 3.0, 4.0]]
    for form in (bad, flat(bad, np.float64, math.nan)):
        with pytest.raises(E.EncodeError, match="exactly 3 values") as err:
            enc.encode(form)
        assert err.value.rows == [1, 3]


def test_elements_of_a_null_row_are_ignored(tmp_path):
    """Arrow may keep elements under a null list slot: the row is missing all the same."""
    col = E.FlatLists(np.array([1.0, 2.0, 9.0, 9.0, 3.0, 4.0]), np.array([0, 2, 4, 6]),
                      np.array([False, True, False]), np.zeros(6, bool))
    expect = np.float32([[1, 2], [0, 0], [3, 4]])
    seq = _build(tmp_path, "ts", "float32", {"type": "sequence_float", "max_len": 2})
    np.testing.assert_array_equal(seq.encode(col), expect)
    dense = _build(tmp_path, "d", "float32", {"type": "dense", "dim": 2}, kind="dense")
    np.testing.assert_array_equal(dense.encode(col), expect)


def test_errors_name_rows_not_elements(tmp_path):
    enc = _build(tmp_path, "s", "int64", {"type": "sequence_vocab", "max_len": 3}, {"counts": {"1": 1}})
    rows = [[1, 2], [], [3, 4, 5], [1.5]]  # 1.5 is the 6th element, in row 3
    for form in (rows, flat(rows, np.float64, 0)):
        with pytest.raises(E.EncodeError, match="strings or integers") as err:
            enc.encode(form)
        assert err.value.rows == [3]
    not_list = E.FlatLists(np.array([1, 2]), np.array([0, 2, 2]), np.array([False, True]), None,
                           not_list=np.array([False, True]))
    with pytest.raises(E.EncodeError, match="expected a list") as err:
        enc.encode(not_list)
    assert err.value.rows == [1]
    req = _build(tmp_path, "r", "float32", {"type": "sequence_float", "max_len": 2}, required=True)
    with pytest.raises(E.EncodeError, match="required") as err:
        req.encode(flat([[1.0], None, [2.0]], np.float64, 0))
    assert err.value.rows == [1]


def test_tf_encoder_class_resolves_lazily():
    assert E.TFEncoder.__name__ == "TFEncoder" and E.TFEncoder is E._tf_encoder_class()


def test_encoders_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, features.encoders, features.vocab, features.hashing, features.bucketize, features.mnse; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
