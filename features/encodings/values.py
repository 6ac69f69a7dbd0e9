"""Raw values -> canonical keys and numbers, the same for every encoding, numpy and TF.

Categorical values are compared as keys: strings as they are, integers (and integral
floats) as their decimal string. Missing is None / NaN / ``""`` (what a TF string tensor
carries) and, for integer inputs, the sentinel :data:`INT_MISSING` (-2^63), which is how
an int64 tensor carries a missing value or the padding of a dense [batch, L] sequence
tensor. Numeric values are cast to the feature's raw dtype (float32 rounding included;
subnormals are flushed to zero, as TF's CPU kernels do) and computed in float64 on both
sides.

List inputs. A batch of lists is either one Python list (or array, or None) per row, or
the flat form :class:`FlatLists` (flat element array + row offsets, as Arrow stores a list
column), which the Beam job passes straight from its reader and validation; both give the
same encoding, but the flat form is encoded without any per-row Python object.

TensorFlow is imported inside the TF twins only (``tf_keys``, ``tf_numbers``): the Beam
workers import this module and never load TensorFlow.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from features.errors import UserError
from features.schema import Feature

if TYPE_CHECKING:
    import tensorflow as tf

INT_MISSING = np.iinfo(np.int64).min


class EncodeError(UserError):
    """A spec, statistic, vocabulary file or raw value a feature cannot encode; names the
    feature (and rows). The user's to fix (a :class:`UserError`, so also a ``ValueError``):
    the Beam job quarantines the rows it names, ``ctrflow`` ends with its message."""

    def __init__(self, feature: str, reason: str, rows: Optional[Sequence[int]] = None):
        self.feature, self.reason = feature, reason
        self.rows = None if rows is None else [int(r) for r in rows]
        where = "" if not self.rows else f" (rows {self.rows[:10]}{' ...' if len(self.rows) > 10 else ''})"
        super().__init__(f"feature '{feature}': {reason}{where}")


def missing_required(feature: Feature, missing: np.ndarray) -> None:
    """Fail naming the rows when a required feature has missing values."""
    if feature.required and missing.any():
        raise EncodeError(feature.name, "required value is missing", np.flatnonzero(missing))


# ---- scalars ------------------------------------------------------------------------
def _column(values) -> np.ndarray:
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    return arr


def key_of(v) -> Optional[str]:
    """One object's key; None for values that are not strings or integers."""
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return "" if v == INT_MISSING else str(int(v))
    if isinstance(v, (float, np.floating)) and abs(v) < 2.0 ** 63 and float(v).is_integer():
        return str(int(v))
    return None


def categorical_keys(values, name: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """Raw categorical values [n] -> (keys object array with "" for missing, missing mask).

    The Beam job counts these keys for vocabularies (``counts``) so train counts and
    encode-time look-ups use the same canonical form.
    """
    arr = _column(values)
    kind = arr.dtype.kind
    bad = None
    if kind == "U":
        keys = arr.astype(object)
    elif kind == "S":
        keys = np.char.decode(arr, "utf-8").astype(object)
    elif kind in "iu":
        keys = arr.astype(str).astype(object)
        keys[arr == INT_MISSING] = ""
    elif kind == "f":
        nan = np.isnan(arr)
        bad = ~nan & ~((np.abs(arr) < 2.0 ** 63) & (arr == np.floor(arr)))  # int64-representable
        keys = np.where(nan | bad, 0, arr).astype(np.int64).astype(str).astype(object)
        keys[nan] = ""
    elif pd.api.types.infer_dtype(arr, skipna=False) == "string":  # strings only: each is its key
        keys = arr.astype(object)
    else:
        keys = np.empty(len(arr), dtype=object)
        nan = pd.isna(arr)
        if pd.api.types.infer_dtype(arr, skipna=True) == "string":
            keys[:] = arr
        else:
            keys[:] = [key_of(v) for v in arr]
            bad = ~nan & np.equal(keys, None)
        keys[nan] = ""
    if bad is not None and bad.any():
        raise EncodeError(name, "categorical values must be strings or integers", np.flatnonzero(bad))
    return keys, keys == ""


def numeric_values(values, dtype: str, name: str = "") -> np.ndarray:
    """Raw numbers [n] -> float64 with NaN for missing, rounded through ``dtype`` (float32).

    The Beam job takes quantiles / moments of these so statistics match encoding.
    """
    arr = _column(values)
    kind = arr.dtype.kind
    if kind in "iub":
        x = arr.astype(np.float64)
        if kind == "i":
            x[arr == INT_MISSING] = np.nan
    elif kind == "f":
        x = arr.astype(np.float64)
    else:
        try:  # numbers, numeric strings and None parse in one vectorised call
            x = np.array(arr.tolist(), dtype=np.float64)
        except (TypeError, ValueError):
            obj = arr.astype(object)
            obj[pd.isna(obj) | (obj == "")] = np.nan
            try:
                x = np.array(obj.tolist(), dtype=np.float64)
            except (TypeError, ValueError):
                raise EncodeError(name, "numeric feature got values that are not numbers",
                                  [i for i, v in enumerate(obj) if not _parses(v)]) from None
        for i in np.flatnonzero(x == float(INT_MISSING)):  # the int sentinel, not the float -2^63
            if isinstance(arr[i], (int, np.integer)) and arr[i] == INT_MISSING:
                x[i] = np.nan
    if dtype == "float32":
        with np.errstate(over="ignore"):
            x = x.astype(np.float32).astype(np.float64)
    # TF's CPU kernels flush subnormals to zero (FTZ/DAZ): do the same for parity
    x[np.abs(x) < np.finfo(np.float32 if dtype == "float32" else np.float64).tiny] = 0.0
    return x


def _parses(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


# ---- lists ----------------------------------------------------------------------------
@dataclasses.dataclass
class FlatLists:
    """A batch of lists in flat form: row ``i`` holds ``values[offsets[i]:offsets[i+1]]``.

    values:      flat elements, a typed numpy array (object, str, int64, float...)
    offsets:     int64 [n + 1], non-decreasing
    null_rows:   bool [n]: the whole list is missing (elements it spans are ignored)
    null_values: bool [len(values)] or None: a missing element (a None in a Python list)
    not_list:    bool [n] or None: a raw value that is not a list (an encode error)
    """

    values: np.ndarray
    offsets: np.ndarray
    null_rows: np.ndarray
    null_values: Optional[np.ndarray] = None
    not_list: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def list_parts(values, name: str) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray]:
    """A batch of lists, per row or :class:`FlatLists` -> (flat elements of the present rows,
    missing-element mask or None, row lengths, missing-row mask)."""
    if not isinstance(values, FlatLists):
        flat, lengths, missing_rows = _split_lists(values, name)
        return flat, None, lengths, missing_rows
    if values.not_list is not None and values.not_list.any():
        raise EncodeError(name, "expected a list of values per row", np.flatnonzero(values.not_list))
    offsets = np.asarray(values.offsets, dtype=np.int64)
    missing_rows = np.asarray(values.null_rows, dtype=bool)
    lengths = np.diff(offsets)
    flat = np.asarray(values.values)[offsets[0]:offsets[-1]]
    null = None if values.null_values is None else np.asarray(values.null_values, bool)[offsets[0]:offsets[-1]]
    if lengths[missing_rows].any():  # Arrow may keep elements under a null list: drop them
        keep = np.repeat(~missing_rows, lengths)
        flat, null = flat[keep], None if null is None else null[keep]
        lengths = np.where(missing_rows, 0, lengths)
    return flat, null, lengths, missing_rows


def _split_lists(values, name: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row lists -> (flat elements, row lengths, missing-row mask)."""
    rows = values if isinstance(values, (list, tuple)) else list(values)
    missing = np.fromiter((not hasattr(v, "__len__") and bool(pd.isna(v)) for v in rows),
                          dtype=bool, count=len(rows))
    bad = [i for i, v in enumerate(rows) if isinstance(v, (str, bytes)) or
           (not missing[i] and not hasattr(v, "__len__"))]
    if bad:
        raise EncodeError(name, "expected a list of values per row", bad)
    lengths = np.fromiter((0 if m else len(v) for v, m in zip(rows, missing)), dtype=np.int64, count=len(rows))
    flat = np.empty(int(lengths.sum()), dtype=object)
    flat[:] = list(itertools.chain.from_iterable(v for v, m in zip(rows, missing) if not m))
    return flat, lengths, missing


def _element_rows(exc: EncodeError, lengths: np.ndarray) -> EncodeError:
    """An error naming flat list elements -> the same error naming their rows."""
    if not exc.rows:
        return exc
    rows = np.repeat(np.arange(len(lengths)), lengths)[np.asarray(exc.rows, dtype=np.int64)]
    return EncodeError(exc.feature, exc.reason, np.unique(rows))


def element_keys(flat: np.ndarray, null: Optional[np.ndarray], lengths: np.ndarray,
                 name: str) -> Tuple[np.ndarray, np.ndarray]:
    """List elements -> (keys, missing mask); errors name rows, not elements."""
    try:
        keys, missing = categorical_keys(flat, name)
    except EncodeError as exc:
        raise _element_rows(exc, lengths) from None
    return keys, missing if null is None else missing | null


def element_numbers(flat: np.ndarray, null: Optional[np.ndarray], lengths: np.ndarray, dtype: str,
                    name: str) -> Tuple[np.ndarray, np.ndarray]:
    """List elements -> (float64 numbers, missing mask); errors name rows, not elements."""
    try:
        x = numeric_values(flat, dtype, name)
    except EncodeError as exc:
        raise _element_rows(exc, lengths) from None
    missing = np.isnan(x)
    return x, missing if null is None else missing | null


def pack_last(rows: np.ndarray, vals: np.ndarray, n: int, max_len: int, dtype) -> np.ndarray:
    """Scatter elements (``rows`` = their row, in order) into [n, max_len], keeping each
    row's last ``max_len`` elements, right-padded with 0."""
    lengths = np.bincount(rows, minlength=n)
    starts = np.cumsum(lengths) - lengths
    col = np.arange(len(rows)) - starts[rows] - np.maximum(lengths - max_len, 0)[rows]
    keep = col >= 0
    out = np.zeros((n, max_len), dtype=dtype)
    out[rows[keep], col[keep]] = vals[keep]
    return out


# ---- TF twins ---------------------------------------------------------------------------
def tf_column(x) -> tf.Tensor:
    """A scalar request input as a [batch] tensor ([batch, 1] works too)."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    return x if x.shape.rank == 1 else tf.reshape(x, [-1])


def tf_missing_value(dtype: tf.DType) -> tf.Tensor:
    """The missing marker of a request tensor of ``dtype``: "", NaN or :data:`INT_MISSING`."""
    import tensorflow as tf

    if dtype == tf.string:
        return tf.constant("")
    return tf.constant(np.nan if dtype.is_floating else INT_MISSING, dtype)


def tf_keys(x: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """TF twin of :func:`categorical_keys`: (string keys, missing mask)."""
    import tensorflow as tf

    if x.dtype == tf.string:
        return x, tf.equal(x, "")
    if x.dtype.is_floating:
        missing = tf.math.is_nan(x)
        x = tf.cast(tf.where(missing, tf.zeros_like(x), x), tf.int64)
    else:
        x = tf.cast(x, tf.int64)
        missing = tf.equal(x, INT_MISSING)
    return tf.strings.as_string(x), missing


def tf_numbers(x: tf.Tensor, dtype: str) -> tf.Tensor:
    """TF twin of :func:`numeric_values`: float64 with NaN for missing."""
    import tensorflow as tf

    if x.dtype.is_integer or x.dtype == tf.bool:
        missing = tf.equal(tf.cast(x, tf.int64), INT_MISSING) if x.dtype.is_integer else tf.zeros_like(x)
        nan = tf.constant(np.nan, tf.float64)
        if dtype == "float32":
            x = tf.cast(x, tf.float32)
        return tf.where(missing, nan, tf.cast(x, tf.float64))
    if dtype == "float32":
        x = tf.cast(x, tf.float32)
    return tf.cast(x, tf.float64)
