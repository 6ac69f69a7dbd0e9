"""MNSE (Tencent Sec. 3.2, Eq. 2) against the paper's example and hand-worked ids."""
import numpy as np
import pytest

from features import encoders as E
from features.mnse import mnse_digits, mnse_groups, mnse_ids
from pipeline.preprocess_config import FeatureSpec


def _feature(tmp_path, stats=None, **enc):
    spec = FeatureSpec("price", "numeric", "float32", "item", {"type": "mnse", **enc})
    return E.build_feature(spec, stats or {}, str(tmp_path))


def test_paper_example_51():
    # "51" -> binary {6_1, 5_1, 4_0, 3_0, 2_1, 1_1}, ternary {6_0, 5_0, 4_1, 3_2, 2_2, 1_0}
    assert mnse_digits(51, 2, 6) == [1, 1, 0, 0, 1, 1]
    assert mnse_digits(51, 3, 6) == [0, 0, 1, 2, 2, 0]
    assert mnse_digits(51, 10, 3) == [0, 5, 1]


def test_ids_of_51_by_hand(tmp_path):
    f = _feature(tmp_path, bases=[2, 3], digits=[6, 6], signed=False)
    # binary ids start at 2: id = 2 + 2*(k-1) + d, k = 6..1 -> d = 1,1,0,0,1,1
    # ternary ids start at 2 + 2*6 = 14: id = 14 + 3*(k-1) + d, k = 6..1 -> d = 0,0,1,2,2,0
    expect = [[13, 11, 8, 6, 5, 3, 29, 26, 24, 22, 19, 14]]
    assert E.NumpyEncoder(f, str(tmp_path)).encode([51.0]).tolist() == expect
    assert f.num_ids == 2 + 2 * 6 + 3 * 6 and f.width == 12
    assert mnse_groups(f) == [(0, 6), (6, 12)]


def test_every_system_position_digit_has_its_own_id(tmp_path):
    f = _feature(tmp_path, bases=[2, 3, 10], digits=[4, 3, 2], signed=True)
    ids = E.NumpyEncoder(f, str(tmp_path)).encode(np.arange(-200, 200, dtype=np.float64))
    groups = mnse_groups(f)
    assert groups == [(0, 4), (4, 7), (7, 9), (9, 10)]
    seen = set()
    for s, e in groups:
        col_ids = [set(ids[:, c].tolist()) for c in range(s, e)]
        for a in col_ids:  # columns of one system never share an id, and systems never overlap
            assert not (a & seen)
            seen |= a
    assert seen == set(range(2, f.num_ids))  # every (system, position, digit) and both signs are used
    assert f.num_ids == 2 + 2 * 4 + 3 * 3 + 10 * 2 + 2


def test_negatives_fractions_overflow_nan(tmp_path):
    f = _feature(tmp_path, bases=[2, 10], digits=[3, 2], signed=True, scale=10)
    enc = E.NumpyEncoder(f, str(tmp_path))
    ids = enc.encode([0.57, -0.57, 1e30, np.inf, np.nan, None])

    def expect(n, negative):
        cols = [2 + 2 * (k - 1) + d for k, d in zip((3, 2, 1), mnse_digits(n, 2, 3))]
        cols += [8 + 10 * (k - 1) + d for k, d in zip((2, 1), mnse_digits(n, 10, 2))]
        return cols + [28 + int(negative)]

    assert ids[0].tolist() == expect(5, False)  # floor(0.57 * 10) = 5 -> binary 101, decimal 05
    assert ids[1].tolist() == expect(5, True)  # |v| digits plus the sign code
    assert ids[2].tolist() == [7, 5, 3, 27, 17, 28]  # saturates per system: 111 and 99
    assert ids[3].tolist() == ids[2].tolist()
    assert ids[4].tolist() == [0] * 6 and ids[5].tolist() == [0] * 6  # missing: all padding


def test_unsigned_encodes_absolute_value():
    enc = {"bases": [3], "digits": [3], "scale": 1, "signed": False}
    assert mnse_ids(np.array([-7.9, 7.9]), enc).tolist() == [[8, 7, 3], [8, 7, 3]]  # 7 = 021 ternary: 2+3*2+0, 2+3+2, 2+0+1


def test_default_digits_and_sign_from_train_stats(tmp_path):
    f = _feature(tmp_path, {"quantiles": np.array([-3.0, 0.0, 5.0, 51.0])})
    assert f.encoding["bases"] == [2, 3, 10]
    assert f.encoding["digits"] == [6, 4, 2]  # 51 < 2^6, 3^4, 10^2
    assert f.encoding["signed"] is True and f.width == 13
    f2 = _feature(tmp_path, {"quantiles": np.array([0.0, 0.5, 1.25])}, scale=100)
    assert f2.encoding["digits"] == [7, 5, 3] and f2.encoding["signed"] is False  # 125


def test_invalid_layouts_name_the_feature(tmp_path):
    with pytest.raises(E.EncodeError, match="price.*digits"):
        _feature(tmp_path, bases=[2, 3], digits=[4], signed=False)
    with pytest.raises(E.EncodeError, match="price.*base"):
        _feature(tmp_path, bases=[1], digits=[4], signed=False)
    with pytest.raises(E.EncodeError, match="digits for base 2"):
        _feature(tmp_path, bases=[2], digits=[60], signed=False)  # 2^60 > 2^53
    with pytest.raises(E.EncodeError, match="quantiles"):
        _feature(tmp_path, bases=[2], signed=False)
