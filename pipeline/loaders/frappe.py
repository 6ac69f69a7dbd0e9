"""Frappe (context-aware app usage) in the libFM files of the NFM/AFN benchmark split.

Each line of ``frappe.{train,validation,test}.libfm`` is ``label idx:1 idx:1 ...`` with
label 1 / -1 (-1 -> click 0) and exactly one one-hot feature per field, in field order
(user, item, daytime, weekday, isweekend, homework, cost, weather, country, city). The
indexes are global (each field owns an ordered id range), so the i-th token is field i;
the loader checks that the indexes increase along the line and that every value is 1.
Each field keeps its global index as an int64 value. ``split`` says which file a row
came from (train / valid / test: the benchmark's 7:2:1 split). No timestamp.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.loaders.common import DatasetLoader, read_csv_chunks, require_file

PAGE = ("https://github.com/hexiangnan/neural_factorization_machine/tree/master/data/frappe "
        "(origin: https://www.baltrunas.info/context-aware)")
FIELDS = ["user_id", "item_id", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
          "country", "city"]
FILES = {"train": "frappe.train.libfm", "valid": "frappe.validation.libfm", "test": "frappe.test.libfm"}
SCHEMA = pa.schema([("click", pa.int64()), *[(f, pa.int64()) for f in FIELDS], ("split", pa.string())])


def _parse(chunk: pd.DataFrame, path, first: int, split: str) -> pd.DataFrame:
    """Labels {1,-1} -> {1,0}; "idx:1" tokens -> one int64 column per field."""
    label = chunk["label"]
    bad = ~label.isin(["1", "-1", "+1", "1.0", "-1.0"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}:{first + i}: label must be 1 or -1, got {label.iloc[i]!r}")
    out = {"click": (label.astype(float) > 0).astype("int64")}
    ids = np.empty((len(chunk), len(FIELDS)), dtype=np.int64)
    for j, field in enumerate(FIELDS):
        tokens = chunk[field]
        if tokens.isna().any():
            i = int(np.flatnonzero(tokens.isna().to_numpy())[0])
            raise ValueError(f"{path}:{first + i}: {j} features, expected {len(FIELDS)} ({', '.join(FIELDS)})")
        parts = tokens.str.split(":", n=1, expand=True).reindex(columns=[0, 1])
        index = pd.to_numeric(parts[0], errors="coerce")
        value = pd.to_numeric(parts[1], errors="coerce")
        bad = index.isna() | (value != 1) | (index < 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}:{first + i}: field {j + 1} ({field}) must look like 'index:1', "
                             f"got {tokens.iloc[i]!r}")
        ids[:, j] = index.to_numpy(dtype=np.int64)
    unordered = np.flatnonzero((np.diff(ids, axis=1) <= 0).any(axis=1))
    if len(unordered):
        raise ValueError(f"{path}:{first + unordered[0]}: feature indexes must increase along the line "
                         f"(the i-th token is field i), got {ids[unordered[0]].tolist()}")
    for j, field in enumerate(FIELDS):
        out[field] = ids[:, j]
    out["split"] = split
    return pd.DataFrame(out)


def read_frappe(src_dir: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    paths = {split: require_file(src_dir, name, "frappe", PAGE) for split, name in FILES.items()}

    def rows() -> Iterator[pd.DataFrame]:
        for split, path in paths.items():
            for first, chunk in read_csv_chunks(path, ["label", *FIELDS], sep=r"\s+", chunk_rows=chunk_rows,
                                                dtype={c: str for c in ["label", *FIELDS]}):
                yield _parse(chunk, path, first, split)

    return rows()


FRAPPE = DatasetLoader("frappe", read_frappe, SCHEMA, PAGE)
