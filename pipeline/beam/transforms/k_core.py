"""``k_core``: keep the k-core of the interactions, before the split.

The rows are the edges between the values of ``columns`` (users and items: ``[user_id,
movie_id]``). The k-core is the largest set of rows in which every value of every listed column
occurs in at least ``min_count`` rows. It is found by peeling: count each value's rows, drop
every row holding a value with fewer than ``min_count`` of them, and count again over the rows
left, until a round drops nothing. One round is not enough in general: dropping a rare item's
rows can leave one of its users below ``min_count``, and dropping that user's rows another item.

The paper protocol it serves (HDA, KDD'25, §5.1: MovieLens-1M, 5-core, then a random 7:1:2 split
of all interactions) filters the data set and then splits it, so this is a transform *before the
split* (``transforms/base.py``): it counts the rows of every main split, filters all of them,
and the split, the vocabularies and the head users only see the rows it keeps.

In Beam: each round is a pass over the input (read + validate + the rows the previous round's
index keeps) whose per-chunk value counts are merged by a combine; the merged counts become the
round's index, the values with at least ``min_count`` rows per column. The launcher starts
another round while the last one found values below ``min_count``; the final round finds none
and its index keeps exactly the rows it counted. ``max_rounds`` is a safety net: a filter not
converged by then fails the job rather than write rows that are not a k-core.

A row with a missing value in a listed column belongs to no user or item: it is dropped, never
counted (counter ``rows_missing_value``). With ``label``, only rows whose label is 1 count (a
k-core of the positives); every row of a value outside it is dropped. ``stats.json`` gives the
rows dropped per split, and in ``transforms.k_core.statistics.rounds`` each round's rows counted,
values and values below ``min_count`` per column, and the counted rows its index removed.

    transforms:
      - {name: k_core, columns: [user_id, movie_id], min_count: 5}
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from features.errors import UserError
from models.options import OptionError
from pipeline.beam import ads_table as A
from pipeline.beam.transforms.base import Batch, Output, Transform, register_transform


@dataclasses.dataclass
class KCoreIndex:
    """One round's result: the rows it counted, and per column the values with at least
    ``min_count`` of them (``kept``, a pandas Index for hashed look-ups), the distinct values
    counted and how many of those fell below ``min_count``."""

    rows: int
    kept: Dict[str, pd.Index]
    values: Dict[str, int]
    below: Dict[str, int]


@register_transform("k_core")
class KCore(Transform):
    """Options: ``columns`` (required: scalar features or extra_meta columns, usually the user and
    the item), ``min_count`` >= 1 (default 5), ``max_rounds`` >= 1 (default 20),
    ``label`` (count only rows where this label is 1; default every row)."""

    defaults = {"columns": None, "min_count": 5, "max_rounds": 20, "label": None}
    ranges = {"min_count": "[1, inf)", "max_rounds": "[1, inf)"}
    types = {"columns": list, "label": str}
    uses_index = True
    before_split = True
    iterative = True
    count_names = ("rows_missing_value",)

    def check(self, config, where: str) -> None:
        super().check(config, where)
        self.where = where
        columns = self.options["columns"]
        if not columns:
            raise OptionError(f"{where}.columns: missing; expected the columns whose values must each occur in "
                              f"min_count rows, e.g. [user_id, movie_id] (transform '{self.name}')")
        for i, column in enumerate(columns):
            if not isinstance(column, str) or A.log_column(config, column) is None:
                raise OptionError(f"{where}.columns[{i}] = {column!r}: expected a scalar feature or an extra_meta "
                                  f"column of the config (transform '{self.name}')")
        if len(set(columns)) != len(columns):
            raise OptionError(f"{where}.columns = {columns}: a column is listed twice (transform '{self.name}')")
        label = self.options["label"]
        if label is not None and label not in config.labels:
            raise OptionError(f"{where}.label = {label!r}: expected one of the config's labels {list(config.labels)} "
                              f"(transform '{self.name}')")

    # ---- the index: value counts over the rows a round sees ----------------------------------
    def _keys(self, batch: Batch) -> Dict[str, np.ndarray]:
        """Each listed column's canonical keys ("" = missing; 123 and "123" are one key)."""
        return {c: A.lookup_keys(batch.columns[c]) for c in self.options["columns"]}

    def index_part(self, batch: Batch) -> Dict[str, Any]:
        keys = self._keys(batch)
        counted = np.logical_and.reduce([k != "" for k in keys.values()])
        if self.options["label"] is not None:
            counted &= batch.columns[self.options["label"]] == 1
        return {"rows": int(counted.sum()),
                "counts": {c: pd.Series(k[counted]).value_counts() for c, k in keys.items()}}

    def merge_index(self, parts: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {"rows": sum(p["rows"] for p in parts),
                "counts": {c: pd.concat([p["counts"][c] for p in parts]).groupby(level=0).sum()
                           for c in self.options["columns"]}}

    def build_index(self, part: Optional[Dict[str, Any]]) -> KCoreIndex:
        k, columns = self.options["min_count"], self.options["columns"]
        counts = {c: part["counts"][c] if part else pd.Series([], dtype=np.int64) for c in columns}
        return KCoreIndex(rows=part["rows"] if part else 0,
                          kept={c: pd.Index(n.index[n.to_numpy() >= k]) for c, n in counts.items()},
                          values={c: len(n) for c, n in counts.items()},
                          below={c: int((n.to_numpy() < k).sum()) for c, n in counts.items()})

    # ---- rounds, on the launcher ----------------------------------------------------------------
    def next_round(self, side: KCoreIndex, rounds: int) -> bool:
        """Another round while this one found values below min_count; fails when nothing is left
        or ``max_rounds`` rounds did not converge."""
        if rounds == 1:
            self.rounds: List[Dict[str, Any]] = []
        if self.rounds:
            self.rounds[-1]["rows_removed"] = self.rounds[-1]["rows"] - side.rows
        self.rounds.append({"rows": side.rows, "values": side.values, "below_min_count": side.below})
        o = self.options
        what = f"{self.where} ({self.name} of {o['columns']}, min_count {o['min_count']})"
        counted = "rows" if o["label"] is None else f"rows with {o['label']} = 1"
        if side.rows == 0:
            raise UserError(f"{what}: no {counted} to count" + ("" if rounds == 1 else
                            f" after round {rounds - 1}: the filter removes every row"))
        empty = [c for c, kept in side.kept.items() if not len(kept)]
        if empty:
            raise UserError(f"{what} removes every row: in round {rounds} no value of {empty} occurs in "
                            f"{o['min_count']} {counted}")
        if not any(side.below.values()):
            self.rounds[-1]["rows_removed"] = 0
            return False
        if rounds >= o["max_rounds"]:
            raise UserError(f"{what} did not converge in max_rounds = {o['max_rounds']} rounds: round {rounds} still "
                            f"found values below min_count ({side.below}); raise max_rounds")
        return True

    def statistics(self, folder: str) -> Dict[str, Any]:
        return {"rounds": getattr(self, "rounds", [])}

    # ---- the rows -------------------------------------------------------------------------------
    def apply(self, batch: Batch, side: KCoreIndex) -> Output:
        keys = self._keys(batch)
        missing = np.logical_or.reduce([k == "" for k in keys.values()])
        keep = ~missing
        for c, k in keys.items():
            keep &= side.kept[c].get_indexer(k) >= 0
        return Output(np.flatnonzero(keep), counts={"rows_missing_value": missing.astype(np.int64)})
