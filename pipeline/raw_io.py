"""Reading raw impression files in chunks: Parquet (pyarrow), CSV and JSON lines.

The Beam job never handles one row at a time: every file is cut into *read units*
(a Parquet row group, or a whole CSV / JSONL file), and a unit is read as chunks of
at most ``batch_size`` rows. A chunk holds typed numpy columns plus explicit null
masks, so validation can tell a missing value (Parquet / JSON ``null``, an empty CSV
field) from a real NaN, which Arrow keeps apart but pandas would merge.

Column conventions (:class:`RawChunk`):

* scalar column -> numpy array (int64 / float64 / bool / datetime64 / object) and a
  bool null mask; nulls of integer and bool columns are filled with 0 so big ids stay
  exact (the mask says which entries are missing);
* list column -> :class:`ListColumn` (flat element values, row offsets, null rows,
  null elements): Parquet / JSON lists, or ``list_delimiter``-joined CSV strings.

CSV is read with every column as text (only ``""`` is null), so a stray word in a
numeric column reaches validation as a value instead of failing the whole file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.encoders import FlatLists

CSV_BLOCK_BYTES = 1 << 22  # pyarrow's streaming CSV reader block size


class RawInputError(ValueError):
    """A raw input that cannot be read as configured (names the file)."""


class ListColumn(FlatLists):
    """A ragged column: row ``i`` holds ``values[offsets[i]:offsets[i+1]]`` (typed numpy
    elements, ``offsets[0] == 0``), with ``null_values`` always set and ``not_list``
    marking JSON values that are not lists. The encoders take it as it is (the flat form
    of :class:`features.encoders.FlatLists`), so no step builds per-row Python lists."""

    def take(self, rows: np.ndarray) -> "ListColumn":
        """The rows ``rows`` (int indices, in that order) as a new ListColumn."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lens = self.offsets[rows], self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        idx = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        not_list = None if self.not_list is None else self.not_list[rows]
        return ListColumn(self.values[idx], offsets, self.null_rows[rows], self.null_values[idx], not_list)

    def row(self, i: int) -> Optional[list]:
        """Row ``i`` as a Python list (None when missing), for quarantine records."""
        if self.null_rows[i]:
            return None
        a, b = self.offsets[i], self.offsets[i + 1]
        vals = self.values[a:b].tolist()
        return [None if m else v for v, m in zip(vals, self.null_values[a:b])]


@dataclasses.dataclass
class RawChunk:
    """Up to ``batch_size`` consecutive rows of one file."""

    file: str  # path relative to the input root (stable across machines)
    row_offset: int  # index in the file of the chunk's first row
    columns: Dict[str, object]  # name -> np.ndarray | ListColumn
    nulls: Dict[str, np.ndarray]  # name -> bool mask (scalar columns)

    @property
    def num_rows(self) -> int:
        for col in self.columns.values():
            return len(col)
        return 0


@dataclasses.dataclass(frozen=True)
class ReadUnit:
    """What one Beam element reads: a Parquet row group or a whole text file."""

    path: str
    file: str  # relative name (for quarantine records and the random split key)
    row_group: Optional[int] = None
    row_offset: int = 0


# ---- finding and opening files (local paths directly, gs:// s3:// ... through Beam) -------
_EXTENSIONS = {"parquet": (".parquet", ".pq"), "csv": (".csv", ".tsv", ".txt"), "jsonl": (".jsonl", ".json", ".ndjson")}


def is_remote(path: str) -> bool:
    return "://" in path


def open_binary(path: str):
    """A binary file object for a local path or any filesystem Beam knows (gs://, s3://, hdfs://)."""
    if not is_remote(path):
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def arrow_source(path: str):
    """What pyarrow readers open: a local path as is (native I/O), else a Beam file object."""
    return contextlib.nullcontext(path) if not is_remote(path) else open_binary(path)


def list_files(path: str, fmt: str) -> List[str]:
    """The input files of ``path`` (a file, a directory or a glob), sorted by name.

    A directory yields its files with the format's extension (``.parquet``, ``.csv``,
    ``.jsonl`` / ``.json``), hidden and ``_``-prefixed files excluded.
    """
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        pattern = path if any(c in path for c in "*?[") else path.rstrip("/") + "/*"
        found = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
        files = [f for f in found if f == path or _is_data_file(f.rsplit("/", 1)[-1], fmt)]
        return _nonempty(sorted(files), path, fmt)
    if os.path.isdir(path):
        files = [os.path.join(path, n) for n in os.listdir(path) if _is_data_file(n, fmt)]
    elif os.path.isfile(path):
        files = [path]
    else:
        files = [p for p in glob.glob(path) if os.path.isfile(p)]
    return _nonempty(sorted(os.path.abspath(f) for f in files), path, fmt)


def _is_data_file(name: str, fmt: str) -> bool:
    return name.lower().endswith(_EXTENSIONS[fmt]) and not name.startswith((".", "_"))


def _nonempty(files: List[str], path: str, fmt: str) -> List[str]:
    if not files:
        raise RawInputError(f"no {fmt} input files match '{path}'")
    return files


def relative_names(files: Sequence[str]) -> List[str]:
    """Names relative to the files' common directory (their split / quarantine keys)."""
    dirs = [f.split("/")[:-1] for f in files]
    common = 0
    while all(len(d) > common and d[common] == dirs[0][common] for d in dirs):
        common += 1
    return ["/".join(f.split("/")[common:]) for f in files]


def plan_units(path: str, file: str, fmt: str) -> List[ReadUnit]:
    """The read units of one file: one per Parquet row group, else the whole file."""
    if fmt != "parquet":
        return [ReadUnit(path, file)]
    try:
        with arrow_source(path) as src:
            meta = pq.ParquetFile(src).metadata
    except (OSError, pa.ArrowException) as exc:
        raise RawInputError(f"{path}: not a readable Parquet file: {exc}") from None
    units, offset = [], 0
    for g in range(meta.num_row_groups):
        units.append(ReadUnit(path, file, g, offset))
        offset += meta.row_group(g).num_rows
    return units


# ---- reading ------------------------------------------------------------------------
def read_unit(unit: ReadUnit, fmt: str, columns: Sequence[str], list_columns: Sequence[str],
              batch_size: int, csv_delimiter: str = ",", list_delimiter: str = "|") -> Iterator[RawChunk]:
    """Chunks of at most ``batch_size`` rows holding ``columns`` (``list_columns`` as lists)."""
    if fmt == "parquet":
        yield from _read_parquet(unit, columns, list_columns, batch_size)
    elif fmt == "csv":
        yield from _read_csv(unit, columns, list_columns, batch_size, csv_delimiter, list_delimiter)
    elif fmt == "jsonl":
        yield from _read_jsonl(unit, columns, list_columns, batch_size)
    else:
        raise RawInputError(f"unknown raw format '{fmt}'")


def _missing_columns(unit: ReadUnit, have: Sequence[str], want: Sequence[str]) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise RawInputError(f"{unit.path}: lacks the column(s) {missing} that the config reads; "
                            f"it has {list(have)}")


def _read_parquet(unit, columns, list_columns, batch_size) -> Iterator[RawChunk]:
    """Row-group batches; string columns are read as dictionaries (one Python str per distinct
    value instead of one per row)."""
    with arrow_source(unit.path) as src:
        schema = pq.ParquetFile(src).schema
    _missing_columns(unit, schema.to_arrow_schema().names, columns)
    strings = [schema.column(i).path for i in range(len(schema))
               if schema.column(i).physical_type == "BYTE_ARRAY" and schema.column(i).path.split(".")[0] in columns]
    with arrow_source(unit.path) as src:
        pf = pq.ParquetFile(src, read_dictionary=strings)
        offset = unit.row_offset
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[unit.row_group],
                                     columns=list(columns), use_threads=False):
            yield _arrow_chunk(unit, offset, batch, list_columns)
            offset += batch.num_rows


def _read_csv(unit, columns, list_columns, batch_size, delimiter, list_delimiter) -> Iterator[RawChunk]:
    names = _csv_header(unit.path, delimiter)
    _missing_columns(unit, names, columns)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                   include_columns=list(columns), null_values=[""],
                                   strings_can_be_null=True, quoted_strings_can_be_null=True)
    offset = 0
    try:
        with arrow_source(unit.path) as src:
            reader = pacsv.open_csv(src, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                                    parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                    convert_options=convert)
            for block in reader:
                for start in range(0, block.num_rows, batch_size):
                    batch = block.slice(start, batch_size)
                    for name in list_columns:
                        i = batch.schema.get_field_index(name)
                        batch = batch.set_column(i, name, pc.split_pattern(batch.column(i), list_delimiter))
                    yield _arrow_chunk(unit, offset, batch, list_columns)
                    offset += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise RawInputError(f"{unit.path} (rows from {offset}): cannot read as CSV: {exc}") from None


def _csv_header(path: str, delimiter: str) -> List[str]:
    with open_binary(path) as fh:
        line = fh.readline().decode("utf-8").rstrip("\r\n")
    if not line:
        raise RawInputError(f"{path}: empty CSV file (a header row is required)")
    table = pacsv.read_csv(io.BytesIO(line.encode() + b"\n"),
                           parse_options=pacsv.ParseOptions(delimiter=delimiter),
                           read_options=pacsv.ReadOptions(autogenerate_column_names=False))
    return table.schema.names


def _read_jsonl(unit, columns, list_columns, batch_size) -> Iterator[RawChunk]:
    """JSON lines read with :mod:`json` (NaN / Infinity literals become real NaN / inf)."""
    rows: List[dict] = []
    offset = 0
    with io.TextIOWrapper(open_binary(unit.path), encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RawInputError(f"{unit.path}:{lineno}: not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise RawInputError(f"{unit.path}:{lineno}: each line must hold a JSON object")
            rows.append(obj)
            if len(rows) == batch_size:
                yield _json_chunk(unit, offset, rows, columns, list_columns)
                offset += len(rows)
                rows = []
    if rows:
        yield _json_chunk(unit, offset, rows, columns, list_columns)


# ---- Arrow / Python values -> typed numpy ------------------------------------------------
def _arrow_chunk(unit: ReadUnit, offset: int, batch, list_columns) -> RawChunk:
    cols, nulls = {}, {}
    for name in batch.schema.names:
        arr = batch.column(name)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if name in list_columns:
            cols[name] = _arrow_list(unit, name, arr)
        else:
            if _is_list_type(arr.type):
                raise RawInputError(f"{unit.path}: column '{name}' holds lists but the config reads a scalar")
            cols[name], nulls[name] = _arrow_scalar(arr)
    return RawChunk(unit.file, offset, cols, nulls)


def _is_list_type(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _arrow_scalar(arr: pa.Array):
    """(values, null mask) of a scalar Arrow array; int / bool nulls filled with 0."""
    t = arr.type
    null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), bool)
    if pa.types.is_dictionary(t):  # distinct values converted once, rows share them
        words, _ = _arrow_scalar(arr.dictionary)
        idx = pc.fill_null(arr.indices, 0).to_numpy(zero_copy_only=False) if arr.null_count \
            else arr.indices.to_numpy(zero_copy_only=False)
        values = words[idx] if len(words) else np.full(len(arr), None, dtype=object)
        if arr.null_count and values.dtype == object:
            values[null] = None
        return values, null
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        if arr.null_count:
            arr = pc.fill_null(arr, pa.scalar(0 if pa.types.is_integer(t) else False, t))
        values = arr.to_numpy(zero_copy_only=False)
        if values.dtype.kind == "u":
            values = values.astype(np.int64)
    elif pa.types.is_floating(t):
        values = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    elif pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        values = arr.cast(pa.string()).to_numpy(zero_copy_only=False)
    else:  # strings, timestamps, dates, decimals...
        values = arr.to_numpy(zero_copy_only=False)
    return values, null


def _arrow_list(unit: ReadUnit, name: str, arr: pa.Array) -> ListColumn:
    t = arr.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        arr = arr.cast(pa.list_(t.value_type))
    elif not pa.types.is_list(arr.type):
        raise RawInputError(f"{unit.path}: column '{name}' must hold lists (type {t}); in CSV a "
                            "list is one field joined by input.list_delimiter")
    null_rows = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), bool)
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    flat = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
    values, null_values = _arrow_scalar(flat)
    return ListColumn(values, offsets - offsets[0], null_rows, null_values)


def _json_chunk(unit: ReadUnit, offset: int, rows: List[dict], columns, list_columns) -> RawChunk:
    cols, nulls = {}, {}
    for name in columns:
        vals = [r.get(name) for r in rows]
        if name in list_columns:
            cols[name] = _python_lists(vals)
        else:
            cols[name], nulls[name] = _python_scalars(vals)
    return RawChunk(unit.file, offset, cols, nulls)


def _python_scalars(vals: list):
    """Typed numpy + null mask: bool / int64 / float64 when every value is a bool / an int /
    a number, else an object array (validation parses it)."""
    null = np.fromiter((v is None for v in vals), dtype=bool, count=len(vals))
    present = [v for v in vals if v is not None]
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        return np.array([bool(v) for v in vals], dtype=bool), null
    if kinds and kinds <= {int} and all(-(1 << 63) <= v < (1 << 63) for v in present):
        return np.array([0 if v is None else v for v in vals], dtype=np.int64), null
    if kinds and kinds <= {int, float}:
        return np.array([np.nan if v is None else v for v in vals], dtype=np.float64), null
    arr = np.empty(len(vals), dtype=object)
    arr[:] = vals
    return arr, null


def _python_lists(vals: list) -> ListColumn:
    """JSON values -> ListColumn; a value that is not a list is marked ``not_list``
    (and reads as a missing list) for validation to quarantine."""
    null_rows = np.fromiter((v is None for v in vals), dtype=bool, count=len(vals))
    not_list = np.fromiter((v is not None and not isinstance(v, list) for v in vals), dtype=bool,
                           count=len(vals))
    lengths = np.fromiter((len(v) if isinstance(v, list) else 0 for v in vals), dtype=np.int64,
                          count=len(vals))
    flat = [x for v in vals if isinstance(v, list) for x in v]
    offsets = np.zeros(len(vals) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values, null_values = _python_scalars(flat)
    return ListColumn(values, offsets, null_rows | not_list, null_values,
                      not_list if not_list.any() else None)
