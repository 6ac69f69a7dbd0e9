"""Reading raw impression files in chunks: Parquet (pyarrow), CSV and JSON lines (plain or gzip).

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

Bad rows and bad files are kept apart. A row the format can still delimit but not read
(a CSV line with the wrong number of fields, a JSON line that is not an object) becomes
a *malformed* row: all its columns null and its text in :attr:`RawChunk.malformed`, so
validation quarantines it and the rows after it keep their indices. A file that cannot
be read at all (missing permissions, not Parquet, a truncated gzip stream, bytes that
are not UTF-8 where text is expected) raises :class:`RawInputError` naming the file and
the row group or line where the format allows.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import io
import json
import os
import re
import zlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.encoders import FlatLists
from features.errors import UserError

CSV_BLOCK_BYTES = 1 << 22  # pyarrow's streaming CSV reader block size
MALFORMED_TEXT_CHARS = 500  # how much of a malformed line its quarantine record keeps
_INT64_MAX = np.iinfo(np.int64).max


class RawInputError(UserError):
    """A raw input that cannot be read as configured (names the file, and the row group or
    line where the format allows)."""


_RUNNING_SUFFIX = re.compile(r" \[while running '[^']*'\]$")


def _user_error_classes() -> dict:
    out, todo = {}, [UserError]
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


def worker_input_error(exc: BaseException) -> Optional[UserError]:
    """The :class:`~features.errors.UserError` (an unreadable input, a bad encoding spec, ...)
    a Beam worker raised, as the runner passes it on: the error itself (in-process runners
    add " [while running 'Step']") or its traceback text inside another exception (worker
    processes, remote runners, or an error class Beam could not rebuild); None for any other
    error. The message is kept; the class too where it takes the message alone."""
    if isinstance(exc, UserError):
        message, cls = str(exc), type(exc)
    else:
        classes = _user_error_classes()
        found = re.search(rf"\b({'|'.join(map(re.escape, classes))}): (.+?)$", str(exc), re.M)
        if found is None:
            return None
        message, cls = found.group(2), classes[found.group(1)]
    message = _RUNNING_SUFFIX.sub("", message)
    try:
        return cls(message)
    except TypeError:  # a class whose constructor takes its parts (EncodeError)
        return UserError(message)


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
    malformed: Optional[np.ndarray] = None  # object [n]: a malformed row's text, else None

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
_GZIP = ".gz"  # text inputs may be gzip-compressed: name.csv.gz, name.jsonl.gz


def is_remote(path: str) -> bool:
    return "://" in path


def open_binary(path: str):
    """A binary file object for a local path or any filesystem Beam knows (gs://, s3://, hdfs://)."""
    if not is_remote(path):
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


@contextlib.contextmanager
def open_text_input(path: str):
    """A binary stream of a CSV / JSONL file's bytes, gunzipped when the name ends in .gz."""
    with open_binary(path) as raw:
        if path.lower().endswith(_GZIP):
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                yield fh
        else:
            yield raw


# errors of reading a file that is unreadable or corrupt (not of a single row)
_FILE_ERRORS = (OSError, EOFError, UnicodeDecodeError, zlib.error, pa.ArrowException)


@contextlib.contextmanager
def file_errors(path: str, what: str, where: Callable[[], str] = lambda: ""):
    """Re-raise an I/O or decoding error of ``path`` as :class:`RawInputError` naming the file,
    ``where`` in it (e.g. the row group or line) and what it should have been."""
    try:
        yield
    except RawInputError:
        raise
    except _FILE_ERRORS as exc:
        raise RawInputError(f"{path}{where()}: cannot read it as {what}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "the file does not exist (any more)"
    if isinstance(exc, UnicodeDecodeError):
        return f"bytes that are not UTF-8 ({exc.reason})"
    return str(exc) or type(exc).__name__


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
    lower = name.lower()
    if fmt != "parquet" and lower.endswith(_GZIP):
        lower = lower[:-len(_GZIP)]
    return lower.endswith(_EXTENSIONS[fmt]) and not name.startswith((".", "_"))


def _nonempty(files: List[str], path: str, fmt: str) -> List[str]:
    if not files:
        raise RawInputError(f"no {fmt} input files match '{path}'")
    return files


def list_inputs(paths: Sequence[str], fmt: str, name: str = "input.path") -> List[Tuple[str, str]]:
    """(file, relative name) of every file of several paths / globs (:func:`list_files` each),
    relative to the common folder of them all, so rows of ``ads/part-0.parquet`` and
    ``rec/part-0.parquet`` keep distinct (file, row) keys. A path matching no file, or a file
    matched by two paths (its rows would be read twice), raises :class:`RawInputError` naming
    ``name[i]`` (just ``name`` for a single path)."""
    seen: Dict[str, int] = {}
    for i, path in enumerate(paths):
        label = f"{name}[{i}]" if len(paths) > 1 else name
        try:
            files = list_files(path, fmt)
        except RawInputError as exc:
            raise RawInputError(f"{label}: {exc}") from None
        for f in files:
            if f in seen:
                raise RawInputError(f"{label} = '{path}' matches {f}, which {name}[{seen[f]}] matches too: "
                                    "its rows would be read twice; make the paths disjoint")
            seen[f] = i
    files = list(seen)
    return list(zip(files, relative_names(files)))


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
    with file_errors(path, "a Parquet file"), arrow_source(path) as src:
        meta = pq.ParquetFile(src).metadata
    units, offset = [], 0
    for g in range(meta.num_row_groups):
        units.append(ReadUnit(path, file, g, offset))
        offset += meta.row_group(g).num_rows
    return units


# ---- reading ------------------------------------------------------------------------
def read_unit(unit: ReadUnit, fmt: str, columns: Sequence[str], list_columns: Sequence[str],
              batch_size: int, csv_delimiter: str = ",", list_delimiter: str = "|") -> Iterator[RawChunk]:
    """Chunks of at most ``batch_size`` rows holding ``columns`` (``list_columns`` as lists);
    a file that cannot be read raises :class:`RawInputError` naming it."""
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
    offset = unit.row_offset
    where = lambda: f" (row group {unit.row_group}, rows from {offset})"  # noqa: E731
    with file_errors(unit.path, "a Parquet file", where):
        with arrow_source(unit.path) as src:
            schema = pq.ParquetFile(src).schema
        _missing_columns(unit, schema.to_arrow_schema().names, columns)
        strings = [schema.column(i).path for i in range(len(schema))
                   if schema.column(i).physical_type == "BYTE_ARRAY" and schema.column(i).path.split(".")[0] in columns]
        with arrow_source(unit.path) as src:
            pf = pq.ParquetFile(src, read_dictionary=strings)
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[unit.row_group],
                                         columns=list(columns), use_threads=False):
                chunk = _arrow_chunk(unit, offset, batch, list_columns)
                yield chunk
                offset += batch.num_rows


def _read_csv(unit, columns, list_columns, batch_size, delimiter, list_delimiter) -> Iterator[RawChunk]:
    """Chunks of a CSV file; a line with the wrong number of fields becomes a malformed row
    (pyarrow's invalid-row handler skips it and reports its row number, which a
    single-threaded reader always knows, so the rows around it keep their indices)."""
    names = csv_header(unit.path, delimiter)
    _missing_columns(unit, names, columns)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                   include_columns=list(columns), null_values=[""],
                                   strings_can_be_null=True, quoted_strings_can_be_null=True)
    skipped: Dict[int, str] = {}  # data row index -> text of the malformed line

    def on_invalid(row) -> str:
        if row.number is None:  # pyarrow could not say which row: the file is unreadable
            return "error"
        skipped[row.number - 2] = row.text[:MALFORMED_TEXT_CHARS]  # row 1 is the header
        return "skip"

    parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    cursor = 0  # data row index of the next row
    where = lambda: f" (line {cursor + 2} or after)"  # noqa: E731
    with file_errors(unit.path, "CSV", where), open_text_input(unit.path) as fh:
        try:
            reader = pacsv.open_csv(fh, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
                                    parse_options=parse, convert_options=convert)
            for block in reader:
                for name in list_columns:
                    i = block.schema.get_field_index(name)
                    block = block.set_column(i, name, pc.split_pattern(block.column(i), list_delimiter))
                for chunk in _rows_with_malformed(unit, block, cursor, skipped, columns, list_columns, batch_size):
                    yield chunk
                    cursor = chunk.row_offset + chunk.num_rows
            yield from _rows_with_malformed(unit, None, cursor, skipped, columns, list_columns, batch_size)
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc):
                line = first_non_utf8_line(unit.path)
                raise RawInputError(f"{unit.path} (line {line}): cannot read it as CSV: bytes that are "
                                    f"not UTF-8 ({exc})") from None
            raise


def _rows_with_malformed(unit: ReadUnit, block, cursor: int, skipped: Dict[int, str], columns,
                         list_columns, batch_size: int) -> Iterator[RawChunk]:
    """The chunks of ``block`` (the next parsed rows, or None at the end of the file) starting
    at data row ``cursor``, with the malformed rows ``skipped`` at their own indices: a
    malformed row is a chunk of its own, good rows are cut at it and at ``batch_size``."""
    good = 0 if block is None else block.num_rows
    bad = sorted(i for i in skipped if i >= cursor)
    taken = 0
    while taken < good or (bad and (block is None or bad[0] < cursor + good - taken)):
        if bad and bad[0] == cursor:
            yield _malformed_chunk(unit, cursor, skipped.pop(bad.pop(0)), columns, list_columns)
            cursor += 1
            continue
        run = good - taken
        if bad:
            run = min(run, bad[0] - cursor)
        run = min(run, batch_size)
        yield _arrow_chunk(unit, cursor, block.slice(taken, run), list_columns)
        taken += run
        cursor += run


def _malformed_chunk(unit: ReadUnit, row: int, text: str, columns, list_columns) -> RawChunk:
    """One malformed row: every column null, the raw text kept for its quarantine record."""
    cols, nulls = {}, {}
    for name in columns:
        if name in list_columns:
            cols[name] = ListColumn(np.zeros(0, object), np.zeros(2, np.int64), np.ones(1, bool), np.zeros(0, bool))
        else:
            cols[name], nulls[name] = np.full(1, None, dtype=object), np.ones(1, bool)
    return RawChunk(unit.file, row, cols, nulls, np.array([text], dtype=object))


def first_non_utf8_line(path: str) -> Optional[int]:
    """The 1-based number of the first line of a text input that is not UTF-8 (None if all are)."""
    with open_text_input(path) as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return None


def csv_header(path: str, delimiter: str) -> List[str]:
    with file_errors(path, "CSV", lambda: " (line 1, the header)"), open_text_input(path) as fh:
        line = fh.readline().decode("utf-8").rstrip("\r\n")
    if not line:
        raise RawInputError(f"{path}: empty CSV file (a header row is required)")
    table = pacsv.read_csv(io.BytesIO(line.encode() + b"\n"),
                           parse_options=pacsv.ParseOptions(delimiter=delimiter),
                           read_options=pacsv.ReadOptions(autogenerate_column_names=False))
    return table.schema.names


def _read_jsonl(unit, columns, list_columns, batch_size) -> Iterator[RawChunk]:
    """JSON lines read with :mod:`json` (NaN / Infinity literals become real NaN / inf); a
    line that is not a JSON object is a malformed row, blank lines are no rows."""
    rows: List[dict] = []
    bad: Dict[int, str] = {}  # index in ``rows`` -> text of a malformed line
    offset, lineno = 0, 0
    with file_errors(unit.path, "JSON lines", lambda: f" (line {lineno})"), open_text_input(unit.path) as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                bad[len(rows)] = line.rstrip("\r\n")[:MALFORMED_TEXT_CHARS]
                obj = {}
            rows.append(obj)
            if len(rows) == batch_size:
                yield _json_chunk(unit, offset, rows, columns, list_columns, bad)
                offset += len(rows)
                rows, bad = [], {}
    if rows:
        yield _json_chunk(unit, offset, rows, columns, list_columns, bad)


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
            cols[name], nulls[name] = arrow_scalar(arr)
    return RawChunk(unit.file, offset, cols, nulls)


def _is_list_type(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def arrow_scalar(arr: pa.Array):
    """(values, null mask) of a scalar Arrow array; int / bool nulls filled with 0."""
    t = arr.type
    null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(len(arr), bool)
    if pa.types.is_dictionary(t):  # distinct values converted once, rows share them
        words, _ = arrow_scalar(arr.dictionary)
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
            values = _unsigned(values)
    elif pa.types.is_floating(t):
        values = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    elif pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        values = arr.cast(pa.string()).to_numpy(zero_copy_only=False)
    else:  # strings, timestamps, dates, decimals...
        values = arr.to_numpy(zero_copy_only=False)
    return values, null


def _unsigned(values: np.ndarray) -> np.ndarray:
    """Unsigned integers as int64 when they fit, else as exact Python ints (object), which
    validation flags as out of range instead of letting them wrap around to negatives."""
    if not values.size or values.max() <= _INT64_MAX:
        return values.astype(np.int64)
    out = np.empty(len(values), dtype=object)
    out[:] = values.tolist()
    return out


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
    values, null_values = arrow_scalar(flat)
    return ListColumn(values, offsets - offsets[0], null_rows, null_values)


def _json_chunk(unit: ReadUnit, offset: int, rows: List[dict], columns, list_columns,
                bad: Dict[int, str]) -> RawChunk:
    cols, nulls = {}, {}
    for name in columns:
        vals = [r.get(name) for r in rows]
        if name in list_columns:
            cols[name] = _python_lists(vals)
        else:
            cols[name], nulls[name] = _python_scalars(vals)
    malformed = None
    if bad:
        malformed = np.full(len(rows), None, dtype=object)
        for i, text in bad.items():
            malformed[i] = text
    return RawChunk(unit.file, offset, cols, nulls, malformed)


def _python_scalars(vals: list):
    """Typed numpy + null mask: bool / int64 / float64 when every value is a bool / an int64 /
    a number (float64 only when that keeps every int exact), else an object array
    (validation parses it; integers beyond int64 stay exact there, to be flagged)."""
    null = np.fromiter((v is None for v in vals), dtype=bool, count=len(vals))
    present = [v for v in vals if v is not None]
    kinds = {type(v) for v in present}
    if kinds == {bool}:
        return np.array([bool(v) for v in vals], dtype=bool), null
    if kinds and kinds <= {int} and all(-(1 << 63) <= v < (1 << 63) for v in present):
        return np.array([0 if v is None else v for v in vals], dtype=np.int64), null
    if kinds and kinds <= {int, float} and all(type(v) is float or abs(v) <= 1 << 53 for v in present):
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
