"""The ads table of the Rec4Ad transforms (``transforms/pseudo_ad_mapping.py``,
``transforms/inverse_propensity.py``): reading chosen columns of it, canonical values, and the
impression ratio of Eq. 2.

The table is one row per ad (the simulator's ``ads.parquet``: ``ad_id, campaign_id, item_id,
bid, created_at`` and the logged ``impressions`` / ``candidate_sessions``), a Parquet or CSV
file (``.csv`` / ``.csv.gz``; types inferred), local or on any filesystem Beam knows. It is
read on the launcher, only the columns a transform names, and its values are put in the
canonical form of the log column they stand for (``pipeline/beam/coercion.py``), so a table
value and a log value of the same ad compare equal and encode alike.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.encoders import categorical_keys
from models.options import OptionError
from pipeline.beam.coercion import Problems, as_integers, as_numbers, coerce_feature, coerce_meta
from pipeline.config import ConfigError
from pipeline.raw_io import RawInputError, arrow_scalar, csv_header, arrow_source, file_errors, open_text_input

Column = Tuple[np.ndarray, np.ndarray]  # (values, null mask)
IR_GROUPS = 12  # the paper's Fig. 4: ads sorted by impression ratio, in 12 equal groups
IR_QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


PARQUET, CSV = (".parquet", ".pq"), (".csv", ".csv.gz")


def check_path(path, where: str) -> None:
    """At config load: ``path`` names a Parquet or CSV file (``where``: the option, for the error)."""
    if not isinstance(path, str) or not path.lower().endswith(PARQUET + CSV):
        raise ConfigError(f"{where} = {path!r}: expected the path of a Parquet ({', '.join(PARQUET)}) or CSV "
                          f"({', '.join(CSV)}) file of the ads")


def check_transform_options(transform, config, where: str, columns: str) -> None:
    """At config load, for a transform reading the ads table: ``ads_table`` given and a Parquet /
    CSV path, and the config's ``source_column`` set (the transform tells ad from rec rows);
    ``columns`` describes the table's columns it needs, for the error."""
    path = transform.options["ads_table"]
    if path is None:
        raise OptionError(f"{where}.ads_table: missing; expected the path of the ads table (Parquet or CSV with "
                          f"{columns}) (transform '{transform.name}')")
    check_path(path, f"{where}.ads_table")
    if not config.source_column:
        raise OptionError(f"{where}: transform '{transform.name}' needs source_column (ad / rec rows) in the config")


def read_ads_table(path: str, columns: Sequence[str], where: str) -> Dict[str, Column]:
    """Columns ``columns`` (and no other) of the ads table at ``path`` (checked by :func:`check_path`),
    as (values, null mask); ``where`` names the option in errors (``transforms[0].ads_table``)."""
    columns = list(dict.fromkeys(columns))
    try:
        if path.lower().endswith(PARQUET):
            with file_errors(path, "a Parquet file"), arrow_source(path) as src:
                have = pq.ParquetFile(src).schema_arrow.names
                _check_columns(path, have, columns, where)
                table = pq.read_table(src, columns=columns)
        else:
            _check_columns(path, csv_header(path, ","), columns, where)
            with file_errors(path, "CSV"), open_text_input(path) as fh:
                table = pacsv.read_csv(fh, convert_options=pacsv.ConvertOptions(include_columns=columns))
    except RawInputError as exc:
        raise RawInputError(f"{where}: {exc}") from None
    return {c: arrow_scalar(table.column(c).combine_chunks()) for c in columns}


def _check_columns(path: str, have: Sequence[str], want: Sequence[str], where: str) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise RawInputError(f"{path} lacks the column(s) {missing} (options of {where.rsplit('.', 1)[0]}); "
                            f"it has {list(have)}")


def log_column(config, name: str):
    """What the log's canonical column ``name`` is: ("feature", FeatureSpec), ("meta", dtype) or
    None (not a scalar feature nor an extra meta column)."""
    for spec in config.feature_specs():
        if spec.name == name:
            from features.encodings import encoding_of

            return None if encoding_of(spec).list_valued else ("feature", spec)
    if name in config.extra_meta:
        return "meta", config.extra_meta[name]
    return None


def is_numeric(kind) -> bool:
    """Whether a :func:`log_column` kind holds numbers (a numeric feature, int64 / float32 meta)."""
    if kind is None:
        return False
    what, spec = kind
    return spec in ("int64", "float32") if what == "meta" else spec.kind == "numeric"


def canonical(kind, values: np.ndarray, null: np.ndarray, column: str, path: str) -> np.ndarray:
    """Table values in the canonical form of a log column of ``kind`` (:func:`log_column`); a
    value the log's validation would reject raises RawInputError naming the file, column, row."""
    probs = Problems()
    what, spec = kind
    out = coerce_feature(spec, values, null, probs) if what == "feature" else coerce_meta(spec, values, null, probs)
    if probs.items:
        mask, reason = probs.items[0]
        row = int(np.flatnonzero(mask)[0])
        raise RawInputError(f"{path}: column '{column}', row {row}: {reason} ({values[row]!r}) for the log "
                            f"column it fills")
    return out


def like(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Canonical ``values`` in the dtype of a canonical log column ``target``: categorical keys read
    as int64 from one file and as strings from another meet as strings or integers."""
    if values.dtype == target.dtype or values.dtype.kind == "f":
        return values.astype(target.dtype, copy=False)
    if target.dtype == object:
        return categorical_keys(values)[0]
    return as_integers(values, values == "", Problems())


def lookup_keys(values: np.ndarray) -> np.ndarray:
    """Categorical values as their canonical string keys ("" = missing), for look-ups that must
    match 123 and "123" (``features.encoders.categorical_keys``)."""
    return categorical_keys(values)[0]


# ---- the impression ratio (Eq. 2) ---------------------------------------------------------------
def impression_ratios(impressions: Column, candidates: Column, path: str, names: Tuple[str, str]
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(impressions, candidate sessions, IR) per ad: IR(a) = impressions / candidate sessions
    (NaN for an ad without candidate sessions). Negative or non-numeric counts raise RawInputError."""
    out = []
    for (values, null), name in zip((impressions, candidates), names):
        probs = Problems()
        x = as_numbers(values, null, probs)
        probs.add(null, "missing")
        probs.add(x < 0, "negative")
        if probs.items:
            mask, reason = probs.items[0]
            row = int(np.flatnonzero(mask)[0])
            raise RawInputError(f"{path}: column '{name}', row {row}: {reason} value {values[row]!r}; "
                                "expected a count >= 0")
        out.append(x)
    imp, cand = out
    with np.errstate(divide="ignore", invalid="ignore"):
        ir = np.where(cand > 0, imp / np.where(cand > 0, cand, 1), np.nan)
    return imp, cand, ir


def ir_summary(ir: np.ndarray) -> Dict[str, object]:
    """The IR statistics of stats.json over the ads shown at least once (the ads of the ads log, as
    the paper's Fig. 4): count, quantiles, the mean IR of :data:`IR_GROUPS` equal groups of ads
    sorted by IR and the top / bottom group ratio; and how many ads of the table were never shown
    or never a candidate."""
    known = np.sort(ir[~np.isnan(ir) & (ir > 0)])
    out: Dict[str, object] = {"ads": int(len(ir)), "ads_without_candidates": int(np.isnan(ir).sum()),
                              "ads_never_shown": int((ir == 0).sum()), "ads_shown": int(len(known))}
    if not len(known):
        return out
    groups = [float(g.mean()) for g in np.array_split(known, min(IR_GROUPS, len(known)))]
    out.update(mean=float(known.mean()),
               quantiles={f"{q:g}": float(np.quantile(known, q)) for q in IR_QUANTILES},
               group_means=groups,
               top_bottom_ratio=groups[-1] / groups[0])
    return out


def ir_table(ad_keys: np.ndarray, imp: np.ndarray, cand: np.ndarray, ir: np.ndarray, ad_column: str) -> bytes:
    """The per-ad file ``impression_ratio.parquet`` as bytes: [ad, impressions, candidate_sessions,
    impression_ratio]."""
    import pyarrow as pa

    table = pa.table({ad_column: pa.array(ad_keys.tolist()), "impressions": pa.array(imp),
                      "candidate_sessions": pa.array(cand), "impression_ratio": pa.array(ir)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def item_ads(items: np.ndarray, created: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item -> ads index: (distinct item keys sorted, CSR starts [n_items + 1], the order of
    the ads by (item, creation time, table row)): the ads of item j, oldest first, are
    ``order[starts[j]:starts[j + 1]]``."""
    keys, item_of = np.unique(items, return_inverse=True)
    order = np.lexsort((np.arange(len(items)), created, item_of))
    starts = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(np.bincount(item_of, minlength=len(keys)), out=starts[1:])
    return keys, starts, order

