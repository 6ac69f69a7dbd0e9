"""What every dataset loader shares: file look-up, chunked CSV reading, joins, Parquet shards.

A loader turns a public dataset's files into ctrflow's raw format: Parquet shards
``part-00000.parquet, part-00001.parquet, ...`` of one flat table (one row per
impression, list columns for multi-valued fields) that ``ctrflow preprocess`` reads.
Big files are read in chunks of ``chunk_rows`` rows, so memory stays at one chunk plus
the small side tables (user / item features) whatever the dataset's size.
"""
from __future__ import annotations

import dataclasses
import glob
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.outputs import OutputError

SHARD_PATTERN = "part-{:05d}.parquet"
_OVERFLOW = "__overflow__"  # sentinel column: a non-empty value means a line had too many fields


# ---- finding the input files -------------------------------------------------------------
def require_file(src_dir: str, filename: str, dataset: str, page: str) -> Path:
    """``src_dir/filename``, or FileNotFoundError naming the file and the download page."""
    path = Path(src_dir) / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: expected file '{path}' is missing; download the dataset from {page} "
            f"and pass the folder holding '{filename}' as --src")
    return path


def require_glob(src_dir: str, pattern: str, dataset: str, page: str) -> List[Path]:
    """Files of ``src_dir`` matching ``pattern``, sorted by name; FileNotFoundError when none."""
    paths = sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(str(src_dir)), pattern)))
    if not paths:
        raise FileNotFoundError(
            f"{dataset}: no file matching '{Path(src_dir) / pattern}'; download the dataset from "
            f"{page} and pass the folder holding those files as --src")
    return paths


# ---- reading ---------------------------------------------------------------------------------
def read_header(path: Path, sep: str, required: Sequence[str], encoding: str = "utf-8") -> List[str]:
    """The column names of ``path``'s header line (stripped); ValueError naming any missing."""
    with open(path, encoding=encoding) as fh:
        names = [n.strip() for n in fh.readline().rstrip("\r\n").split(sep)]
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: header lacks column(s) {missing}; it has {names}")
    return names


def read_csv_chunks(path: Path, names: Sequence[str], *, sep: str, chunk_rows: int,
                    header: bool = False, dtype: Optional[Dict[str, Any]] = None,
                    encoding: str = "utf-8", na_values: Sequence[str] = ("",),
                    ) -> Iterator[Tuple[int, pd.DataFrame]]:
    """Yield ``(first_line_number, chunk)`` for a delimited file with the columns ``names``.

    Only the strings in ``na_values`` count as missing (a category spelt "NA" stays a value).
    A line with more fields than ``names`` raises ValueError naming the file and line:
    pandas silently truncates such a line when it starts a chunk, so an extra sentinel
    column catches it. Line numbers are 1-based and count the header line (pandas skips
    blank lines, so a file with blank lines reports later lines a little early).
    """
    first = 2 if header else 1
    reader = pd.read_csv(
        path, sep=sep, header=None, skiprows=1 if header else 0, names=[*names, _OVERFLOW],
        dtype={**(dtype or {}), _OVERFLOW: str}, keep_default_na=False, na_values=list(na_values),
        encoding=encoding, chunksize=chunk_rows, index_col=False)
    try:
        for chunk in reader:
            bad = np.flatnonzero(chunk[_OVERFLOW].notna().to_numpy())
            if len(bad):
                raise ValueError(f"{path}:{first + bad[0]}: more than the {len(names)} expected fields "
                                 f"({', '.join(names)})")
            chunk = chunk.drop(columns=_OVERFLOW).reset_index(drop=True)
            yield first, chunk
            first += len(chunk)
    except (ValueError, pd.errors.ParserError) as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path} (rows from line {first}): {exc}") from None
    finally:
        reader.close()


def read_csv_table(path: Path, names: Sequence[str], **kwargs) -> pd.DataFrame:
    """A small side table (user or item features) read whole with :func:`read_csv_chunks`."""
    chunks = [c for _, c in read_csv_chunks(path, names, chunk_rows=1_000_000, **kwargs)]
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=list(names))


def check_binary(chunk: pd.DataFrame, columns: Iterable[str], path: Path, first_line: int) -> None:
    """ValueError naming file, line, column and value unless every value is 0 or 1."""
    for col in columns:
        values = chunk[col]
        bad = ~values.isin([0, 1]) | values.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}:{first_line + i}: column '{col}' must be 0 or 1, got {values.iloc[i]!r}")


# ---- joining side tables ---------------------------------------------------------------------
def index_by(table: pd.DataFrame, key: str, path: Path) -> pd.DataFrame:
    """``table`` indexed by its unique, non-null ``key`` column (ValueError naming a bad key)."""
    keys = table[key]
    if keys.isna().any():
        raise ValueError(f"{path}: key '{key}' is empty on data row {int(np.flatnonzero(keys.isna())[0]) + 1}")
    dup = keys.duplicated()
    if dup.any():
        raise ValueError(f"{path}: key '{key}' = {keys[dup].iloc[0]!r} appears more than once")
    if pd.api.types.is_integer_dtype(keys):
        keys = keys.astype("int64")  # a plain int64 index: fast look-ups from int64 chunk keys
    return table.drop(columns=key).set_index(pd.Index(keys, name=key))


def lookup_join(chunk: pd.DataFrame, table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Left join of ``chunk`` with ``table`` (indexed by ``key``); unmatched rows get nulls.

    ``reindex`` reuses the index's hash table across chunks, unlike ``merge``, which would
    hash the whole side table again for every chunk.
    """
    right = table.reindex(chunk[key].to_numpy()).reset_index(drop=True)
    return pd.concat([chunk.reset_index(drop=True), right], axis=1)


# ---- writing ----------------------------------------------------------------------------------
class ShardWriter:
    """Writes chunks as Parquet shards of exactly ``shard_rows`` rows (the last one smaller).

    Shards are written under temporary names and renamed to ``part-*.parquet`` only when
    every row was written. The folder must hold no shards: :func:`pipeline.loaders.load_dataset`
    gives it a fresh temp folder that replaces the output only when complete
    (``features.outputs``), so nothing of an earlier run is deleted here.
    """

    def __init__(self, out_dir: str, schema: pa.Schema, shard_rows: int):
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.out_dir = Path(out_dir)
        if any(self.out_dir.glob("part-*.parquet")):
            raise OutputError(f"'{out_dir}' already holds part-*.parquet shards; write a dataset with "
                              f"load_dataset (ctrflow load), which replaces an earlier output atomically")
        self.schema = schema
        self.shard_rows = shard_rows
        self.rows = 0
        self._tmp_paths: List[Path] = []
        self._writer: Optional[pq.ParquetWriter] = None
        self._in_shard = 0

    def write(self, chunk: pd.DataFrame) -> None:
        missing = [n for n in self.schema.names if n not in chunk.columns]
        if missing:
            raise ValueError(f"chunk lacks the column(s) {missing} of the output schema")
        table = pa.Table.from_pandas(chunk[self.schema.names], schema=self.schema, preserve_index=False)
        start = 0
        while start < table.num_rows:
            if self._writer is None:
                self._open()
            take = min(self.shard_rows - self._in_shard, table.num_rows - start)
            self._writer.write_table(table.slice(start, take))
            self._in_shard += take
            self.rows += take
            start += take
            if self._in_shard == self.shard_rows:
                self._close_shard()

    def _open(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / (".inprogress-" + SHARD_PATTERN.format(len(self._tmp_paths)))
        self._tmp_paths.append(path)
        self._writer = pq.ParquetWriter(str(path), self.schema, compression="snappy")
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self) -> List[str]:
        """Give the shards their final names; returns the shard paths."""
        self._close_shard()
        final = []
        for i, tmp in enumerate(self._tmp_paths):
            path = self.out_dir / SHARD_PATTERN.format(i)
            tmp.rename(path)
            final.append(str(path))
        return final

    def abort(self) -> None:
        self._close_shard()
        for tmp in self._tmp_paths:
            tmp.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class DatasetLoader:
    """One public dataset: ``read(src_dir, chunk_rows, **options)`` yields DataFrame chunks
    with exactly the columns of ``schema``; calling the loader writes them as shards.

    ``read`` checks its input files eagerly (before returning the chunk iterator), so a
    missing file fails before anything is written.
    """

    name: str
    read: Callable[..., Iterator[pd.DataFrame]]
    schema: pa.Schema
    page: str  # where to download the files

    def options(self) -> Dict[str, Any]:
        """The loader's options with their defaults (beyond src_dir and chunk_rows)."""
        params = list(inspect.signature(self.read).parameters.values())[2:]
        return {p.name: p.default for p in params}

    def __call__(self, src_dir: str, out_dir: str, shard_rows: int = 500_000,
                 chunk_rows: int = 100_000, **options) -> Dict[str, Any]:
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            raise ValueError(f"dataset '{self.name}': unknown option(s) {unknown}; "
                             f"known: {self.options()}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        src_dir, out_dir = os.path.expanduser(str(src_dir)), os.path.expanduser(str(out_dir))
        chunks = self.read(src_dir, chunk_rows, **options)
        writer = ShardWriter(out_dir, self.schema, shard_rows)
        try:
            for chunk in chunks:
                writer.write(chunk)
            if writer.rows == 0:
                raise ValueError(f"dataset '{self.name}': no rows read from '{src_dir}'")
            files = writer.commit()
        except BaseException:
            writer.abort()
            raise
        return {"rows": writer.rows, "columns": list(self.schema.names), "files": files}
