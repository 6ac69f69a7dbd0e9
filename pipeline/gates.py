"""Each task's mean gate weight per embedding table of an experts model (Tencent KDD'24 §5.1:
AME's small tasks route more to its small tables), the ``gates`` run analysis.

When training ends (after early stopping has restored the best weights) the model routes up to
``rows`` rows of the validation split in inference mode; each task's first-level gate weights are
summed per table (``ExpertsModel.table_weights``: a row's weights over the tables sum to 1) and
averaged over the rows. Written under ``<run_dir>/analysis/``:

    gates.json   {"rows": n, "tables": [{"table", "width", "owner"}, ...],
                  "weights": {task: [mean weight per table]}, "positive_rate": {task: rate in the rows}}
    gates.png    per table (width, owner) one bar per task

A task's positive rate beside its weights says which tasks are the small ones.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.config import ConfigError


def mean_table_weights(model, dataset: tf.data.Dataset, rows: int) -> dict:
    """The ``gates.json`` record of ``model`` over the first ``rows`` rows of ``dataset``."""
    sums: Dict[str, np.ndarray] = {}
    positives: Dict[str, float] = {}
    seen = 0
    for batch in dataset:
        x, y, _ = tf.keras.utils.unpack_x_y_sample_weight(batch)
        take = min(rows - seen, int(tf.shape(next(iter(y.values())))[0]))
        x = {k: v[:take] for k, v in x.items()}
        for task, w in model.table_weights(x).items():
            sums[task] = sums.get(task, 0.0) + w.numpy().astype(np.float64).sum(axis=0)
            positives[task] = positives.get(task, 0.0) + float(np.sum(y[task].numpy()[:take]))
        seen += take
        if seen >= rows:
            break
    return {"rows": seen, "tables": model.describe_tables(),
            "weights": {t: (s / max(seen, 1)).tolist() for t, s in sums.items()},
            "positive_rate": {t: p / max(seen, 1) for t, p in positives.items()}}


def summary(record: dict) -> Dict[str, float]:
    """Each task's mean gate weight per table of a ``gates.json`` record (``ctrflow compare``
    tabulates them), keyed ``<task> -> table <t> (<width>)``."""
    return {f"{task} -> table {t['table']} ({t['width']})": w
            for task, weights in record["weights"].items() for t, w in zip(record["tables"], weights)}


def plot_table_weights(path: str, record: dict) -> None:
    """Grouped bars: each table, one bar per task (its mean gate weight)."""
    tasks, tables = list(record["weights"]), record["tables"]
    fig = Figure(figsize=(max(5.0, 1.2 * len(tables) * max(len(tasks), 1)), 4))
    ax = fig.add_subplot()
    width = 0.8 / max(len(tasks), 1)
    x = np.arange(len(tables))
    for i, task in enumerate(tasks):
        ax.bar(x + (i - (len(tasks) - 1) / 2) * width, record["weights"][task], width,
               label=f"{task} (positive rate {record['positive_rate'][task]:.3f})")
    ax.set_xticks(x, [f"table {t['table']}\nwidth {t['width']}, {t['owner']}" for t in tables])
    ax.set(ylabel="mean gate weight", title=f"gate weight per table ({record['rows']} validation rows)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class GateWeights(tf.keras.callbacks.Callback):
    """See the module docstring."""

    def __init__(self, out_dir: str, dataset: tf.data.Dataset, rows: int = 4096):
        super().__init__()
        self.out_dir, self.dataset, self.rows = out_dir, dataset, int(rows)

    def on_train_end(self, logs=None):
        os.makedirs(self.out_dir, exist_ok=True)
        record = mean_table_weights(self.model, self.dataset, self.rows)
        with open(os.path.join(self.out_dir, "gates.json"), "w") as fh:
            json.dump(record, fh, indent=2)
        plot_table_weights(os.path.join(self.out_dir, "gates.png"), record)


def gate_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    """The callback of an experts model's run on its validation split (``pipeline.analyses``: ``gates``)."""
    from models.factory import framework_class
    from pipeline.data import make_dataset

    if not hasattr(framework_class(cfg.model.framework), "table_weights"):
        raise ConfigError(f"analysis: 'gates' reads the gates of an experts model (models/frameworks/experts/); "
                          f"framework '{cfg.model.framework}' has none")
    data = make_dataset(cfg.data_dir, cfg.valid_split, cfg.eval_batch_size, shuffle=False, deterministic=True,
                        labels=tasks)
    return [GateWeights(os.path.join(run_dir, "analysis"), data)]
