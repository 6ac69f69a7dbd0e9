"""Training-split statistics: the counts, samples and moments the encodings are built from.

Per chunk, :func:`chunk_train_stats` computes what ``features.encoders.build_feature``
needs from the train rows (``features.encoders.analyzers_needed``: vocabulary counts,
quantile samples for bucket boundaries and MNSE ranges, moments for standardizing) and
the rows per user (head users); :class:`TrainStatsFn` merges the partials. The time
split's cut points come from a bottom-k sample of the time column (:class:`SampleFn`).
Every merge is order-independent or done in chunk-key order, so the statistics are the
same on every runner and worker count.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import apache_beam as beam
import farmhash
import numpy as np
import pandas as pd

from features import encoders as E
from pipeline.beam.splits import uniform_hash
from pipeline.beam.validation import USER_KEY, ValidatedChunk

SAMPLE_SIZE = 100_000  # rows kept by the bottom-k sample behind quantiles and time cut points


def _count_keys(values: np.ndarray) -> pd.Series:
    """Counts of canonical categorical keys (int64 with INT_MISSING, or object with ""),
    indexed by the key as a string (the vocabulary's key form)."""
    if values.dtype == object:
        values = values[values != ""]
    else:
        values = values[values != E.INT_MISSING]
    vc = pd.Series(values).value_counts(sort=False)
    vc.index = vc.index.astype(str)
    return vc


def _sum_counts(parts: List[pd.Series]) -> pd.Series:
    """One Series summing count Series (a hash group-by in C, not a Python loop)."""
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts).groupby(level=0, sort=False).sum()


def bottom_k(priority: np.ndarray, values: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` (priority, value) pairs of smallest priority, ties at the cut by value: a
    uniform sample without replacement whose merge is order-independent (bottom-k sketch)."""
    if len(priority) <= k:
        return priority, values
    kth = np.partition(priority, k - 1)[k - 1]
    keep = np.flatnonzero(priority < kth)
    ties = np.flatnonzero(priority == kth)
    keep = np.concatenate([keep, ties[np.argsort(values[ties], kind="stable")[:k - len(keep)]]])
    return priority[keep], values[keep]


class TrainStats:
    """Accumulator of the train statistics ``features.encoders.build_feature`` needs.

    counts: {feature: count Series by key}; samples: {feature: [(priority, value)]}, a
    bottom-k sample (a uniform sample of the non-missing values whose priorities are
    hashes of (file, row), so it is the same whatever the bundling); moments: per chunk
    (count, mean, M2), merged in chunk-key order at the end (Chan et al.'s pairwise
    update), so the float sums are the same on every runner; users: rows per user key.
    Parts are kept as lists and reduced in bulk (:meth:`compact`), so merging many chunk
    partials costs pandas / numpy work, not a Python loop per key.
    """

    def __init__(self):
        self.rows = 0
        self.counts: Dict[str, List[pd.Series]] = {}
        self.samples: Dict[str, List[Tuple[np.ndarray, np.ndarray]]] = {}
        self.moments: Dict[str, Dict[tuple, Tuple[int, float, float]]] = {}
        self.users: List[pd.Series] = []

    def merge(self, other: "TrainStats") -> "TrainStats":
        self.rows += other.rows
        for f, parts in other.counts.items():
            self.counts.setdefault(f, []).extend(parts)
        for f, parts in other.samples.items():
            self.samples.setdefault(f, []).extend(parts)
        for f, m in other.moments.items():
            self.moments.setdefault(f, {}).update(m)
        self.users.extend(other.users)
        return self.compact(bound=64)

    def compact(self, bound: int = 1) -> "TrainStats":
        """Reduce every list longer than ``bound`` parts (samples: over 4 x SAMPLE_SIZE values)."""
        for f, parts in self.counts.items():
            if len(parts) > bound:
                self.counts[f] = [_sum_counts(parts)]
        if len(self.users) > bound:
            self.users = [_sum_counts(self.users)]
        for f, parts in self.samples.items():
            if len(parts) > 1 and (bound == 1 or sum(len(p) for p, _ in parts) > 4 * SAMPLE_SIZE):
                self.samples[f] = [bottom_k(np.concatenate([p for p, _ in parts]),
                                             np.concatenate([v for _, v in parts]), SAMPLE_SIZE)]
        return self

    def count_dict(self, feature: str) -> Dict[str, int]:
        parts = self.counts.get(feature, [])
        return {} if not parts else {k: int(c) for k, c in _sum_counts(parts).items()}

    def user_counts(self) -> pd.Series:
        return _sum_counts(self.users) if self.users else pd.Series([], dtype=np.int64)

    def sample(self, feature: str) -> np.ndarray:
        """The sorted sample of ``feature``'s train values (all of them up to SAMPLE_SIZE)."""
        parts = self.samples.get(feature, [])
        if not parts:
            return np.zeros(0)
        _, v = bottom_k(np.concatenate([p for p, _ in parts]), np.concatenate([v for _, v in parts]), SAMPLE_SIZE)
        return np.sort(v)

    def merged_moments(self, feature: str) -> Dict[str, float]:
        n, mean, m2 = 0, 0.0, 0.0
        for key in sorted(self.moments.get(feature, {})):
            nb, mb, m2b = self.moments[feature][key]
            if nb == 0:
                continue
            tot = n + nb
            delta = mb - mean
            mean += delta * nb / tot
            m2 += m2b + delta * delta * n * nb / tot
            n = tot
        return {"count": n, "mean": mean, "var": m2 / n if n else 0.0}


def sample_priority(file: str, rows: np.ndarray) -> np.ndarray:
    return uniform_hash(farmhash.fingerprint64(f"ctrflow-sample:{file}"), rows)


def chunk_train_stats(chunk: ValidatedChunk, train_mask: np.ndarray, needs: Dict[str, set],
                      list_features: set) -> TrainStats:
    """The statistics of the rows of ``chunk`` selected by ``train_mask``."""
    st = TrainStats()
    idx = np.flatnonzero(train_mask)
    st.rows = len(idx)
    if not len(idx):
        return st
    prio = sample_priority(chunk.file, chunk.rows[idx])
    for name, need in needs.items():
        if not need:
            continue
        col = chunk.columns[name]
        if name in list_features:  # counts only (the plan checks it), over the train rows' elements
            st.counts[name] = [_count_keys(col.values[np.repeat(train_mask, col.lengths)])]
            continue
        vals = col[idx]
        if "counts" in need:
            st.counts[name] = [_count_keys(vals)]
        if "quantiles" in need or "moments" in need:
            ok = ~np.isnan(vals)
            x = vals[ok]
            if "quantiles" in need:
                st.samples[name] = [bottom_k(prio[ok], x, SAMPLE_SIZE)]
            if "moments" in need:
                m = float(x.mean()) if len(x) else 0.0
                st.moments[name] = {chunk.key: (len(x), m, float(((x - m) ** 2).sum()) if len(x) else 0.0)}
    if USER_KEY in chunk.columns:
        st.users = [pd.Series(chunk.columns[USER_KEY][idx]).value_counts(sort=False)]
    return st


# =============================================================================================


class TrainStatsFn(beam.CombineFn):
    """Merges per-chunk :class:`TrainStats` partials."""

    def create_accumulator(self):
        return TrainStats()

    def add_input(self, acc, partial):
        return acc.merge(partial)

    def merge_accumulators(self, accs):
        out = TrainStats()
        for a in accs:
            out.merge(a)
        return out

    def extract_output(self, acc):
        return acc.compact()


class SampleFn(beam.CombineFn):
    """Merges bottom-k (priority, value) samples."""

    def create_accumulator(self):
        return (np.zeros(0), np.zeros(0))

    def add_input(self, acc, part):
        return self.merge_accumulators([acc, part])

    def merge_accumulators(self, accs):
        accs = list(accs)
        return bottom_k(np.concatenate([a[0] for a in accs]), np.concatenate([a[1] for a in accs]), SAMPLE_SIZE)

    def extract_output(self, acc):
        return acc
