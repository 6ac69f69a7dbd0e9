"""Sharded output: ``part-00000.parquet`` (or ``.csv``) files of exactly ``shard_rows`` rows
(the last one shorter). Chunks are buffered only until a shard is full, so a 10 M-row
log never sits in memory; shards are encoded on a background thread while the next
chunk is simulated (pyarrow releases the GIL).
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

LIST_DELIMITER = "|"  # list columns in CSV (preprocess_config's input.list_delimiter)


class ShardWriter:
    def __init__(self, directory: str, fmt: str, shard_rows: int, pool: concurrent.futures.Executor,
                 on_shard: Optional[Callable[[], None]] = None):
        self.directory, self.fmt, self.shard_rows = directory, fmt, shard_rows
        self.pool, self.on_shard = pool, on_shard
        self.paths: List[str] = []
        self._buffer: List[pa.Table] = []
        self._buffered = 0
        self._pending: List[concurrent.futures.Future] = []
        os.makedirs(directory, exist_ok=True)  # a fresh folder: simulate writes its output atomically

    def append(self, table: pa.Table) -> None:
        self._buffer.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self.shard_rows:
            full = pa.concat_tables(self._buffer)
            self._submit(full.slice(0, self.shard_rows))
            rest = full.slice(self.shard_rows)
            self._buffer, self._buffered = [rest], rest.num_rows

    def close(self) -> List[str]:
        """Writes the remainder (an empty shard if the log has no rows) and waits for all writes."""
        if self._buffered or not self.paths:
            self._submit(pa.concat_tables(self._buffer) if self._buffer else pa.table({}))
        for f in self._pending:
            f.result()
        return self.paths

    def _submit(self, table: pa.Table) -> None:
        path = os.path.join(self.directory, f"part-{len(self.paths):05d}.{self.fmt}")
        self.paths.append(path)
        if len(self._pending) >= 2:  # bound the memory held by queued shards
            self._pending.pop(0).result()
        self._pending.append(self.pool.submit(write_table, table.combine_chunks(), path, self.fmt))
        if self.on_shard:
            self.on_shard()


def write_table(table: pa.Table, path: str, fmt: str) -> None:
    if fmt == "parquet":
        strings = [f.name for f in table.schema if pa.types.is_string(f.type)
                   or (pa.types.is_list(f.type) and pa.types.is_string(f.type.value_type))]
        pq.write_table(table, path, compression="snappy", use_dictionary=strings)
    elif fmt == "csv":
        pacsv.write_csv(_flatten_lists(table), path)
    else:
        raise ValueError(f"unknown output format '{fmt}'")


def _flatten_lists(table: pa.Table) -> pa.Table:
    """List columns -> LIST_DELIMITER-joined strings (the raw CSV convention)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            col = table.column(i).combine_chunks()
            as_text = pa.ListArray.from_arrays(col.offsets, pc.cast(col.values, pa.string()))
            table = table.set_column(i, field.name, pc.binary_join(as_text, LIST_DELIMITER))
    return table
