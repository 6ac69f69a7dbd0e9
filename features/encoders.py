"""Feature encodings: build from train statistics, encode with numpy (Beam) or TF (serving).

One feature spec + train statistics -> a resolved :class:`features.schema.Feature`
(``build_feature``); the Feature alone (+ the vocabulary files under ``out_dir``)
reproduces the encoding in two twins held equal by parity tests:
:class:`NumpyEncoder` (vectorised, for the Beam job) and :func:`make_tf_encoder`
(TF ops and lookup tables, for the SavedModel serving graph). TensorFlow is
imported by the TF twin only, on first use: the Beam workers never load it.

Encoding types (ids: 0 = missing / padding, 1 = OOV, real values from 2):

* ``vocab`` — see :mod:`features.vocab` (min_count, max_size, share_vocab_with).
* ``hash`` — see :mod:`features.hashing` (num_buckets).
* ``bucketize`` — see :mod:`features.bucketize` (quantile, boundaries, log2sq).
* ``mnse`` — see :mod:`features.mnse` (Tencent Eq. 2).
* ``identity`` — float passthrough, [n, 1] float32; ``standardize: true`` gives
  ``(x - mean) / std`` with train moments (std 1 when the variance is 0).
  Missing -> ``default`` if set, else the train mean when standardizing (output 0),
  else 0.0.
* ``sequence_vocab`` — a list of raw values -> vocabulary ids (own vocabulary over
  the flattened train lists, or ``share_vocab_with`` another feature's, so
  behaviour ids equal the target item's ids). Missing elements are dropped, the
  LAST ``max_len`` elements (the most recent) are kept in order and right-padded
  with 0 -> [n, max_len] int64.
* ``sequence_float`` — a list of numbers (e.g. behaviour timestamps), missing
  elements dropped, last ``max_len`` kept, right-padded with 0.0 -> [n, max_len]
  float32.
* ``dense`` — a list of exactly ``dim`` numbers -> [n, dim] float32; a missing list
  is zeros and NaN elements are 0.0.

List inputs. A batch of lists is either one Python list (or array, or None) per row,
or the flat form :class:`FlatLists` (flat element array + row offsets, as Arrow
stores a list column), which the Beam job passes straight from its reader and
validation; both give the same encoding (parity tests hold them equal), but the flat
form is encoded without any per-row Python object.

Raw values and missing values. Categorical values are compared as keys: strings
as they are, integers (and integral floats) as their decimal string. Missing is
None / NaN / ``""`` (what a TF string tensor carries) and, for integer inputs, the
sentinel :data:`INT_MISSING` (-2^63), which is how an int64 tensor carries a
missing value or the padding of a dense [batch, L] sequence tensor. Numeric values
are cast to the feature's raw dtype (float32 rounding included; subnormals are
flushed to zero, as TF's CPU kernels do) and computed in float64 on both sides. A missing scalar takes the feature's ``default`` (a raw
value, encoded like any other) when it has one, else the padding id / 0.0.

Errors. ``NumpyEncoder.encode`` raises :class:`EncodeError` naming the feature and
the bad rows (``.rows``) for values it cannot encode (a non-numeric string in a
numeric feature, a dense list of the wrong length, a missing value of a
``required`` feature) so the Beam job can quarantine those rows. The TF encoder
never fails a request: it encodes what it can (missing -> default / padding;
non-integral floats in a categorical tensor are truncated; ragged dense rows of
the wrong length are padded / cut).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from features import bucketize, hashing, mnse, vocab
from features.schema import PAD_ID, Feature

if TYPE_CHECKING:  # TF is imported lazily, by the TF encoder only: Beam workers never load it
    import tensorflow as tf

ENCODING_TYPES = ("vocab", "hash", "bucketize", "mnse", "identity", "sequence_vocab", "sequence_float", "dense")
INT_MISSING = np.iinfo(np.int64).min

# Options each encoding accepts in a spec (anything else is an error).
_PARAMS = {
    "vocab": {"min_count", "max_size", "share_vocab_with"},
    "hash": {"num_buckets"},
    "bucketize": {"method", "num_buckets", "boundaries", "max_id"},
    "mnse": {"bases", "digits", "scale", "signed"},
    "identity": {"standardize"},
    "sequence_vocab": {"max_len", "min_count", "max_size", "share_vocab_with"},
    "sequence_float": {"max_len"},
    "dense": {"dim"},
}
_KINDS = {
    "vocab": ("categorical", "numeric"), "hash": ("categorical", "numeric"),
    "bucketize": ("numeric",), "mnse": ("numeric",), "identity": ("numeric",),
    "sequence_vocab": ("sequence",), "sequence_float": ("sequence",), "dense": ("dense",),
}
_DTYPES = {
    "vocab": ("string", "int64"), "hash": ("string", "int64"), "sequence_vocab": ("string", "int64"),
    "bucketize": ("int64", "float32"), "mnse": ("int64", "float32"), "identity": ("int64", "float32"),
    "sequence_float": ("int64", "float32"), "dense": ("int64", "float32"),
}
_CATEGORICAL = ("vocab", "hash")
_NUMERIC = ("bucketize", "mnse", "identity")
_LISTS = ("sequence_vocab", "sequence_float", "dense")
_VOCAB_TYPES = ("vocab", "sequence_vocab")


class EncodeError(ValueError):
    """A spec, statistic or raw value a feature cannot encode; names the feature (and rows)."""

    def __init__(self, feature: str, reason: str, rows: Optional[Sequence[int]] = None):
        self.feature, self.reason = feature, reason
        self.rows = None if rows is None else [int(r) for r in rows]
        where = "" if not self.rows else f" (rows {self.rows[:10]}{' ...' if len(self.rows) > 10 else ''})"
        super().__init__(f"feature '{feature}': {reason}{where}")


# ---- raw values -> canonical keys / numbers (numpy) ----------------------------
def _column(values) -> np.ndarray:
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    return arr


def _key_of(v) -> Optional[str]:
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
            keys[:] = [_key_of(v) for v in arr]
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


def _lists(values, name: str) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray]:
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


def _element_rows(exc: EncodeError, lengths: np.ndarray) -> EncodeError:
    """An error naming flat list elements -> the same error naming their rows."""
    if not exc.rows:
        return exc
    rows = np.repeat(np.arange(len(lengths)), lengths)[np.asarray(exc.rows, dtype=np.int64)]
    return EncodeError(exc.feature, exc.reason, np.unique(rows))


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


def _pack_last(rows: np.ndarray, vals: np.ndarray, n: int, max_len: int, dtype) -> np.ndarray:
    """Scatter elements (``rows`` = their row, in order) into [n, max_len], keeping each
    row's last ``max_len`` elements, right-padded with 0."""
    lengths = np.bincount(rows, minlength=n)
    starts = np.cumsum(lengths) - lengths
    col = np.arange(len(rows)) - starts[rows] - np.maximum(lengths - max_len, 0)[rows]
    keep = col >= 0
    out = np.zeros((n, max_len), dtype=dtype)
    out[rows[keep], col[keep]] = vals[keep]
    return out


def compute_stats(spec, values) -> Dict[str, object]:
    """The train statistics :func:`build_feature` needs, computed in memory from one column
    of raw values (the Beam job computes the same with combiners over chunks): for fitting
    features on a DataFrame in notebooks, tests and benchmarks."""
    need, stats = analyzers_needed(spec), {}
    if "counts" in need:
        stats["counts"] = count_values(spec, values)
    if need & {"quantiles", "moments"}:
        x = numeric_values(values, spec.dtype)
        x = x[np.isfinite(x)]
        stats["quantiles"] = np.sort(x)
        stats["moments"] = {"count": x.size, "mean": float(x.mean()) if x.size else 0.0,
                            "var": float(x.var()) if x.size else 0.0}
    return stats


def count_values(spec, values) -> Dict[str, int]:
    """Counts of the non-missing keys in a batch (list elements for sequence_vocab, per-row
    lists or :class:`FlatLists`): the per-batch part of the ``counts`` statistic, to be
    summed by the Beam job."""
    null = None
    if spec.encoding.get("type") == "sequence_vocab":
        values, null, lengths, _ = _lists(values, spec.name)
        try:
            keys, missing = categorical_keys(values, spec.name)
        except EncodeError as exc:
            raise _element_rows(exc, lengths) from None
        missing = missing if null is None else missing | null
    else:
        keys, missing = categorical_keys(values, spec.name)
    counts = pd.Series(keys[~missing], dtype=object).value_counts(sort=False)
    return {k: int(c) for k, c in counts.items()}


# ---- specs -> Features ---------------------------------------------------------
def _params(spec) -> Tuple[str, Dict[str, Any]]:
    """(type, options) of a spec, with the type, options, kind and dtype checked."""
    if not isinstance(spec.encoding, dict):
        raise EncodeError(spec.name, f"encoding must be a mapping, got {spec.encoding!r}")
    p = dict(spec.encoding)
    etype = p.pop("type", None)
    if etype not in ENCODING_TYPES:
        raise EncodeError(spec.name, f"encoding.type {etype!r} not in {ENCODING_TYPES}")
    unknown = sorted(set(p) - _PARAMS[etype])
    if unknown:
        raise EncodeError(spec.name, f"unknown {etype} option(s) {unknown}; known: {sorted(_PARAMS[etype])}")
    if spec.kind not in _KINDS[etype]:
        raise EncodeError(spec.name, f"encoding {etype} needs kind in {_KINDS[etype]}, got '{spec.kind}'")
    if spec.dtype not in _DTYPES[etype]:
        raise EncodeError(spec.name, f"encoding {etype} needs dtype in {_DTYPES[etype]}, got '{spec.dtype}'")
    if etype in _LISTS and spec.default is not None:
        raise EncodeError(spec.name, f"{etype} takes no default: a missing list encodes as padding / zeros")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", spec.name):
        raise EncodeError(spec.name, "feature names may hold only letters, digits, '_', '.', '-'")
    return etype, p


def _int(spec, p, key, default=None, low=1, required=False) -> Optional[int]:
    v = p.get(key, default)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise EncodeError(spec.name, f"encoding.{key} must be an integer >= {low}, got {v!r}")
    return v


def _bool(spec, p, key, default=None) -> Optional[bool]:
    v = p.get(key, default)
    if v is not None and not isinstance(v, bool):
        raise EncodeError(spec.name, f"encoding.{key} must be true or false, got {v!r}")
    return v


def _stat(spec, stats, key):
    if not stats or stats.get(key) is None:
        raise EncodeError(spec.name, f"needs the train statistic '{key}' (see analyzers_needed)")
    return stats[key]


def analyzers_needed(spec) -> set:
    """Train statistics ``build_feature`` needs: a subset of {counts, quantiles, moments}."""
    etype, p = _params(spec)
    if etype in _VOCAB_TYPES:
        return set() if p.get("share_vocab_with") else {"counts"}
    if etype == "bucketize":
        method = p.get("method", "boundaries" if "boundaries" in p else "quantile")
        need = method == "quantile" or (method == "log2sq" and p.get("max_id") is None)
        return {"quantiles"} if need else set()
    if etype == "mnse":
        return {"quantiles"} if p.get("digits") is None or p.get("signed") is None else set()
    if etype == "identity" and p.get("standardize"):
        return {"moments"}
    return set()


def sort_for_build(specs) -> list:
    """Specs ordered so that every ``share_vocab_with`` target is built before its users."""
    by_name = {s.name: s for s in specs}
    sharers = []
    for s in specs:
        target = s.encoding.get("share_vocab_with") if isinstance(s.encoding, dict) else None
        if target is None:
            continue
        t = by_name.get(target)
        if t is None:
            raise EncodeError(s.name, f"share_vocab_with names '{target}', which is not a feature")
        if t.encoding.get("type") not in _VOCAB_TYPES or t.encoding.get("share_vocab_with"):
            raise EncodeError(s.name, f"share_vocab_with '{target}' must be a vocab or sequence_vocab "
                                      "feature with its own vocabulary")
        sharers.append(s)
    return [s for s in specs if s not in sharers] + sharers


def _vocab_path(name: str) -> str:
    return f"vocab/{name}.txt"


def _build_vocab(spec, p, stats, out_dir) -> Tuple[Dict[str, Any], int]:
    target = p.get("share_vocab_with")
    if target is not None:
        own = sorted({"min_count", "max_size"} & set(p))
        if own:
            raise EncodeError(spec.name, f"{own} cannot be combined with share_vocab_with")
        rel = _vocab_path(target)
        if not os.path.exists(os.path.join(out_dir, rel)):
            raise EncodeError(spec.name, f"share_vocab_with '{target}': no vocabulary at "
                                         f"{os.path.join(out_dir, rel)}; build '{target}' first (sort_for_build)")
        keys = vocab.read_vocab(os.path.join(out_dir, rel))
        return {"share_vocab_with": target, "vocab_file": rel, "vocab_size": len(keys)}, len(keys)
    min_count = _int(spec, p, "min_count", 1)
    max_size = _int(spec, p, "max_size")
    counts = _stat(spec, stats, "counts")
    keys = vocab.build_vocab({str(k): int(c) for k, c in counts.items()}, min_count, max_size)
    rel = _vocab_path(spec.name)
    vocab.write_vocab(os.path.join(out_dir, rel), keys)
    return {"min_count": min_count, "max_size": max_size, "vocab_file": rel, "vocab_size": len(keys)}, len(keys)


def _build_bucketize(spec, p, stats) -> Tuple[Dict[str, Any], int]:
    method = p.get("method", "boundaries" if "boundaries" in p else "quantile")
    if method not in bucketize.METHODS:
        raise EncodeError(spec.name, f"bucketize method {method!r} not in {bucketize.METHODS}")
    allowed = {"quantile": {"num_buckets"}, "boundaries": {"boundaries"}, "log2sq": {"max_id"}}[method]
    extra = sorted(set(p) - allowed - {"method"})
    if extra:
        raise EncodeError(spec.name, f"bucketize method '{method}' takes no {extra}")
    if method == "log2sq":
        max_id = _int(spec, p, "max_id", low=bucketize.LOG2SQ_MIN_MAX_ID)
        if max_id is None:
            max_id = bucketize.log2sq_max_id(_stat(spec, stats, "quantiles"))
        return {"method": method, "max_id": max_id}, max_id + 1
    if method == "quantile":
        nb = _int(spec, p, "num_buckets", bucketize.DEFAULT_NUM_BUCKETS)
        bounds = bucketize.quantile_boundaries(_stat(spec, stats, "quantiles"), nb)
        res = {"method": method, "num_buckets": nb, "boundaries": bounds}
    else:
        res = {"method": method, "boundaries": bucketize.check_boundaries(p["boundaries"])}
    return res, len(res["boundaries"]) + bucketize.FIRST_ID + 1


def _build_mnse(spec, p, stats) -> Dict[str, Any]:
    bases = p.get("bases", list(mnse.DEFAULT_BASES))
    scale = p.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise EncodeError(spec.name, f"encoding.scale must be a positive number, got {scale!r}")
    mnse.check_bases(bases)
    digits, signed = p.get("digits"), _bool(spec, p, "signed")
    if digits is None or signed is None:
        sample = np.asarray(_stat(spec, stats, "quantiles"), dtype=np.float64)
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            raise EncodeError(spec.name, "no finite training values to size the MNSE digits from")
        if signed is None:
            signed = bool(sample.min() < 0)
        if digits is None:
            top = int(min(np.floor(np.abs(sample).max() * scale), float(mnse.MAX_CODE)))
            digits = [mnse.digits_needed(top, b) for b in bases]
    mnse.check_digits(bases, digits)
    return {"bases": bases, "digits": digits, "scale": scale, "signed": signed}


def build_feature(spec, stats: dict, out_dir: str) -> Feature:
    """Resolve a spec with TRAIN statistics into a Feature; writes vocabulary files."""
    etype, p = _params(spec)
    _check_default(spec, etype)
    num_ids, width, out_dtype = 0, 1, "int64"
    try:
        if etype in _VOCAB_TYPES:
            if etype == "sequence_vocab":
                width = _int(spec, p, "max_len", required=True)
            res, size = _build_vocab(spec, p, stats, out_dir)
            num_ids = size + vocab.FIRST_ID
            if etype == "sequence_vocab":
                res["max_len"] = width
        elif etype == "hash":
            nb = _int(spec, p, "num_buckets", required=True)
            res, num_ids = {"num_buckets": nb}, nb + 1
        elif etype == "bucketize":
            res, num_ids = _build_bucketize(spec, p, stats)
        elif etype == "mnse":
            res = _build_mnse(spec, p, stats)
            num_ids, width = mnse.num_ids(res), mnse.width(res)
        elif etype == "identity":
            res, out_dtype = {"standardize": bool(_bool(spec, p, "standardize", False))}, "float32"
            if res["standardize"]:
                m = _stat(spec, stats, "moments")
                if not m.get("count"):
                    raise EncodeError(spec.name, "no training values to standardize with")
                var = float(m["var"])
                res.update(mean=float(m["mean"]), std=float(np.sqrt(var)) if var > 0 and np.isfinite(var) else 1.0)
        elif etype == "sequence_float":
            res, out_dtype = {"max_len": _int(spec, p, "max_len", required=True)}, "float32"
            width = res["max_len"]
        else:  # dense
            res, out_dtype = {"dim": _int(spec, p, "dim", required=True)}, "float32"
            width = res["dim"]
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, EncodeError):
            raise
        raise EncodeError(spec.name, str(exc)) from None
    return Feature(name=spec.name, kind=spec.kind, dtype=spec.dtype, role=spec.role,
                   encoding={"type": etype, **res}, num_ids=num_ids, width=width, encoded_dtype=out_dtype,
                   required=spec.required, default=spec.default, source=spec.source)


def _check_default(spec, etype) -> None:
    d = spec.default
    if d is None:
        return
    ok = (_key_of(d) not in (None, "")) if etype in _CATEGORICAL else (
        isinstance(d, (int, float)) and not isinstance(d, bool) and np.isfinite(d))
    if not ok:
        raise EncodeError(spec.name, f"default {d!r} is not a valid raw value for encoding {etype}")


# ---- numpy encoder -------------------------------------------------------------
def _load_vocab(feature: Feature, data_dir: str) -> List[str]:
    path = os.path.join(data_dir, feature.encoding["vocab_file"])
    try:
        keys = vocab.read_vocab(path)
    except FileNotFoundError:
        raise EncodeError(feature.name, f"vocabulary file not found: '{path}'") from None
    if len(keys) != feature.encoding["vocab_size"]:
        raise EncodeError(feature.name, f"vocabulary '{path}' has {len(keys)} entries, "
                                        f"the schema says {feature.encoding['vocab_size']}")
    return keys


def _identity_fill(enc: Dict[str, Any], default) -> float:
    if default is not None:
        return float(default)
    return enc["mean"] if enc["standardize"] else 0.0


class NumpyEncoder:
    """Vectorised numpy encoding of raw batches, for the Beam job."""

    def __init__(self, feature: Feature, data_dir: str):
        self.feature = feature
        enc = feature.encoding
        self.type = enc["type"]
        if self.type in _VOCAB_TYPES:
            self._vocab = vocab.VocabLookup(_load_vocab(feature, data_dir))
        if self.type == "bucketize":
            self._boundaries = bucketize.resolve_boundaries(enc)

    def _missing_required(self, missing: np.ndarray) -> None:
        if self.feature.required and missing.any():
            raise EncodeError(self.feature.name, "required value is missing", np.flatnonzero(missing))

    def _ids(self, keys: np.ndarray) -> np.ndarray:
        if self.type == "hash":
            return hashing.hash_ids(keys, self.feature.encoding["num_buckets"])
        return self._vocab.lookup(keys)

    def encode(self, values) -> np.ndarray:
        """Raw values of one batch -> [n, width] int64 or float32."""
        f, enc = self.feature, self.feature.encoding
        if self.type in _CATEGORICAL:
            keys, missing = categorical_keys(values, f.name)
            self._missing_required(missing)
            if f.default is not None:
                keys[missing] = _key_of(f.default)
                missing = np.zeros_like(missing)
            ids = np.zeros(len(keys), dtype=np.int64)
            ids[~missing] = self._ids(keys[~missing])
            return ids[:, None]
        if self.type in _NUMERIC:
            x = numeric_values(values, f.dtype, f.name)
            self._missing_required(np.isnan(x))
            if self.type == "identity":
                x = np.where(np.isnan(x), _identity_fill(enc, f.default), x)
                if enc["standardize"]:
                    x = (x - enc["mean"]) / enc["std"]
                return x.astype(np.float32)[:, None]
            if f.default is not None:
                x = np.where(np.isnan(x), float(f.default), x)
            if self.type == "bucketize":
                return bucketize.bucket_ids(x, self._boundaries)[:, None]
            return mnse.mnse_ids(x, enc)
        return self._encode_lists(values)

    def _encode_lists(self, values) -> np.ndarray:
        """sequence_vocab / sequence_float / dense over per-row lists or :class:`FlatLists`:
        one pass over the flat elements, whatever the form."""
        f, enc = self.feature, self.feature.encoding
        flat, null, lengths, missing_rows = _lists(values, f.name)
        self._missing_required(missing_rows)
        n = len(lengths)
        if self.type == "dense":
            bad = np.flatnonzero(~missing_rows & (lengths != enc["dim"]))
            if bad.size:
                raise EncodeError(f.name, f"dense lists must hold exactly {enc['dim']} values", bad)
        try:
            if self.type == "sequence_vocab":
                keys, missing = categorical_keys(flat, f.name)
            else:
                x = numeric_values(flat, f.dtype, f.name)
                missing = np.isnan(x)
        except EncodeError as exc:
            raise _element_rows(exc, lengths) from None
        if null is not None:
            missing |= null
        if self.type == "dense":  # missing elements are 0.0
            out = np.zeros((n, enc["dim"]), dtype=np.float32)
            out[~missing_rows] = np.where(missing, 0.0, x).reshape(-1, enc["dim"])
            return out
        if self.type == "sequence_vocab":
            vals, dtype = self._vocab.lookup(keys[~missing]), np.int64
        else:  # sequence_float
            vals, dtype = x[~missing], np.float32
        rows = np.repeat(np.arange(n), lengths)
        return _pack_last(rows[~missing], vals, n, enc["max_len"], dtype)


# ---- TF encoder ----------------------------------------------------------------
def _tf_keys(x: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
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


def _tf_numbers(x: tf.Tensor, dtype: str) -> tf.Tensor:
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


def _tf_module_name(name: str) -> str:
    return "encode_" + re.sub(r"\W", "_", name)


@functools.lru_cache(maxsize=None)
def _tf_encoder_class() -> type:
    """:class:`TFEncoder`, defined on first use so that importing this module (as every Beam
    worker does) does not import TensorFlow."""
    import tensorflow as tf

    class TFEncoder(tf.Module):
        """Raw tensor -> [batch, width] encoded tensor inside a TF graph (see module docstring).

        A ``tf.Module`` so the vocabulary table and its file are tracked (saved as a
        SavedModel asset) when the encoder is attached to an exported module.
        """

        def __init__(self, feature: Feature, data_dir: str):
            super().__init__(name=_tf_module_name(feature.name))
            self.feature = feature
            self.type = feature.encoding["type"]
            if self.type in _VOCAB_TYPES:
                size = len(_load_vocab(feature, data_dir))
                self._table = vocab.tf_vocab_table(os.path.join(data_dir, feature.encoding["vocab_file"]), size)
            if self.type == "bucketize":
                self._boundaries = bucketize.resolve_boundaries(feature.encoding)

        def _ids(self, keys: tf.Tensor) -> tf.Tensor:
            if self.type == "hash":
                return hashing.tf_hash_ids(keys, self.feature.encoding["num_buckets"])
            return vocab.tf_vocab_lookup(self._table, keys)

        def __call__(self, x):
            f, enc = self.feature, self.feature.encoding
            if self.type in _LISTS:
                return self._encode_lists(x if isinstance(x, tf.RaggedTensor) else tf.convert_to_tensor(x))
            x = tf.reshape(tf.convert_to_tensor(x), [-1])
            if self.type in _CATEGORICAL:
                keys, missing = _tf_keys(x)
                if f.default is not None:
                    keys = tf.where(missing, _key_of(f.default), keys)
                    missing = tf.zeros_like(missing)
                return tf.where(missing, tf.constant(PAD_ID, tf.int64), self._ids(keys))[:, None]
            v = _tf_numbers(x, f.dtype)
            nan = tf.math.is_nan(v)
            if self.type == "identity":
                v = tf.where(nan, tf.constant(_identity_fill(enc, f.default), tf.float64), v)
                if enc["standardize"]:
                    v = (v - enc["mean"]) / enc["std"]
                return tf.cast(v, tf.float32)[:, None]
            if f.default is not None:
                v = tf.where(nan, tf.constant(float(f.default), tf.float64), v)
            if self.type == "bucketize":
                return bucketize.tf_bucket_ids(v, self._boundaries)[:, None]
            return mnse.tf_mnse_ids(v, enc)

        def _encode_lists(self, x) -> tf.Tensor:
            f, enc = self.feature, self.feature.encoding
            if self.type == "dense":
                if isinstance(x, tf.RaggedTensor):
                    x = x.to_tensor(default_value=tf.constant(np.nan, x.dtype) if x.dtype.is_floating
                                    else INT_MISSING, shape=[None, enc["dim"]])
                v = _tf_numbers(tf.reshape(x, [-1, enc["dim"]]), f.dtype)
                return tf.cast(tf.where(tf.math.is_nan(v), tf.zeros_like(v), v), tf.float32)
            rt = x if isinstance(x, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(x)
            flat = rt.flat_values
            if self.type == "sequence_vocab":
                keys, missing = _tf_keys(flat)
                vals, pad = self._ids(keys), tf.constant(PAD_ID, tf.int64)
            else:  # sequence_float
                v = _tf_numbers(flat, f.dtype)
                missing, vals, pad = tf.math.is_nan(v), tf.cast(v, tf.float32), tf.constant(0.0, tf.float32)
            kept = tf.ragged.boolean_mask(rt.with_flat_values(vals), rt.with_flat_values(~missing))
            return kept[:, -enc["max_len"]:].to_tensor(default_value=pad, shape=[None, enc["max_len"]])

    TFEncoder.__qualname__ = "TFEncoder"
    return TFEncoder


def __getattr__(name: str):
    """``encoders.TFEncoder`` resolves (importing TensorFlow) only when it is asked for."""
    if name == "TFEncoder":
        return _tf_encoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_tf_encoder(feature: Feature, data_dir: str) -> tf.Module:
    """The TF twin of :class:`NumpyEncoder` (equal outputs on the same inputs)."""
    return _tf_encoder_class()(feature, data_dir)
