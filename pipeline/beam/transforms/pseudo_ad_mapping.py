"""``pseudo_ad_mapping``: Rec4Ad's sample retrieval and pseudo-ad mapping (Rec4Ad §3.1, Eq. 3-5).

The ads log only holds impressions the ads system chose (sample-selection bias); the
recommendation log holds organic impressions of items, many of which have ads that are rarely
shown. This transform turns recommendation rows into training samples of the ad model:

* **retrieval** (Eq. 3-4): a rec row (``source`` = rec) is kept only when its item has at least
  one ad in the ads table (the set I_ad); the others are dropped;
* **mapping** (Eq. 5, recent-K-random): a kept row becomes a pseudo-ad sample of one of its
  item's ads, picked uniformly among the ``k`` most recent ads of the item *created at or before
  the sample's time* (our rule beyond the paper: an ad that did not exist yet is never chosen; a
  rec row whose item's ads were all created after it is dropped, counted apart). The pick is a
  seeded hash of the row key (input file, row), so reruns, runners and workers pick alike. Ads
  created at the same second are ordered by their row in the ads table. The paper's "we do not
  take their impressions into consideration": the mapping reads only the item, ad, creation
  time and the ad-feature columns of the ads table, never its impression counts.

The mapped row's ad features are the chosen ad's (``ad_features``: log column <- ads-table
column, e.g. ad id, campaign, bid) and ``age_column`` its age in days at the sample's time;
ad rows pass unchanged, every row keeps its ``source``. Rec rows of splits outside
``rec_splits`` (default train only) are dropped: valid and test stay ads-only.

Counted per split in ``stats.json`` (``transforms.pseudo_ad_mapping``): ``rec_rows_in``,
``rec_rows_mapped`` and the dropped rec rows: ``rec_dropped_item_without_ads``,
``rec_dropped_ads_after_sample``, ``rec_dropped_outside_rec_splits``, ``rec_dropped_no_time``
(the time column is missing). Statistics (``statistics``): the impression ratio of Eq. 2,
IR(a) = impressions / candidate sessions of every ad of the table (count, quantiles, the mean
IR of 12 equal groups sorted by IR as the paper's Fig. 4, the top / bottom group ratio), and the
per-ad file ``impression_ratio.parquet`` in the output folder; ``impressions_column`` /
``candidate_sessions_column`` null skip them. The index (item -> ads by creation time) is built
on the launcher from the table (compact numpy arrays) and travels to the workers with the
transform.

    transforms:
      - {name: pseudo_ad_mapping, ads_table: demo_out/raw/ads.parquet, k: 3, seed: 0}
"""
from __future__ import annotations

from typing import Any, Dict

import farmhash
import numpy as np
import pandas as pd

from features.encoders import INT_MISSING
from models.options import OptionError
from pipeline.beam import ads_table as A
from pipeline.beam.coercion import Problems, as_time
from pipeline.beam.splits import uniform_hash
from pipeline.beam.storage import write_bytes
from pipeline.beam.transforms.base import Batch, Output, Transform, register_transform
from pipeline.raw_io import RawInputError

DAY_SECONDS = 86400.0
IR_FILE = "impression_ratio.parquet"
# options that take null (skip): their default names, filled in when the config does not give them
NULLABLE = {"age_column": "ad_age_days", "impressions_column": "impressions",
            "candidate_sessions_column": "candidate_sessions"}


@register_transform("pseudo_ad_mapping")
class PseudoAdMapping(Transform):
    """Options: ``ads_table`` (required), ``item_column``, ``ad_column``, ``created_at_column``,
    ``time_column``, ``ad_features``, ``age_column``, ``k`` >= 1, ``seed`` >= 0, ``rec_splits``,
    ``impressions_column``, ``candidate_sessions_column``, ``splits`` (see the module docstring)."""

    defaults = {"ads_table": None, "item_column": "item_id", "ad_column": "ad_id",
                "created_at_column": "created_at", "time_column": "timestamp",
                "ad_features": {"ad_id": "ad_id", "campaign_id": "campaign_id", "bid": "bid"},
                "k": 3, "seed": 0, "rec_splits": ["train"], "splits": ["train", "valid", "test"],
                **{name: None for name in NULLABLE}}
    ranges = {"k": "[1, inf)", "seed": "[0, inf)"}
    types = {"ads_table": str, **{name: str for name in NULLABLE}}
    count_names = ("rec_rows_in", "rec_rows_mapped", "rec_dropped_item_without_ads", "rec_dropped_ads_after_sample",
                   "rec_dropped_outside_rec_splits", "rec_dropped_no_time")

    def __init__(self, **options):
        super().__init__(**{**NULLABLE, **options})

    # ---- configuration ---------------------------------------------------------------------
    def check(self, config, where: str) -> None:
        super().check(config, where)
        o = self.options
        self.where = where
        A.check_transform_options(self, config, where,
                                  f"{o['ad_column']}, {o['item_column']}, {o['created_at_column']} and the ad features")
        outside = [s for s in o["rec_splits"] if s not in o["splits"]]
        if outside:
            raise OptionError(f"{where}.rec_splits: {outside} not among the transform's splits {o['splits']} "
                              f"(transform '{self.name}')")
        self.kinds = {"item_column": self._log_column(config, where, "item_column", o["item_column"], numeric=False),
                      "time_column": self._log_column(config, where, "time_column", o["time_column"], numeric=True)}
        if not isinstance(o["ad_features"], dict) or not o["ad_features"]:
            raise OptionError(f"{where}.ad_features = {o['ad_features']!r}: expected a mapping of log column -> "
                              f"ads-table column (transform '{self.name}')")
        for out, src in o["ad_features"].items():
            if not isinstance(src, str) or out in (o["item_column"], o["time_column"], o["age_column"]):
                raise OptionError(f"{where}.ad_features.{out} = {src!r}: expected an ads-table column name, for a "
                                  f"log column other than the item, time and age columns (transform '{self.name}')")
            self.kinds[out] = self._log_column(config, where, f"ad_features.{out}", out, numeric=None)
        if o["age_column"] is not None:
            self.kinds[o["age_column"]] = self._log_column(config, where, "age_column", o["age_column"], numeric=True)
        if (o["impressions_column"] is None) != (o["candidate_sessions_column"] is None):
            raise OptionError(f"{where}: impressions_column and candidate_sessions_column are both set (the impression "
                              f"ratio statistics) or both null (skipped) (transform '{self.name}')")
        names = list(config.split.ratios) + list(config.split.extra_splits)
        self.rec_split_codes = np.array([names.index(s) for s in o["rec_splits"]], np.int64)

    def _log_column(self, config, where: str, option: str, name: str, numeric):
        """The log column ``name`` an option names: a scalar feature or extra meta column (numbers when
        ``numeric``); raises OptionError naming the option otherwise."""
        kind = A.log_column(config, name)
        if kind is None or (numeric and not A.is_numeric(kind)):
            what = "a numeric feature or an int64 / float32 extra_meta column" if numeric else \
                "a scalar feature or an extra_meta column"
            raise OptionError(f"{where}.{option} = {name!r}: expected {what} of the config (transform '{self.name}')")
        return kind

    def inputs(self):
        return [self.options["ads_table"]]

    # ---- the index (launcher) --------------------------------------------------------------
    def prepare(self, config) -> None:
        """Reads the ads table's item, ad, creation-time and ad-feature columns (never its impression
        counts) into the item -> ads index; the impression-ratio statistics in a read of their own."""
        o, path = self.options, self.options["ads_table"]
        where = f"{self.where}.ads_table"
        features = o["ad_features"]
        cols = A.read_ads_table(path, [o["item_column"], o["created_at_column"], *features.values()], where)
        created = self._created(cols[o["created_at_column"]], path)
        items = A.lookup_keys(A.canonical(self.kinds["item_column"], *cols[o["item_column"]], o["item_column"], path))
        listed = np.flatnonzero(items != "")  # an ad without an item is nobody's pseudo-ad
        keys, starts, order = A.item_ads(items[listed], created[listed])
        order = listed[order]
        self.items, self.starts = pd.Index(keys), starts
        self.created = created[order]
        self.times = np.unique(self.created)  # distinct creation times: a time's rank keys the search below
        # (item, creation-time rank) as one ascending int64 key per ad: the ads of an item existing at a time t
        # are those of keys <= (item, rank of t), found for a whole batch by one searchsorted
        item_of = np.repeat(np.arange(len(keys)), np.diff(starts))
        self.search = item_of * (len(self.times) + 1) + np.searchsorted(self.times, self.created, side="right")
        self.ad_values = {out: A.canonical(self.kinds[out], *cols[src], src, path)[order]
                          for out, src in features.items()}
        self._ir = self._impression_ratios(path, where) if o["impressions_column"] else None

    def _created(self, column, path: str) -> np.ndarray:
        values, null = column
        probs = Problems()
        t = as_time(values, null, probs)
        bad = np.flatnonzero(np.isnan(t))
        if len(bad):
            raise RawInputError(f"{self.where}.ads_table: {path}: column '{self.options['created_at_column']}', row "
                                f"{bad[0]}: {values[bad[0]]!r} is not a time (epoch seconds or a datetime)")
        return t

    def _impression_ratios(self, path: str, where: str):
        o = self.options
        names = (o["impressions_column"], o["candidate_sessions_column"])
        cols = A.read_ads_table(path, [o["ad_column"], *names], where)
        imp, cand, ir = A.impression_ratios(cols[names[0]], cols[names[1]], path, names)
        return cols[o["ad_column"]][0], imp, cand, ir

    def __getstate__(self):  # the IR statistics stay on the launcher
        return {k: v for k, v in self.__dict__.items() if k != "_ir"}

    def statistics(self, folder: str) -> Dict[str, Any]:
        if getattr(self, "_ir", None) is None:
            return {}
        ads, imp, cand, ir = self._ir
        write_bytes(f"{folder.rstrip('/')}/{IR_FILE}", [A.ir_table(ads, imp, cand, ir, self.options["ad_column"])])
        return {"impression_ratio": {**A.ir_summary(ir), "file": IR_FILE}}

    # ---- the rows ------------------------------------------------------------------------
    def apply(self, batch: Batch, side) -> Output:
        o = self.options
        rec = batch.columns["source"] == 0
        outside = rec & ~np.isin(batch.split, self.rec_split_codes)
        t, no_time = self._times(batch.columns[o["time_column"]])
        cand = np.flatnonzero(rec & ~outside & ~no_time)
        item = self.items.get_indexer(A.lookup_keys(batch.columns[o["item_column"]][cand]))
        has_ads = item >= 0
        g = np.where(has_ads, item, 0)
        rank = np.searchsorted(self.times, t[cand], side="right")  # distinct creation times <= the sample's
        avail = np.searchsorted(self.search, g * (len(self.times) + 1) + rank, side="right") - self.starts[g]
        avail = np.where(has_ads, avail, 0)
        found = avail > 0
        mapped = cand[found]
        pos = self._pick(batch, mapped, (self.starts[g] + avail)[found], avail[found])
        keep = ~rec
        keep[mapped] = True
        take = np.flatnonzero(keep)
        columns = {out: self._filled(batch.columns[out], mapped, values[pos], take)
                   for out, values in self.ad_values.items()}
        if o["age_column"] is not None:
            age = (t[mapped] - self.created[pos]) / DAY_SECONDS  # >= 0: the ad existed at the sample's time
            age = A.canonical(self.kinds[o["age_column"]], age, np.zeros(len(age), bool), "age", o["ads_table"])
            columns[o["age_column"]] = self._filled(batch.columns[o["age_column"]], mapped, age, take)
        counts = {name: np.zeros(len(batch), np.int64) for name in self.count_names}
        counts["rec_rows_in"][rec] = 1
        counts["rec_rows_mapped"][mapped] = 1
        counts["rec_dropped_outside_rec_splits"][outside] = 1
        counts["rec_dropped_no_time"][rec & ~outside & no_time] = 1
        counts["rec_dropped_item_without_ads"][cand[~has_ads]] = 1
        counts["rec_dropped_ads_after_sample"][cand[has_ads & (avail == 0)]] = 1
        return Output(take, columns, counts)

    @staticmethod
    def _times(column: np.ndarray):
        """The sample times as float64 and where they are missing."""
        missing = column == INT_MISSING if column.dtype.kind == "i" else np.isnan(column)
        return column.astype(np.float64), missing

    def _pick(self, batch: Batch, rows: np.ndarray, end: np.ndarray, avail: np.ndarray) -> np.ndarray:
        """Eq. 5, recent-K-random: for each row to map (``end``: one past the position of its item's
        newest ad existing at its time, ``avail`` >= 1: how many exist), the position of an ad drawn
        uniformly among the last min(k, avail) by the seeded hash of the row key (file, row)."""
        seed = farmhash.fingerprint64(f"ctrflow-pseudo_ad_mapping:{self.options['seed']}")
        u = uniform_hash(seed ^ farmhash.fingerprint64(batch.file), batch.rows[rows])
        m = np.minimum(avail, self.options["k"])
        return end - 1 - np.minimum((u * m).astype(np.int64), m - 1)

    @staticmethod
    def _filled(column: np.ndarray, rows: np.ndarray, values: np.ndarray, take: np.ndarray) -> np.ndarray:
        """``column`` with ``values`` at ``rows`` (in the column's canonical dtype), at the output rows ``take``."""
        out = column.copy()
        out[rows] = A.like(values, column)
        return out[take]
