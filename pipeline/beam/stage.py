"""The transform stage: the configured transforms (``pipeline/beam/transforms/``) over validated rows.

Where it runs: after validation and split assignment, before the train statistics and the
encoding. After validation, because a transform reads canonical columns and must never see a
row that will be quarantined; after the split is known, because a transform applies to chosen
splits (negative downsampling to train only: valid and test stay the logged distribution)
and its side index is built from training rows only (a transform *before the split*, such as
``k_core``, sees every main split's rows instead, see ``transforms/base.py``); before the
statistics, because the vocabularies, bucket boundaries, moments and head users must describe
the rows that are written (a transform that maps rec items to pseudo-ads must have those ids
in the ad vocabulary, not encode them as OOV). The time split's cut points are computed before
it, over every row with a valid time.

Every step that needs rows reads its read units itself, so the statistics step, the encode
step and each later transform's index step run the stage again on the rows they read: a
transform must be deterministic (a seeded hash of the row key, never a random draw). Only the
encode step's counts reach the accounting.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from pipeline.beam.plan import JobPlan, read_chunks
from pipeline.beam.transforms import Batch, Output, Transform
from pipeline.beam.validation import ValidatedChunk, take_column
from pipeline.raw_io import ListColumn

Counts = Dict[int, Dict[str, Dict[str, int]]]  # split index -> transform name -> rows_in / out / dropped / added


@dataclasses.dataclass
class Staged:
    """A chunk through the stage: its rows after the transforms, the split of each validated row
    before them, and the transforms' row counts per split."""

    chunk: ValidatedChunk
    validated: np.ndarray
    counts: Counts


def staged_chunks(item, plan: JobPlan, cuts=None, sides: Sequence[Any] = (), upto: Optional[int] = None
                  ) -> Iterable[Staged]:
    """A read unit's chunks as the statistics and encode steps see them: validated, with final
    split indexes, through ``plan.transforms[:upto]`` (``sides``: their side values, None for a
    transform without an index)."""
    steps = list(zip(plan.transforms[:upto], sides))
    for chunk in read_chunks(item, plan):
        chunk = chunk.resolve_splits(cuts)
        validated, counts = chunk.split_code, {}
        for transform, side in steps:
            chunk, done = apply_transform(transform, plan.transform_splits[transform.name], chunk, side)
            for split, c in done.items():
                counts.setdefault(split, {})[transform.name] = c
        yield Staged(chunk, validated, counts)


def batch_of(chunk: ValidatedChunk, idx: np.ndarray) -> Batch:
    """The rows ``idx`` of a chunk as a transform sees them."""
    return Batch({k: take_column(v, idx) for k, v in chunk.columns.items()}, chunk.split_code[idx],
                 chunk.file, chunk.rows[idx])


def apply_transform(transform: Transform, splits: np.ndarray, chunk: ValidatedChunk, side
                    ) -> Tuple[ValidatedChunk, Counts]:
    """``chunk`` with ``transform`` applied to its rows of ``splits`` (rows of other splits pass
    through, the added columns at their fill values), in input row order; and the counts."""
    added = transform.added_columns()
    selected = np.isin(chunk.split_code, splits)
    idx = np.flatnonzero(selected)
    if len(idx):
        out = transform.apply(batch_of(chunk, idx), side)
    else:
        out = Output(np.zeros(0, np.int64), {name: np.zeros(0, c.dtype) for name, c in added.items()})
    take = np.arange(len(idx)) if out.take is None else np.asarray(out.take, dtype=np.int64)
    _check_output(transform, out, take, len(idx), chunk.columns, added)
    passed = np.flatnonzero(~selected)
    src = np.concatenate([passed, idx[take]])  # the chunk row of every output row
    order = np.argsort(src, kind="stable")
    src = src[order]
    out_row = np.concatenate([np.full(len(passed), -1), np.arange(len(take))])[order]  # -1: passed through
    mine = out_row >= 0
    columns = {}
    for name, col in chunk.columns.items():
        columns[name] = take_column(col, src)
        if name in out.columns:
            columns[name][mine] = out.columns[name][out_row[mine]]
    for name, c in added.items():
        columns[name] = np.full(len(src), c.fill, dtype=c.dtype)
        columns[name][mine] = out.columns[name][out_row[mine]]
    staged = dataclasses.replace(chunk, rows=chunk.rows[src], columns=columns, split_code=chunk.split_code[src],
                                 time=None if chunk.time is None else chunk.time[src])
    return staged, _counts(chunk.split_code[idx], np.bincount(take, minlength=len(idx)), out.counts)


def _counts(split: np.ndarray, outputs_per_row: np.ndarray, own: Dict[str, np.ndarray]) -> Counts:
    """rows in / out / dropped (no output row) / added (output rows beyond the first) per split,
    and the transform's own counters (``own``: one int per input row) summed per split."""
    out = {}
    for s in np.unique(split).tolist():
        mine = split == s
        n = outputs_per_row[mine]
        out[s] = {"rows_in": len(n), "rows_out": int(n.sum()), "rows_dropped": int((n == 0).sum()),
                  "rows_added": int(np.maximum(n - 1, 0).sum()),
                  **{name: int(np.sum(c[mine])) for name, c in own.items()}}
    return out


def _check_output(transform: Transform, out: Output, take: np.ndarray, n: int, columns: Dict[str, Any],
                  added: Dict[str, Any]) -> None:
    """A transform's output must index its batch and give every added column, one value per output row."""
    problems = []
    if take.ndim != 1 or (take.size and (take.min() < 0 or take.max() >= n)):
        problems.append(f"take must index the batch's {n} rows")
    unknown = sorted(set(out.columns) - set(columns) - set(added))
    missing = sorted(set(added) - set(out.columns))
    lists = sorted(c for c in out.columns if isinstance(columns.get(c), ListColumn))
    short = sorted(c for c, v in out.columns.items() if len(v) != len(take))
    counters = sorted(set(out.counts) ^ set(transform.count_names)) if out.counts or n else []
    counters += sorted(c for c, v in out.counts.items() if len(v) != n)
    for what, names in (("undeclared columns", unknown), ("missing added columns", missing),
                        ("replaced list columns", lists), ("columns of another length than take", short),
                        ("counters not as count_names declares or not one per batch row", counters)):
        if names:
            problems.append(f"{what} {names}")
    if problems:
        raise ValueError(f"transform '{transform.name}' returned a bad Output: {'; '.join(problems)}")


def index_parts(item, plan: JobPlan, k: int, cuts=None, previous=None, *sides) -> Iterable[Any]:
    """Parts of transform ``k``'s side index from a main-input read unit's rows as they reach
    transform ``k`` (through the transforms before it): its training rows, or every main split's
    rows for a transform before the split. ``previous``: the side value of the previous round of
    an iterative index (None in round 1); the round then sees the rows ``apply`` outputs with it."""
    if plan.sources[item[0]][0] is not None:
        return
    transform = plan.transforms[k]
    splits = plan.transform_splits[transform.name]
    seen = splits if transform.before_split else [plan.train_index]
    for staged in staged_chunks(item, plan, cuts, sides, upto=k):
        chunk = staged.chunk
        if previous is not None:
            chunk, _ = apply_transform(transform, splits, chunk, previous)
        idx = np.flatnonzero(np.isin(chunk.split_code, seen))
        if len(idx):
            yield transform.index_part(batch_of(chunk, idx))


class IndexFn(beam.CombineFn):
    """Merges the parts of a transform's side index and builds it (``Transform.build_index``)."""

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def create_accumulator(self) -> List[Any]:
        return []

    def add_input(self, acc, part):
        return self._merged(acc + [part])

    def merge_accumulators(self, accs):
        return self._merged([p for a in accs for p in a])

    def extract_output(self, acc):
        return self.transform.build_index(self._merged(acc)[0] if acc else None)

    def _merged(self, parts: List[Any]) -> List[Any]:
        return [self.transform.merge_index(parts)] if len(parts) > 1 else parts
