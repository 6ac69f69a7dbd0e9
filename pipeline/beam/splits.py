"""Splits: which split every row goes to (random, time, given, extra inputs).

During validation a row gets a split *code*: its split index (random and given splits, extra
inputs), :data:`SPLIT_BY_TIME` (the time cut points decide, once they are known) or
:data:`UNASSIGNED` (a bad split value). :func:`assign` turns codes into final split indexes.

* random: a row goes to split k when SplitMix64(seed, file, row) / 2^64 falls in the k-th
  interval of the normalized ratios (:class:`RandomSplit`), stable across runs and runners;
* time: cut points at the cumulative ratios of a bottom-k sample of the time column
  (:func:`time_cuts`), earliest rows in the first split;
* given: the split column holds the split name (:func:`given_split`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import farmhash
import numpy as np
import pandas as pd

from features.encoders import INT_MISSING
from pipeline.beam.coercion import Problems

SPLIT_BY_TIME = -2  # split code of a row whose split the time cut points decide
UNASSIGNED = -1  # split code of a row whose split cannot be known (bad split column)
UNASSIGNED_SPLIT = "unassigned"  # accounting / quarantine name of rows without a known split


def uniform_hash(seed: int, rows: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, row): SplitMix64 finaliser, top 53 bits."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) + (rows.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class RandomSplit:
    """Split index of (seed, file, row): SplitMix64 of the row key -> uniform [0, 1) -> ratio bin.
    Ratios are positive (``pipeline.preprocess_config.SplitConfig``, checked at load)."""

    def __init__(self, ratios: Dict[str, float], seed: int):
        r = np.array([float(v) for v in ratios.values()])
        self._cum = np.cumsum(r / r.sum())
        self._seed = farmhash.fingerprint64(f"ctrflow-split:{seed}")

    def __call__(self, file: str, rows: np.ndarray) -> np.ndarray:
        u = uniform_hash(self._seed ^ farmhash.fingerprint64(file), rows)
        return np.minimum(np.searchsorted(self._cum, u, side="right"), len(self._cum) - 1).astype(np.int16)


def given_split(keys: np.ndarray, names: List[str], probs: Problems) -> np.ndarray:
    """Split codes from the split names in a given-split column (``unknown_split`` for others)."""
    keys = keys.astype(str) if keys.dtype.kind != "O" else keys
    idx = pd.Index(names).get_indexer(pd.Series(keys).astype(str))
    missing = (keys == "") | (keys == str(INT_MISSING))
    probs.add((idx < 0) & ~missing, "unknown_split")
    return np.where(idx < 0, UNASSIGNED, idx).astype(np.int16)


def time_cuts(sample: Tuple[np.ndarray, np.ndarray], ratios: Dict[str, float]) -> np.ndarray:
    """Cut points of the time split: value at index ceil(q * n) of the sorted sample for each
    cumulative ratio q (earliest rows in the first split); rows with t < cut_1 -> split 0."""
    s = np.sort(sample[1])
    r = np.array([float(x) for x in ratios.values()])
    q = np.cumsum(r / r.sum())[:-1]
    idx = np.ceil(q * len(s) - 1e-9).astype(np.int64)
    return np.array([s[i] if i < len(s) else np.inf for i in idx], dtype=np.float64)


def assign(codes: np.ndarray, times: Optional[np.ndarray], cuts: Optional[np.ndarray]) -> np.ndarray:
    """Final split index per row: fixed codes as they are, time rows by the cut points."""
    out = codes.astype(np.int64)
    by_time = codes == SPLIT_BY_TIME
    if by_time.any():
        out[by_time] = np.searchsorted(cuts, times[by_time], side="right")
    return out


def split_name(names: List[str], code: int) -> str:
    """The name of split index ``code`` (:data:`UNASSIGNED_SPLIT` for any other code)."""
    return names[int(code)] if 0 <= int(code) < len(names) else UNASSIGNED_SPLIT
