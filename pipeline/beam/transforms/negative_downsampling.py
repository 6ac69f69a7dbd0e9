"""``negative_downsampling``: keep each negative row with probability ``rate``, weighted 1 / rate.

Ads CTR logs hold far more negatives than clicks; training on all negatives but a fraction
``rate`` costs little accuracy and saves most of the data (He et al., "Practical Lessons from
Predicting Clicks on Ads at Facebook", 2014). Kept negatives get the importance weight
1 / rate in ``weight_column`` and positives 1, so the weighted loss is an unbiased estimate of
the loss over all rows. Whether a negative is kept is decided by a seeded hash of the row's
key (input file, row), so reruns, runners and worker counts keep the same rows. Rows of splits
the transform does not apply to (by default every split but train) keep weight 1.

    transforms:
      - {name: negative_downsampling, rate: 0.1, seed: 0, weight_column: sample_weight}
"""
from __future__ import annotations

import farmhash
import numpy as np

from models.options import OptionError
from pipeline.beam.splits import uniform_hash
from pipeline.beam.transforms.base import Batch, Column, Output, Transform, register_transform


@register_transform("negative_downsampling")
class NegativeDownsampling(Transform):
    """Options: ``rate`` in (0, 1] (required), ``seed`` >= 0, ``weight_column`` (default
    ``sample_weight``), ``label`` (the label whose 0 rows are negatives; default the first)."""

    defaults = {"rate": None, "seed": 0, "weight_column": "sample_weight", "label": None}
    ranges = {"rate": "(0, 1]", "seed": "[0, inf)"}
    types = {"rate": float, "label": str}

    def check(self, config, where: str) -> None:
        super().check(config, where)
        if self.options["rate"] is None:
            raise OptionError(f"{where}.rate: missing; expected the kept fraction of negatives, a number in (0, 1] "
                              f"(transform '{self.name}')")
        label = self.options["label"] = self.options["label"] or (config.labels[0] if config.labels else None)
        if label not in config.labels:
            raise OptionError(f"{where}.label = {label!r}: expected one of the config's labels "
                              f"{list(config.labels)} (transform '{self.name}')")

    def added_columns(self):
        return {self.options["weight_column"]: Column("float32", 1.0, weight=True)}

    def apply(self, batch: Batch, side) -> Output:
        rate = self.options["rate"]
        seed = farmhash.fingerprint64(f"ctrflow-negative_downsampling:{self.options['seed']}")
        positive = batch.columns[self.options['label']] != 0
        keep = positive | (uniform_hash(seed ^ farmhash.fingerprint64(batch.file), batch.rows) < rate)
        take = np.flatnonzero(keep)
        weight = np.where(positive[take], 1.0, 1.0 / rate).astype(np.float32)
        return Output(take, {self.options["weight_column"]: weight})
