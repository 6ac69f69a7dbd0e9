"""Per-column coercion: raw column values -> canonical values + the problems they have.

Every function works on whole numpy columns (masks, no per-row Python on the good path)
and records problems as (row mask, reason) pairs in a :class:`Problems`;
:mod:`pipeline.beam.validation` turns them into quarantined rows. Reasons found here:
``missing_required``, ``wrong_type`` (not parseable as the declared dtype, e.g. a word in a
numeric column, 3.5 in an int64 column, a non-list in a list column), ``out_of_range`` (an
integer beyond int64 where int64 is declared), ``nan`` / ``inf`` (a NaN or infinite number
anywhere a number is read: NaN elements of sequence_float / dense lists included, whereas
*null* list elements are just dropped), ``wrong_length`` (dense list length != ``dim``),
``bad_source`` (not ad / rec / 1 / 0).

Canonical columns handed to the encoders (good rows only):

* categorical int64 -> int64 with ``INT_MISSING`` for missing; categorical string ->
  int64 likewise when the raw column holds integers, else the keys of
  :func:`features.encoders.categorical_keys` (object, ``""`` = missing) — the same
  keys the vocabularies count; bools become 0 / 1;
* numeric -> float64 with NaN for missing, rounded through float32 for float32
  features (as the encoders round), so train statistics match what is encoded;
* sequences / dense -> :class:`pipeline.raw_io.ListColumn` of canonical elements
  (float32 for float32 features), null elements dropped (dense: kept as NaN -> 0.0);
* labels -> float32; meta -> int64 / float32.

Which coercion a feature gets, its encoding class says (``features/encodings/``): whether
it is ``list_valued`` (read as a list column), whether it ``reads`` categorical keys or
numbers, and a fixed ``list_length`` (dense: ``dim``, whose lists keep their positions).

Keys: ``user_key`` (and string extra meta) = the raw id when it is an integer (or the
canonical decimal string of one, e.g. "111" but not "0111" or "+111"), else FarmHash
Fingerprint64 of its UTF-8 key as int64, so ids that differ as strings stay different
(:func:`keys_to_int64`); ``source`` = 1 for "ad", 0 for "rec" (:func:`as_source`).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import farmhash
import numpy as np
import pandas as pd

from features.encoders import INT_MISSING, EncodeError, categorical_keys
from features.encodings import encoding_of
from pipeline.config import ConfigError
from pipeline.preprocess_config import FeatureSpec
from pipeline.raw_io import ListColumn

_INT_RE = r"\s*[+-]?\d+\s*"  # an integer written in decimal (int64 range checked apart)
_CANONICAL_INT_RE = r"0|-?[1-9]\d{0,18}"  # the decimal string str(int) gives: one string per integer
_INT64_LIMIT = 2.0 ** 63
_NAN_WORDS = {"nan", "+nan", "-nan"}


@dataclasses.dataclass
class Problems:
    """(mask, reason) pairs of one check, in order."""

    items: List[Tuple[np.ndarray, str]] = dataclasses.field(default_factory=list)

    def add(self, mask: Optional[np.ndarray], reason: str) -> None:
        if mask is not None and mask.any():
            self.items.append((mask, reason))


# ---- column parsers: raw column -> canonical values + problems -------------------------------
def as_numbers(values: np.ndarray, null: np.ndarray, probs: Problems, float32: bool = False) -> np.ndarray:
    """float64 with NaN at nulls; flags wrong_type / nan / inf."""
    kind = values.dtype.kind
    if kind in "iub":
        x = values.astype(np.float64)
    elif kind == "f":
        x = values.astype(np.float64, copy=True)
    elif kind in "OUS":
        x, bad = _parse_numbers(values, null)
        words = np.zeros(len(x), bool)
        if bad.any():
            idx = np.flatnonzero(bad)
            words[idx] = [str(values[i]).strip().lower() in _NAN_WORDS for i in idx]
        probs.add(bad & ~words, "wrong_type")
        x[bad & words] = np.nan
        probs.add(bad & words, "nan")
        x[null | bad] = np.nan
        null = null | bad  # already reported; keep them out of the nan/inf checks below
    else:  # datetimes and other types are not numbers
        probs.add(~null, "wrong_type")
        return np.full(len(values), np.nan)
    x[null] = np.nan
    probs.add(np.isnan(x) & ~null, "nan")
    if float32:
        with np.errstate(over="ignore"):
            inf = np.isinf(x.astype(np.float32))
    else:
        inf = np.isinf(x)
    probs.add(inf, "inf")
    return x


def _parse_numbers(values: np.ndarray, null: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Objects / strings -> float64; ``bad`` marks non-null values that are not numbers."""
    obj = values.astype(object)
    inferred = pd.api.types.infer_dtype(obj, skipna=True)
    try:
        x = pd.to_numeric(pd.Series(obj), errors="coerce").to_numpy(np.float64, na_value=np.nan)
    except (TypeError, ValueError):  # lists / dicts in the column: go element by element
        x = np.array([_float_or_nan(v) for v in obj], dtype=np.float64)
    if inferred in ("string", "integer", "floating", "mixed-integer-float", "empty"):
        real_nan = pd.isna(obj) & ~null  # NaN objects (None is null)
        is_bool = np.zeros(len(obj), bool)
    else:  # booleans or other objects mixed in: look at each value
        real_nan = np.fromiter((isinstance(v, (float, np.floating)) and v != v for v in obj), bool, len(obj))
        is_bool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in obj), bool, len(obj))
        x[is_bool] = np.nan  # True is not a number in a numeric column
    bad = np.isnan(x) & ~null & ~real_nan
    return x, bad | (is_bool & ~null)


def _float_or_nan(v) -> float:
    if isinstance(v, (bool, np.bool_, list, dict, tuple)):
        return np.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def as_integers(values: np.ndarray, null: np.ndarray, probs: Problems) -> np.ndarray:
    """int64 with INT_MISSING at nulls; flags wrong_type (non-integers), out_of_range
    (integers beyond int64) and nan / inf."""
    kind = values.dtype.kind
    out = np.full(len(values), INT_MISSING, dtype=np.int64)
    if kind in "iub":
        out[~null] = values[~null].astype(np.int64)
        return out
    if kind == "f":
        return _integral_floats(values.astype(np.float64), null, probs, out)
    if kind not in "OUS":
        probs.add(~null, "wrong_type")
        return out
    obj = values.astype(object)
    obj[null] = 0
    try:  # fast path: every value an int64 or an integer string within int64 (exact)
        if pd.api.types.infer_dtype(obj, skipna=True) in ("integer", "string"):
            out[~null] = obj[~null].astype(np.int64)
            return out
    except (TypeError, ValueError, OverflowError):
        pass
    done = null.copy()
    is_int = ~done & np.fromiter((isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                  for v in obj), bool, len(obj))
    is_str = ~done & np.fromiter((isinstance(v, str) for v in obj), bool, len(obj))
    if is_str.any():
        idx = np.flatnonzero(is_str)
        strs = pd.Series(obj[idx].astype(str))
        m = strs.str.fullmatch(_INT_RE).to_numpy(bool)
        obj[idx[m]] = [int(t) for t in strs[m]]  # exact Python ints, whatever their size
        is_int[idx[m]] = True
    if is_int.any():
        idx = np.flatnonzero(is_int)
        fits = np.fromiter((-_INT64_LIMIT <= int(v) < _INT64_LIMIT for v in obj[idx]), bool, len(idx))
        out[idx[fits]] = np.array([int(v) for v in obj[idx[fits]]], dtype=np.int64)
        over = np.zeros(len(values), bool)
        over[idx[~fits]] = True
        probs.add(over, "out_of_range")
        done |= is_int
    rest = np.flatnonzero(~done)
    if rest.size:  # floats, float-formatted strings, junk
        sub = Problems()
        x = as_numbers(obj[rest], np.zeros(rest.size, bool), sub)
        tmp = np.full(rest.size, INT_MISSING, dtype=np.int64)
        _integral_floats(x, np.zeros(rest.size, bool), sub, tmp, skip=_flagged(sub, rest.size))
        out[rest] = tmp
        for mask, reason in sub.items:
            full = np.zeros(len(values), bool)
            full[rest] = mask
            probs.add(full, reason)
    return out


def _flagged(probs: Problems, n: int) -> np.ndarray:
    m = np.zeros(n, bool)
    for mask, _ in probs.items:
        m |= mask
    return m


def _integral_floats(x: np.ndarray, null: np.ndarray, probs: Problems, out: np.ndarray,
                     skip: Optional[np.ndarray] = None) -> np.ndarray:
    ok = ~null if skip is None else ~null & ~skip
    if skip is None:
        probs.add(np.isnan(x) & ok, "nan")
        probs.add(np.isinf(x) & ok, "inf")
    finite = np.isfinite(x)
    inside = ok & finite & (x >= -_INT64_LIMIT) & (x < _INT64_LIMIT)
    probs.add(ok & finite & ~inside, "out_of_range")  # every float this large is integral
    whole = inside.copy()
    whole[whole] = np.floor(x[whole]) == x[whole]
    probs.add(inside & ~whole, "wrong_type")
    out[whole] = x[whole].astype(np.int64)
    return out


def as_keys(values: np.ndarray, null: np.ndarray, probs: Problems) -> np.ndarray:
    """Categorical keys: int64 (INT_MISSING) for integer columns, else object keys ("" missing)."""
    kind = values.dtype.kind
    if kind in "iubf":
        return as_integers(values, null, probs)
    obj = values.astype(object)
    if not null.any() and pd.api.types.infer_dtype(obj, skipna=False) == "string":
        return obj  # the usual case: strings only, and a string is its own key
    obj[null] = None
    if pd.api.types.infer_dtype(obj, skipna=True) in ("string", "empty"):
        real_nan = pd.isna(obj) & ~null
        probs.add(real_nan, "nan")
        obj[null | real_nan] = ""
        return obj
    real_nan = np.fromiter((isinstance(v, (float, np.floating)) and v != v for v in obj), bool, len(obj))
    probs.add(real_nan, "nan")
    is_bool = np.fromiter((isinstance(v, (bool, np.bool_)) for v in obj), bool, len(obj))
    if is_bool.any():
        obj[is_bool] = [int(v) for v in obj[is_bool]]
    bad = np.zeros(len(obj), bool)
    try:
        keys, _ = categorical_keys(obj)
    except EncodeError as exc:
        bad[exc.rows] = True
        obj[bad] = None
        keys, _ = categorical_keys(obj)
    probs.add(bad, "wrong_type")
    return keys


def missing_keys(keys: np.ndarray) -> np.ndarray:
    """Missing entries of canonical keys: "" (object keys) or INT_MISSING (int64 keys)."""
    return keys == "" if keys.dtype == object else keys == INT_MISSING


def _per_distinct(fn, values: np.ndarray) -> np.ndarray:
    """``fn`` (an array function) over the distinct strings of ``values``, spread back to every
    row. Raw string columns are dictionary-encoded (few distinct values per chunk, e.g. one
    user's impressions are consecutive), so per-value Python work runs once per distinct value.
    Only string columns take this path: distinct is by ``==``, which merges 1, 1.0 and True."""
    if values.dtype != object or pd.api.types.infer_dtype(values, skipna=False) != "string":
        return fn(values)
    codes, distinct = pd.factorize(values)
    return fn(np.asarray(distinct, dtype=object))[codes]


def keys_to_int64(keys: np.ndarray) -> np.ndarray:
    """User / meta keys -> int64: integer keys as themselves, others FarmHash Fingerprint64."""
    if keys.dtype.kind == "i":
        return keys
    return _per_distinct(_string_keys_to_int64, keys)


def _string_keys_to_int64(keys: np.ndarray) -> np.ndarray:
    """Canonical decimal strings of int64 integers as those integers, every other string as
    its FarmHash Fingerprint64: "111" and 111 are one key, "0111", "+111" and " 111" others."""
    out = np.empty(len(keys), dtype=np.int64)
    s = pd.Series(keys, dtype=object)
    cand = np.flatnonzero(s.str.fullmatch(_CANONICAL_INT_RE).to_numpy(bool, na_value=False))
    is_int = np.zeros(len(keys), bool)
    if cand.size:
        ints = [int(k) for k in keys[cand]]
        fits = np.fromiter((-_INT64_LIMIT <= v < _INT64_LIMIT for v in ints), bool, len(ints))
        out[cand[fits]] = np.array([v for v, f in zip(ints, fits) if f], dtype=np.int64)
        is_int[cand[fits]] = True
    rest = np.flatnonzero(~is_int)
    out[rest] = np.fromiter((farmhash.fingerprint64(k) for k in keys[rest]), np.uint64,
                            len(rest)).view(np.int64)
    return out


def as_time(values: np.ndarray, null: np.ndarray, probs: Problems) -> np.ndarray:
    """Numbers as they are, datetimes (datetime64 or ISO strings) as seconds since the epoch."""
    if values.dtype.kind == "M":
        t = values.astype("datetime64[ns]").astype(np.int64).astype(np.float64) / 1e9
        t[null | np.isnat(values)] = np.nan
        return t
    sub = Problems()
    t = as_numbers(values, null, sub)
    wrong = next((m for m, r in sub.items if r == "wrong_type"), None)
    if wrong is not None:
        parsed = pd.to_datetime(pd.Series(values[wrong].astype(str)), errors="coerce", utc=True, format="ISO8601")
        ok = parsed.notna().to_numpy()
        idx = np.flatnonzero(wrong)
        t[idx[ok]] = parsed[ok].to_numpy("datetime64[ns]").astype(np.int64) / 1e9
        wrong = wrong.copy()
        wrong[idx[ok]] = False
        sub.items = [(wrong if r == "wrong_type" else m, r) for m, r in sub.items]
    for m, r in sub.items:
        probs.add(m, r)
    return t


def coerce_feature(spec: FeatureSpec, values, null, probs: Problems):
    """A feature's raw column -> its canonical values (the encoding class decides which)."""
    encoding = encoding_of(spec)
    if encoding.list_valued:
        if not isinstance(values, ListColumn):
            raise ConfigError(f"feature '{spec.name}': raw column '{spec.source or spec.name}' was not "
                              "read as a list")
        col = _list_elements(values, spec, probs)
        if spec.required:
            probs.add(col.null_rows, "missing_required")
        return col
    if encoding.reads == "keys":
        out = (as_integers if spec.dtype == "int64" else as_keys)(values, null, probs)
        if spec.required:  # an empty string is a missing key (as the encoders see it)
            probs.add(null | missing_keys(out), "missing_required")
        return out
    out = as_numbers(values, null, probs, float32=spec.dtype == "float32")
    if spec.dtype == "float32":  # round as the encoders do, so statistics match encoding
        with np.errstate(over="ignore"):
            out = out.astype(np.float32).astype(np.float64)
    if spec.dtype == "int64":  # flags non-integral values
        _integral_floats(out, np.isnan(out), probs, np.full(len(out), INT_MISSING, np.int64),
                         skip=_flagged(probs, len(out)))
    if spec.required:
        probs.add(null, "missing_required")
    return out


def _list_elements(col: ListColumn, spec: FeatureSpec, probs_rows: Problems) -> ListColumn:
    """Canonical list elements (null elements dropped); row problems in ``probs_rows``."""
    encoding = encoding_of(spec)
    n = len(col)
    if col.not_list is not None:
        probs_rows.add(col.not_list, "wrong_type")
    sub = Problems()
    if encoding.reads == "keys":
        vals = (as_integers if spec.dtype == "int64" else as_keys)(col.values, col.null_values, sub)
        missing = missing_keys(vals)
    else:
        vals = as_numbers(col.values, col.null_values, sub, float32=spec.dtype == "float32")
        if spec.dtype == "float32":  # the encoders round through float32 anyway: half the bytes
            vals = vals.astype(np.float32)
        if spec.dtype == "int64":  # flags non-integral values
            _integral_floats(vals, np.isnan(vals), sub, np.full(len(vals), INT_MISSING, np.int64),
                             skip=_flagged(sub, len(vals)))
        missing = col.null_values
    row_of = np.repeat(np.arange(n), col.lengths)
    for mask, reason in sub.items:  # element problems -> row problems
        rows = np.zeros(n, bool)
        rows[row_of[mask]] = True
        probs_rows.add(rows, reason)
    length = encoding.list_length(spec.encoding)
    if length is not None:
        probs_rows.add(~col.null_rows & (col.lengths != length), "wrong_length")
        keep = np.ones(len(vals), bool)  # fixed-length lists keep positions; NaN rows are already flagged
    else:
        keep = ~missing
    lengths = np.bincount(row_of[keep], minlength=n).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ListColumn(vals[keep], offsets, col.null_rows.copy(), np.zeros(int(keep.sum()), bool))


def _source_codes(values: np.ndarray) -> np.ndarray:
    """1 for ad, 0 for rec, -1 for anything else (compared as stripped lower-case text)."""
    text = pd.Series(values.astype(object)).astype(str).str.strip().str.lower().to_numpy(object)
    out = np.full(len(text), -1, np.int64)
    out[np.isin(text, ["ad", "1", "1.0", "true"])] = 1
    out[np.isin(text, ["rec", "0", "0.0", "false"])] = 0
    return out


def as_source(values, null, probs: Problems) -> np.ndarray:
    out = _per_distinct(_source_codes, values)
    probs.add(null, "missing_required")
    probs.add(~null & (out < 0), "bad_source")
    return out


def coerce_meta(dtype: str, values, null, probs: Problems) -> np.ndarray:
    """An extra meta column as declared: float32, int64, or string keys hashed like the user key
    (missing: ``INT_MISSING``)."""
    if dtype == "float32":
        return as_numbers(values, null, probs, float32=True).astype(np.float32)
    if dtype == "int64":
        return as_integers(values, null, probs)
    keys = as_keys(values, null, probs)
    if keys.dtype != object:
        return keys
    missing = keys == ""
    keys = keys.copy()
    keys[missing] = "0"
    out = keys_to_int64(keys)
    out[missing] = INT_MISSING
    return out
