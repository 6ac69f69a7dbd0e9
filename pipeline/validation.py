"""Vectorised validation of raw chunks: good rows in canonical form, bad rows quarantined.

Every check works on whole numpy columns (masks, no per-row Python on the good
path). A row with any problem is quarantined with the FIRST problem in check order
(features in config order, labels, user, source, weights, extra meta, split column)
as its ``field`` / ``reason``, and the list of all its problems.

Reasons: ``missing_required`` (a required feature, label, user, source, weight or
split column is null), ``wrong_type`` (not parseable as the declared dtype, e.g. a
word in a numeric column, 3.5 in an int64 column, a non-list in a list column),
``out_of_range`` (an integer beyond int64 where int64 is declared),
``nan`` / ``inf`` (a NaN or infinite number anywhere a number is read: NaN elements
of sequence_float / dense lists included, whereas *null* list elements are just
dropped), ``not_binary`` (label not 0 or 1), ``wrong_length`` (dense list length !=
``dim``), ``negative_weight``, ``bad_source`` (not ad / rec / 1 / 0),
``unknown_split`` (given split name not in ``split.ratios``), ``malformed`` (field
``_line``: a line the reader could not split into the columns, see
:mod:`pipeline.raw_io`); the job adds ``encode_error`` for a value an encoder rejects
despite validation.

Canonical columns handed to the encoders (good rows only):

* categorical int64 -> int64 with ``INT_MISSING`` for missing; categorical string ->
  int64 likewise when the raw column holds integers, else the keys of
  :func:`features.encoders.categorical_keys` (object, ``""`` = missing) — the same
  keys the vocabularies count; bools become 0 / 1;
* numeric -> float64 with NaN for missing, rounded through float32 for float32
  features (as the encoders round), so train statistics match what is encoded;
* sequences / dense -> :class:`pipeline.raw_io.ListColumn` of canonical elements
  (float32 for float32 features), null elements dropped (dense: kept as NaN -> 0.0);
* labels -> float32; meta -> int64 / float32 (extra meta dtypes: :data:`META_DTYPES`).

Meta columns: ``user_key`` = the raw user id when it is an integer (or the canonical
decimal string of one, e.g. "111" but not "0111" or "+111"), else FarmHash
Fingerprint64 of its UTF-8 key as int64, so ids that differ as strings stay different; ``source`` = 1 for
"ad", 0 for "rec"; weights as float32; ``extra_meta`` columns as declared, string
ones hashed like the user key (missing extra meta: ``INT_MISSING`` / NaN).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import farmhash
import numpy as np
import pandas as pd

from features.encoders import INT_MISSING, EncodeError, categorical_keys
from pipeline.config import ConfigError
from pipeline.preprocess_config import FeatureSpec, PreprocessConfig
from pipeline.raw_io import ListColumn, RawChunk

USER_KEY = "user_key"
USER_GROUP = "user_group"
SOURCE = "source"
META_DTYPES = ("int64", "float32", "string")
SPLIT_BY_TIME = -2  # split code of a row whose split the time cut points decide
UNASSIGNED = -1  # split code of a row whose split cannot be known (bad split column)

_INT_RE = r"\s*[+-]?\d+\s*"  # an integer written in decimal (int64 range checked apart)
_CANONICAL_INT_RE = r"0|-?[1-9]\d{0,18}"  # the decimal string str(int) gives: one string per integer
_INT64_LIMIT = 2.0 ** 63
MALFORMED_FIELD = "_line"  # the field of a row the reader could not split into columns
_NAN_WORDS = {"nan", "+nan", "-nan"}
_LIST_TYPES = ("sequence_vocab", "sequence_float", "dense")


@dataclasses.dataclass
class Problems:
    """(mask, reason) pairs of one check, in order."""

    items: List[Tuple[np.ndarray, str]] = dataclasses.field(default_factory=list)

    def add(self, mask: Optional[np.ndarray], reason: str) -> None:
        if mask is not None and mask.any():
            self.items.append((mask, reason))


@dataclasses.dataclass
class ValidatedChunk:
    """The outcome of validating one raw chunk.

    ``columns`` hold the good rows only; ``split_code`` / ``time`` are per good row;
    ``quarantine`` holds one JSON-able record per bad row (with its own split code).
    """

    key: Tuple[int, int, int]  # (source, file, first row in file): a stable sort key
    file: str
    rows: np.ndarray  # int64: index in the file of each good row
    columns: Dict[str, Any]
    split_code: np.ndarray  # int16 per good row (>= 0 split index, SPLIT_BY_TIME, UNASSIGNED)
    time: Optional[np.ndarray]  # float64 per good row (time split only)
    quarantine: List[dict]

    @property
    def num_rows(self) -> int:
        return len(self.rows)


# ---- column parsers: raw column -> canonical values + problems -------------------------------
def _as_numbers(values: np.ndarray, null: np.ndarray, probs: Problems, float32: bool = False) -> np.ndarray:
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


def _as_integers(values: np.ndarray, null: np.ndarray, probs: Problems) -> np.ndarray:
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
        x = _as_numbers(obj[rest], np.zeros(rest.size, bool), sub)
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


def _as_keys(values: np.ndarray, null: np.ndarray, probs: Problems) -> np.ndarray:
    """Categorical keys: int64 (INT_MISSING) for integer columns, else object keys ("" missing)."""
    kind = values.dtype.kind
    if kind in "iubf":
        return _as_integers(values, null, probs)
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


def _missing_keys(keys: np.ndarray) -> np.ndarray:
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


def _keys_to_int64(keys: np.ndarray) -> np.ndarray:
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


def _as_time(values: np.ndarray, null: np.ndarray, probs: Problems) -> np.ndarray:
    """Numbers as they are, datetimes (datetime64 or ISO strings) as seconds since the epoch."""
    if values.dtype.kind == "M":
        t = values.astype("datetime64[ns]").astype(np.int64).astype(np.float64) / 1e9
        t[null | np.isnat(values)] = np.nan
        return t
    sub = Problems()
    t = _as_numbers(values, null, sub)
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


def _list_elements(col: ListColumn, spec: FeatureSpec, probs_rows: Problems) -> ListColumn:
    """Canonical list elements (null elements dropped); row problems in ``probs_rows``."""
    etype = spec.encoding.get("type")
    n = len(col)
    if col.not_list is not None:
        probs_rows.add(col.not_list, "wrong_type")
    sub = Problems()
    if etype == "sequence_vocab":
        vals = (_as_integers if spec.dtype == "int64" else _as_keys)(col.values, col.null_values, sub)
        missing = _missing_keys(vals)
    else:
        vals = _as_numbers(col.values, col.null_values, sub, float32=spec.dtype == "float32")
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
    if etype == "dense":
        dim = spec.encoding.get("dim")
        if isinstance(dim, int):
            probs_rows.add(~col.null_rows & (col.lengths != dim), "wrong_length")
        keep = np.ones(len(vals), bool)  # dense keeps positions; NaN rows are already flagged
    else:
        keep = ~missing
    lengths = np.bincount(row_of[keep], minlength=n).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ListColumn(vals[keep], offsets, col.null_rows.copy(), np.zeros(int(keep.sum()), bool))


def _take(col, idx: np.ndarray):
    return col.take(idx) if isinstance(col, ListColumn) else col[idx]


# ---- the validator -------------------------------------------------------------------------
@dataclasses.dataclass
class _Check:
    field: str  # the name reported in quarantine records (raw column or feature)
    column: str  # raw column
    out: Optional[str]  # canonical output name (None: only validated)
    kind: str  # feature | label | user | source | weight | meta | time | given


class Validator:
    """Checks raw chunks against a PreprocessConfig (see the module docstring)."""

    def __init__(self, config: PreprocessConfig, split_names: Sequence[str]):
        self.config = config
        self.specs = {s.name: s for s in config.feature_specs()}
        self.split_names = list(split_names)
        checks: List[_Check] = [_Check(s.name, s.source or s.name, s.name, "feature") for s in self.specs.values()]
        checks += [_Check(lab, lab, lab, "label") for lab in config.labels]
        if config.user_column:
            checks.append(_Check(config.user_column, config.user_column, USER_KEY, "user"))
        if config.source_column:
            checks.append(_Check(config.source_column, config.source_column, SOURCE, "source"))
        checks += [_Check(w, w, w, "weight") for w in config.weight_columns]
        for name, dtype in config.extra_meta.items():
            if dtype not in META_DTYPES:
                raise ConfigError(f"extra_meta '{name}': dtype '{dtype}' not in {META_DTYPES}")
            checks.append(_Check(name, name, name, "meta"))
        split = config.split
        if split.method == "time":
            checks.append(_Check(split.time_column, split.time_column, None, "time"))
        elif split.method == "given":
            checks.append(_Check(split.given_column, split.given_column, None, "given"))
        self.checks = checks
        self.output_names = [c.out for c in checks if c.out]
        dup = sorted({n for n in self.output_names if self.output_names.count(n) > 1})
        if dup:
            raise ConfigError(f"output column name(s) {dup} are used twice among features, labels and meta "
                              f"columns ({USER_KEY!r} holds the user key, {SOURCE!r} the source); rename one")
        list_cols = {c.column for c in checks if c.kind == "feature"
                     and self.specs[c.field].encoding.get("type") in _LIST_TYPES}
        scalar_cols = {c.column for c in checks} - list_cols
        both = sorted(list_cols & scalar_cols)
        if both:
            raise ConfigError(f"raw column(s) {both} are read both as lists and as scalars")
        self.list_columns = sorted(list_cols)
        self.raw_columns = list(dict.fromkeys(c.column for c in checks))
        self._cum = None
        if split.method == "random":  # ratios are positive: checked by the job plan
            ratios = np.array([float(v) for v in split.ratios.values()])
            self._cum = np.cumsum(ratios / ratios.sum())
        self._split_seed = farmhash.fingerprint64(f"ctrflow-split:{split.seed}")

    # ---- split codes ---------------------------------------------------------------------
    def random_split(self, file: str, rows: np.ndarray) -> np.ndarray:
        """split index of (seed, file, row): SplitMix64 of the row key -> uniform [0, 1) -> ratio bin."""
        u = uniform_hash(self._split_seed ^ farmhash.fingerprint64(file), rows)
        return np.minimum(np.searchsorted(self._cum, u, side="right"), len(self._cum) - 1).astype(np.int16)

    def times(self, chunk: RawChunk) -> np.ndarray:
        """The time split's column of a raw chunk as float64, NaN where missing or unparseable."""
        column = self.config.split.time_column
        return _as_time(chunk.columns[column], chunk.nulls[column], Problems())

    # ---- validation ------------------------------------------------------------------------
    def validate(self, chunk: RawChunk, key: Tuple[int, int, int], fixed_split: Optional[int] = None
                 ) -> ValidatedChunk:
        """Validate one chunk; ``fixed_split`` (an extra input's split) skips the split column."""
        n = chunk.num_rows
        rows = chunk.row_offset + np.arange(n, dtype=np.int64)
        canon: Dict[str, Any] = {}
        problems: List[Tuple[str, np.ndarray, str]] = []
        time = None
        split_code = np.full(n, fixed_split if fixed_split is not None else UNASSIGNED, np.int16)
        if fixed_split is None and self.config.split.method == "random":
            split_code = self.random_split(chunk.file, rows)
        if chunk.malformed is not None:
            problems.append((MALFORMED_FIELD, np.array([t is not None for t in chunk.malformed]), "malformed"))
        for check in self.checks:
            if fixed_split is not None and check.kind in ("time", "given"):
                continue
            probs = Problems()
            values = chunk.columns[check.column]
            null = chunk.nulls.get(check.column)
            if check.kind == "feature":
                canon[check.out] = self._feature(self.specs[check.field], values, null, probs)
            elif check.kind in ("label", "weight"):
                x = _as_numbers(values, null, probs)
                probs.add(null, "missing_required")
                if check.kind == "label":
                    probs.add(~np.isnan(x) & (x != 0) & (x != 1), "not_binary")
                else:
                    probs.add(x < 0, "negative_weight")
                with np.errstate(over="ignore"):  # non-finite rows are flagged (and dropped) already
                    canon[check.out] = np.nan_to_num(x).astype(np.float32)
            elif check.kind == "user":
                keys = _as_keys(values, null, probs)
                probs.add(null | _missing_keys(keys), "missing_required")
                canon[check.out] = _keys_to_int64(keys)
            elif check.kind == "source":
                canon[check.out] = _as_source(values, null, probs)
            elif check.kind == "meta":
                canon[check.out] = self._meta(self.config.extra_meta[check.field], values, null, probs)
            elif check.kind == "time":
                time = _as_time(values, null, probs)
                probs.add(null, "missing_required")
                split_code[:] = SPLIT_BY_TIME
                split_code[np.isnan(time)] = UNASSIGNED
            else:  # given
                keys = _as_keys(values, null, probs)
                probs.add(null, "missing_required")
                split_code = _given_split(keys, self.split_names, probs)
            problems += [(check.field, mask, reason) for mask, reason in probs.items]
        bad = np.zeros(n, bool)
        for _, mask, _ in problems:
            bad |= mask
        if not bad.any():
            return ValidatedChunk(key, chunk.file, rows, canon, split_code, time, [])
        good = np.flatnonzero(~bad)
        return ValidatedChunk(
            key=key, file=chunk.file, rows=rows[good],
            columns={k: _take(v, good) for k, v in canon.items()},
            split_code=split_code[good], time=None if time is None else time[good],
            quarantine=self._records(chunk, rows, bad, problems, split_code, time))

    def _feature(self, spec: FeatureSpec, values, null, probs: Problems):
        etype = spec.encoding.get("type")
        if etype in _LIST_TYPES:
            if not isinstance(values, ListColumn):
                raise ConfigError(f"feature '{spec.name}': raw column '{spec.source or spec.name}' was not "
                                  "read as a list")
            col = _list_elements(values, spec, probs)
            if spec.required:
                probs.add(col.null_rows, "missing_required")
            return col
        if etype in ("vocab", "hash"):
            out = (_as_integers if spec.dtype == "int64" else _as_keys)(values, null, probs)
            if spec.required:  # an empty string is a missing key (as the encoders see it)
                probs.add(null | _missing_keys(out), "missing_required")
            return out
        out = _as_numbers(values, null, probs, float32=spec.dtype == "float32")
        if spec.dtype == "float32":  # round as the encoders do, so statistics match encoding
            with np.errstate(over="ignore"):
                out = out.astype(np.float32).astype(np.float64)
        if spec.dtype == "int64":  # flags non-integral values
            _integral_floats(out, np.isnan(out), probs, np.full(len(out), INT_MISSING, np.int64),
                             skip=_flagged(probs, len(out)))
        if spec.required:
            probs.add(null, "missing_required")
        return out

    @staticmethod
    def _meta(dtype: str, values, null, probs: Problems) -> np.ndarray:
        if dtype == "float32":
            return _as_numbers(values, null, probs, float32=True).astype(np.float32)
        if dtype == "int64":
            return _as_integers(values, null, probs)
        keys = _as_keys(values, null, probs)
        if keys.dtype != object:
            return keys
        missing = keys == ""
        keys = keys.copy()
        keys[missing] = "0"
        out = _keys_to_int64(keys)
        out[missing] = INT_MISSING
        return out

    def _records(self, chunk: RawChunk, rows, bad, problems, split_code, time) -> List[dict]:
        """One JSON-able quarantine record per bad row (first problem + all problems)."""
        idx = np.flatnonzero(bad)
        per_row: Dict[int, List[Tuple[str, str]]] = {int(i): [] for i in idx}
        for field, mask, reason in problems:
            for i in np.flatnonzero(mask):
                per_row[int(i)].append((field, reason))
        out = []
        for i in idx:
            i = int(i)
            probs = per_row[i]
            out.append({
                "file": chunk.file, "row_index": int(rows[i]),
                "split_code": int(split_code[i]), "time": None if time is None else float(time[i]),
                "field": probs[0][0], "reason": probs[0][1],
                "value": (chunk.malformed[i] if probs[0][0] == MALFORMED_FIELD
                          else _raw_value(chunk, self._column_of(probs[0][0]), i)),
                "problems": [{"field": f, "reason": r} for f, r in probs],
                "row": {c: _raw_value(chunk, c, i) for c in self.raw_columns},
            })
        return out

    def _column_of(self, field: str) -> str:
        for c in self.checks:
            if c.field == field:
                return c.column
        return field


def uniform_hash(seed: int, rows: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, row): SplitMix64 finaliser, top 53 bits."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) + (rows.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _source_codes(values: np.ndarray) -> np.ndarray:
    """1 for ad, 0 for rec, -1 for anything else (compared as stripped lower-case text)."""
    text = pd.Series(values.astype(object)).astype(str).str.strip().str.lower().to_numpy(object)
    out = np.full(len(text), -1, np.int64)
    out[np.isin(text, ["ad", "1", "1.0", "true"])] = 1
    out[np.isin(text, ["rec", "0", "0.0", "false"])] = 0
    return out


def _as_source(values, null, probs: Problems) -> np.ndarray:
    out = _per_distinct(_source_codes, values)
    probs.add(null, "missing_required")
    probs.add(~null & (out < 0), "bad_source")
    return out


def _given_split(keys: np.ndarray, names: List[str], probs: Problems) -> np.ndarray:
    keys = keys.astype(str) if keys.dtype.kind != "O" else keys
    idx = pd.Index(names).get_indexer(pd.Series(keys).astype(str))
    missing = (keys == "") | (keys == str(INT_MISSING))
    probs.add((idx < 0) & ~missing, "unknown_split")
    return np.where(idx < 0, UNASSIGNED, idx).astype(np.int16)


def _raw_value(chunk: RawChunk, column: str, i: int):
    col = chunk.columns.get(column)
    if col is None:
        return None
    if isinstance(col, ListColumn):
        v = col.row(i)
        return None if v is None else [_json_value(x) for x in v]
    null = chunk.nulls.get(column)
    if null is not None and null[i]:
        return None
    return _json_value(col[i])


def _json_value(v):
    """A JSON-safe value: numpy scalars as Python, non-finite floats as strings."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def quarantine_line(record: dict, split: str) -> str:
    """The JSON line written to ``quarantine/<split>.jsonl``."""
    rec = {k: v for k, v in record.items() if k not in ("split_code", "time")}
    rec["split"] = split
    return json.dumps(rec, sort_keys=True, allow_nan=False)
