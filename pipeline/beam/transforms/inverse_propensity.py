"""``inverse_propensity``: inverse-propensity weights of ad impressions, for Rec4Ad's IPS and
IPS-C baselines (Rec4Ad §4.1, "IPS" / "IPS-C").

**The propensity.** The paper gives no propensity model. We take the propensity of an ad
impression to be the ad's logged impression ratio (Rec4Ad Eq. 2), IR(a) = impressions /
candidate sessions from the ads table: the fraction of the requests where the ad was a
candidate in which the ads system showed it, i.e. the empirical P(shown | candidate) of that ad.
It is clipped below at ``min_ratio`` (default 1e-3), so an ad shown once in thousands of
candidate sessions does not get an unbounded weight. An ad row whose ad is not in the table, or
has no candidate sessions there, has no propensity: weight 1 (counted as
``ad_rows_without_ratio``).

**The weights** (added meta columns, NOT sample weights of the schema: a training config names
one as ``train.sample_weight``):

* ``weight_column`` (default ``ips_weight``) = (1 / propensity) / m for ad rows, where m is the
  mean of 1 / propensity over the **training split's** ad rows with a propensity (a side index
  over train rows), so the weights of those rows average 1 and the loss keeps its scale;
  rec rows (pseudo-ad samples: no logged propensity) weigh 1;
* ``capped_column`` (default ``ipsc_weight``) = min(ips_weight, ``cap``), IPS-C. The paper gives
  no cap; the default 10 (ten times the mean weight) bounds the variance a few rarely shown ads
  add while leaving most weights unchanged (``ad_rows_capped`` counts the rows it clips).

Rows of splits the transform does not see (default: all but train) get weight 1. Counters:
``ad_rows``, ``ad_rows_without_ratio``, ``ad_rows_capped``.

    transforms:
      - {name: inverse_propensity, ads_table: demo_out/raw/ads.parquet, min_ratio: 0.001, cap: 10.0}
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.options import OptionError
from pipeline.beam import ads_table as A
from pipeline.beam.transforms.base import Batch, Column, Output, Transform, register_transform


@register_transform("inverse_propensity")
class InversePropensity(Transform):
    """Options: ``ads_table`` (required), ``ad_column``, ``impressions_column``,
    ``candidate_sessions_column``, ``min_ratio`` in (0, 1], ``cap`` >= 1, ``weight_column``,
    ``capped_column``, ``splits`` (see the module docstring)."""

    defaults = {"ads_table": None, "ad_column": "ad_id", "impressions_column": "impressions",
                "candidate_sessions_column": "candidate_sessions", "min_ratio": 1e-3, "cap": 10.0,
                "weight_column": "ips_weight", "capped_column": "ipsc_weight"}
    ranges = {"min_ratio": "(0, 1]", "cap": "[1, inf)"}
    types = {"ads_table": str}
    uses_index = True
    count_names = ("ad_rows", "ad_rows_without_ratio", "ad_rows_capped")

    def check(self, config, where: str) -> None:
        super().check(config, where)
        o = self.options
        self.where = where
        A.check_transform_options(self, config, where,
                                  f"{o['ad_column']}, {o['impressions_column']}, {o['candidate_sessions_column']}")
        self.ad_kind = A.log_column(config, o["ad_column"])
        if self.ad_kind is None:
            raise OptionError(f"{where}.ad_column = {o['ad_column']!r}: expected a scalar feature or an extra_meta "
                              f"column of the config (transform '{self.name}')")
        if o["weight_column"] == o["capped_column"]:
            raise OptionError(f"{where}.capped_column = {o['capped_column']!r}: the same name as weight_column; "
                              f"choose two names (transform '{self.name}')")

    def added_columns(self):
        return {self.options["weight_column"]: Column("float32", 1.0),
                self.options["capped_column"]: Column("float32", 1.0)}

    def inputs(self):
        return [self.options["ads_table"]]

    def prepare(self, config) -> None:
        """The propensity of every ad of the table: max(IR, min_ratio); NaN without candidate sessions."""
        o, path = self.options, self.options["ads_table"]
        names = (o["impressions_column"], o["candidate_sessions_column"])
        cols = A.read_ads_table(path, [o["ad_column"], *names], f"{self.where}.ads_table")
        _, _, ir = A.impression_ratios(cols[names[0]], cols[names[1]], path, names)
        self.ads = pd.Index(A.lookup_keys(A.canonical(self.ad_kind, *cols[o["ad_column"]], o["ad_column"], path)))
        self.propensity = np.maximum(ir, o["min_ratio"])  # NaN stays NaN

    def _inverse(self, batch: Batch):
        """(1 / propensity per row (NaN: none), the ad rows)."""
        ad = batch.columns["source"] == 1
        at = self.ads.get_indexer(A.lookup_keys(batch.columns[self.options["ad_column"]]))
        inv = np.full(len(batch), np.nan)
        known = ad & (at >= 0)
        inv[known] = 1.0 / self.propensity[at[known]]
        return inv, ad

    # ---- the side index: the mean of 1 / propensity over the training split's ad rows -------------
    def index_part(self, batch: Batch):
        inv, _ = self._inverse(batch)
        inv = inv[~np.isnan(inv)]
        return float(inv.sum()), int(len(inv))

    def merge_index(self, parts):
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def build_index(self, part):
        return part[0] / part[1] if part and part[1] else 1.0

    def apply(self, batch: Batch, side) -> Output:
        inv, ad = self._inverse(batch)
        known = ~np.isnan(inv)
        weight = np.where(known, inv / (side or 1.0), 1.0).astype(np.float32)
        capped = np.minimum(weight, np.float32(self.options["cap"]))
        counts = {"ad_rows": ad.astype(np.int64), "ad_rows_without_ratio": (ad & ~known).astype(np.int64),
                  "ad_rows_capped": (weight > capped).astype(np.int64)}
        return Output(None, {self.options["weight_column"]: weight, self.options["capped_column"]: capped}, counts)
