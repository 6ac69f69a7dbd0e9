"""Validation of raw chunks: good rows in canonical form, bad rows quarantined with their reasons.

A row with any problem is quarantined with the FIRST problem in check order (features in
config order, labels, user, source, weights, extra meta, split column) as its ``field`` /
``reason``, and the list of all its problems. The per-column coercions and most reasons
are in :mod:`pipeline.beam.coercion`; the row checks here add ``missing_required`` (a
required feature, label, user, source, weight or split column is null), ``not_binary``
(label not 0 or 1), ``negative_weight``, ``unknown_split`` (given split name not in
``split.ratios``) and ``malformed`` (field ``_line``: a line the reader could not split into
the columns, see :mod:`pipeline.raw_io`); the job adds ``encode_error`` for a value an
encoder rejects despite validation.

Canonical columns (good rows only): features as :mod:`pipeline.beam.coercion` describes,
labels float32, ``user_key`` int64 (:func:`pipeline.beam.coercion.keys_to_int64`),
``source`` 1 for ad / 0 for rec, weights float32, ``extra_meta`` columns as declared
(:data:`META_DTYPES`; string ones hashed like the user key; missing: ``INT_MISSING`` / NaN).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from features.encodings import encoding_of
from pipeline.beam.coercion import (Problems, as_keys, as_numbers, as_source, as_time,
                                    coerce_feature, coerce_meta, keys_to_int64, missing_keys)
from pipeline.beam.splits import SPLIT_BY_TIME, UNASSIGNED, RandomSplit, assign, given_split
from pipeline.config import ConfigError
from pipeline.preprocess_config import PreprocessConfig
from pipeline.raw_io import ListColumn, RawChunk

USER_KEY = "user_key"
USER_GROUP = "user_group"
SOURCE = "source"
META_DTYPES = ("int64", "float32", "string")
MALFORMED_FIELD = "_line"  # the field of a row the reader could not split into columns


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
    split_code: np.ndarray  # per good row: >= 0 split index, SPLIT_BY_TIME, UNASSIGNED (see resolve_splits)
    time: Optional[np.ndarray]  # float64 per good row (time split only)
    quarantine: List[dict]

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def resolve_splits(self, cuts: Optional[np.ndarray]) -> "ValidatedChunk":
        """This chunk with final split indexes: time-split rows placed by the cut points, in
        ``split_code`` and as ``split`` of every quarantine record."""
        records = [dict(r, split=int(assign(np.array([r["split_code"]]),
                                            np.array([np.nan if r["time"] is None else r["time"]]), cuts)[0]))
                   for r in self.quarantine]
        return dataclasses.replace(self, split_code=assign(self.split_code, self.time, cuts), quarantine=records)


def take_column(col, idx: np.ndarray):
    """Rows ``idx`` of a canonical column (numpy array or ListColumn)."""
    return col.take(idx) if isinstance(col, ListColumn) else col[idx]


# ---- the validator -------------------------------------------------------------------------
@dataclasses.dataclass
class _Check:
    field: str  # the name reported in quarantine records (raw column or feature)
    column: str  # raw column
    out: Optional[str]  # canonical output name (None: only validated)
    kind: str  # feature | filled (a transform computes it) | label | user | source | weight | meta | time | given


class Validator:
    """Checks raw chunks against a PreprocessConfig (see the module docstring)."""

    def __init__(self, config: PreprocessConfig, split_names: Sequence[str], filled: Sequence[str] = ()):
        """``filled``: raw columns a transform computes (``Transform.filled_columns``): not read; the
        features reading them get their canonical missing value here, the transform fills them in."""
        self.config = config
        self.specs = {s.name: s for s in config.feature_specs()}
        self.split_names = list(split_names)
        checks: List[_Check] = [_Check(s.name, s.source or s.name, s.name,
                                       "filled" if (s.source or s.name) in filled else "feature")
                                for s in self.specs.values()]
        for c in checks:
            if c.kind == "filled" and self.specs[c.field].required:
                raise ConfigError(f"feature '{c.field}' reads column '{c.column}', which a transform computes: it "
                                  "cannot be required (the transform decides what a row without a value gets)")
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
                     and encoding_of(self.specs[c.field]).list_valued}
        read = [c for c in checks if c.kind != "filled"]
        scalar_cols = {c.column for c in read} - list_cols
        both = sorted(list_cols & scalar_cols)
        if both:
            raise ConfigError(f"raw column(s) {both} are read both as lists and as scalars")
        self.list_columns = sorted(list_cols)
        self.raw_columns = list(dict.fromkeys(c.column for c in read))
        self.random_split = RandomSplit(split.ratios, split.seed) if split.method == "random" else None

    def times(self, chunk: RawChunk) -> np.ndarray:
        """The time split's column of a raw chunk as float64, NaN where missing or unparseable."""
        column = self.config.split.time_column
        return as_time(chunk.columns[column], chunk.nulls[column], Problems())

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
            if check.kind == "filled":  # missing until its transform fills it in
                canon[check.out] = coerce_feature(self.specs[check.field], np.zeros(n, np.int64), np.ones(n, bool),
                                                  Problems())
                continue
            values = chunk.columns[check.column]
            null = chunk.nulls.get(check.column)
            if check.kind == "feature":
                canon[check.out] = coerce_feature(self.specs[check.field], values, null, probs)
            elif check.kind in ("label", "weight"):
                x = as_numbers(values, null, probs)
                probs.add(null, "missing_required")
                if check.kind == "label":
                    probs.add(~np.isnan(x) & (x != 0) & (x != 1), "not_binary")
                else:
                    probs.add(x < 0, "negative_weight")
                with np.errstate(over="ignore"):  # non-finite rows are flagged (and dropped) already
                    canon[check.out] = np.nan_to_num(x).astype(np.float32)
            elif check.kind == "user":
                keys = as_keys(values, null, probs)
                probs.add(null | missing_keys(keys), "missing_required")
                canon[check.out] = keys_to_int64(keys)
            elif check.kind == "source":
                canon[check.out] = as_source(values, null, probs)
            elif check.kind == "meta":
                canon[check.out] = coerce_meta(self.config.extra_meta[check.field], values, null, probs)
            elif check.kind == "time":
                time = as_time(values, null, probs)
                probs.add(null, "missing_required")
                split_code[:] = SPLIT_BY_TIME
                split_code[np.isnan(time)] = UNASSIGNED
            else:  # given
                keys = as_keys(values, null, probs)
                probs.add(null, "missing_required")
                split_code = given_split(keys, self.split_names, probs)
            problems += [(check.field, mask, reason) for mask, reason in probs.items]
        bad = np.zeros(n, bool)
        for _, mask, _ in problems:
            bad |= mask
        if not bad.any():
            return ValidatedChunk(key, chunk.file, rows, canon, split_code, time, [])
        good = np.flatnonzero(~bad)
        return ValidatedChunk(
            key=key, file=chunk.file, rows=rows[good],
            columns={k: take_column(v, good) for k, v in canon.items()},
            split_code=split_code[good], time=None if time is None else time[good],
            quarantine=self._records(chunk, rows, bad, problems, split_code, time))

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

