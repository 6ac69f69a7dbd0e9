"""Criteo Display Advertising Challenge (Kaggle): ``train.txt``, 45,840,617 rows, no header.

Tab-separated: label, I1..I13 (integer counts; may be empty or negative), C1..C26
(32-bit hashes as 8 hex characters; may be empty). Empty fields become nulls. Output:
click (the label), I1..I13 (int64), C1..C26 (string), row_id (0-based line index: the
rows are chronologically ordered, so row_id can drive a time split). There is no user id.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.loaders.common import DatasetLoader, check_binary, read_csv_chunks, require_file

PAGE = ("https://www.kaggle.com/c/criteo-display-ad-challenge (files: "
        "https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz)")
INT_COLUMNS = [f"I{i}" for i in range(1, 14)]
CAT_COLUMNS = [f"C{i}" for i in range(1, 27)]
SCHEMA = pa.schema([("click", pa.int64()), *[(c, pa.int64()) for c in INT_COLUMNS],
                    *[(c, pa.string()) for c in CAT_COLUMNS], ("row_id", pa.int64())])


def read_criteo(src_dir: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    path = require_file(src_dir, "train.txt", "criteo", PAGE)
    dtype = {"click": "Int64", **{c: "Int64" for c in INT_COLUMNS}, **{c: str for c in CAT_COLUMNS}}
    chunks = read_csv_chunks(path, ["click", *INT_COLUMNS, *CAT_COLUMNS], sep="\t",
                             chunk_rows=chunk_rows, dtype=dtype)

    def rows() -> Iterator[pd.DataFrame]:
        for first, chunk in chunks:
            check_binary(chunk, ["click"], path, first)
            chunk["row_id"] = np.arange(first - 1, first - 1 + len(chunk), dtype=np.int64)
            yield chunk

    return rows()


CRITEO = DatasetLoader("criteo", read_criteo, SCHEMA, PAGE)
