"""Multiple Numeral Systems Encoding (Tencent ads, Sec. 3.2, Eq. 2).

``encoding: {type: mnse, bases: [2, 3, 10], digits: [K_2, K_3, K_10], scale: 1, signed: ...}``

A value ``v`` becomes the integer ``n = floor(|v| * scale)`` (``scale``, default 1,
is how fractions are kept: scale 100 keeps two decimals), and ``n`` is written in
every numeral system ``b`` with ``K_b`` digits. Eq. 2 gives every (system b,
position k, digit d) its own embedding row ``X^(b)_{b*k + d}``; here one id space
per feature holds all systems:

    id(b, k, d) = offset_b + b * (k - 1) + d        (= offset_b - b + Eq. 2's b*k + d)

with k = 1 the least significant position, offset of the first system 2 (0 =
padding, 1 = reserved by the id convention, never produced) and each next system
starting ``b * K_b`` ids later. Columns are the digits of each system, most
significant first (51 in binary, 6 digits -> positions 6..1 = 1,1,0,0,1,1, as in the
paper's example), systems in ``bases`` order. The model embeds every column and
sums within each system's column range (:func:`mnse_groups`), giving Eq. 2's
concatenation of per-system sums.

* digits: default per base = enough for the train maximum of ``|v| * scale``
  (at least 1, at most what keeps ``b^K <= 2^53``).
* overflow: ``n > b^K - 1`` saturates to ``b^K - 1`` (all digits ``b - 1``), per
  system; +-inf saturates too.
* negatives: with ``signed: true`` one extra last column holds a sign code
  (``sign_offset`` for v >= 0, ``sign_offset + 1`` for v < 0) and the digits encode
  ``|v|``; it is its own group. ``signed`` defaults to "train minimum < 0". With
  ``signed: false`` negatives encode as their absolute value.
* missing / NaN: every column (sign included) is 0, the padding id.

``num_ids = 2 + sum_b b * K_b (+ 2 with a sign)``; ``width = sum_b K_b (+ 1)``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

import numpy as np

from features.schema import PAD_ID

if TYPE_CHECKING:  # TF is imported lazily where it is used (serving): Beam workers never load it
    import tensorflow as tf

DEFAULT_BASES = (2, 3, 10)
FIRST_ID = 2
MAX_CODE = 2 ** 53  # b^K stays exact in float64 and int64


def max_digits(base: int) -> int:
    """The most digits with ``base**K <= 2**53``."""
    k = 1
    while base ** (k + 1) <= MAX_CODE:
        k += 1
    return k


def digits_needed(max_value: int, base: int) -> int:
    """Digits to write ``max_value`` in ``base`` (>= 1), capped at :func:`max_digits`."""
    k = 1
    while base ** k <= max_value and k < max_digits(base):
        k += 1
    return k


def check_bases(bases) -> None:
    if not isinstance(bases, list) or len(bases) == 0:
        raise ValueError(f"bases must be a non-empty list of numeral systems, got {bases!r}")
    for b in bases:
        if isinstance(b, bool) or not isinstance(b, int) or b < 2:
            raise ValueError(f"base {b!r} must be an integer >= 2")
    if len(set(bases)) != len(bases):
        raise ValueError(f"bases must be distinct, got {bases}")


def check_digits(bases: Sequence[int], digits) -> None:
    if not isinstance(digits, list) or len(digits) != len(bases):
        raise ValueError(f"digits {digits!r} must be a list with one count per base {list(bases)}")
    for b, k in zip(bases, digits):
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_digits(b):
            raise ValueError(f"digits for base {b} must be an integer in 1..{max_digits(b)}, got {k!r}")


def _layout(encoding: Dict[str, Any]) -> Tuple[List[int], List[int], List[int], int]:
    """(bases, digits, id offset per system, sign offset) of a built encoding."""
    bases, digits = list(encoding["bases"]), list(encoding["digits"])
    offsets, nxt = [], FIRST_ID
    for b, k in zip(bases, digits):
        offsets.append(nxt)
        nxt += b * k
    return bases, digits, offsets, nxt


def num_ids(encoding: Dict[str, Any]) -> int:
    _, _, _, sign_offset = _layout(encoding)
    return sign_offset + (2 if encoding["signed"] else 0)


def width(encoding: Dict[str, Any]) -> int:
    return sum(encoding["digits"]) + (1 if encoding["signed"] else 0)


def mnse_groups(feature) -> List[Tuple[int, int]]:
    """Column ranges [start, stop) of each numeral system, then of the sign column."""
    return column_groups(feature.encoding)


def column_groups(encoding: Dict[str, Any]) -> List[Tuple[int, int]]:
    """:func:`mnse_groups` of a built encoding (``digits``, ``signed``)."""
    groups, start = [], 0
    for k in encoding["digits"]:
        groups.append((start, start + k))
        start += k
    if encoding["signed"]:
        groups.append((start, start + 1))
    return groups


def _positions(base: int, num_digits: int):
    """Place values b^(k-1) and Eq. 2 row offsets b*(k-1), most significant first."""
    k = np.arange(num_digits - 1, -1, -1, dtype=np.int64)
    return base ** k, base * k


def mnse_digits(value, base: int, num_digits: int) -> List[int]:
    """Digits of ``min(floor(|value|), base^K - 1)``, most significant first."""
    n = min(math.floor(abs(value)), base ** num_digits - 1)
    place, _ = _positions(base, num_digits)
    return [int(d) for d in (n // place) % base]


def mnse_ids(x: np.ndarray, encoding: Dict[str, Any]) -> np.ndarray:
    """float64 values [n] (NaN = missing) -> int64 ids [n, width]."""
    bases, digits, offsets, sign_offset = _layout(encoding)
    missing = np.isnan(x)
    mag = np.floor(np.abs(np.where(missing, 0.0, x)) * float(encoding["scale"]))
    cols = []
    for b, k, off in zip(bases, digits, offsets):
        n = np.minimum(mag, float(b ** k - 1)).astype(np.int64)
        place, row = _positions(b, k)
        cols.append(off + row + (n[:, None] // place) % b)  # Eq. 2: X^(b)_{b*k + B_k}
    if encoding["signed"]:
        cols.append((sign_offset + (x < 0))[:, None])
    ids = np.concatenate(cols, axis=1).astype(np.int64)
    ids[missing] = PAD_ID
    return ids


def tf_mnse_ids(x: tf.Tensor, encoding: Dict[str, Any]) -> tf.Tensor:
    """TF twin of :func:`mnse_ids` for a float64 tensor [n]: every system's digits at once over
    all columns (per-column place values, bases and caps), digit = ``n // place - b * (n // (b *
    place))``. In float64, which is exact while every ``b^K <= 2^52`` (then ``n + divisor < 2^53``,
    so ``floor(n / divisor)`` cannot round up) and faster than int64 division or any floormod;
    beyond, in int64."""
    import tensorflow as tf

    bases, digits, offsets, sign_offset = _layout(encoding)
    place = np.concatenate([_positions(b, k)[0] for b, k in zip(bases, digits)])
    first = np.concatenate([off + _positions(b, k)[1] for b, k, off in zip(bases, digits, offsets)])
    base = np.repeat(np.asarray(bases, np.int64), digits)
    cap = np.repeat([float(b ** k - 1) for b, k in zip(bases, digits)], digits)
    dtype = tf.float64 if all(b ** k <= 2 ** 52 for b, k in zip(bases, digits)) else tf.int64
    missing = tf.math.is_nan(x)
    mag = tf.floor(tf.abs(tf.where(missing, tf.zeros_like(x), x)) * float(encoding["scale"]))
    n = tf.cast(tf.minimum(mag[:, None], cap), dtype)  # [n, width]
    d = (tf.math.floordiv(n, tf.constant(place, dtype)) -
         tf.constant(base, dtype) * tf.math.floordiv(n, tf.constant(place * base, dtype)))
    ids = tf.cast(d, tf.int64) + first
    if encoding["signed"]:
        ids = tf.concat([ids, sign_offset + tf.cast(x < 0, tf.int64)[:, None]], axis=1)
    return tf.where(missing[:, None], tf.constant(PAD_ID, tf.int64), ids)
