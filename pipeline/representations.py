"""Rec4Ad's representation analysis of a training run (Gao et al., Sec. 4.2.4, Fig. 7 and 8).

A fixed sample of the training split, up to ``rows_per_source`` ad rows and as many rec rows,
is taken when training starts. Every ``every_batches`` training batches (5: a few points per
epoch of the simulator's ~36 batches, at ~4 % of the step time) the discriminator H
scores the sample's invariant representations x_inv (each row through its own source's branch,
inference mode) and the AUC of H separating ad from rec rows is recorded (Fig. 8: it rises while
H learns, then falls towards 0.5 as the alignment confuses it). When training ends, x_inv and
x_con of the sample are projected to 2-D and drawn coloured by source (Fig. 7). The paper draws
t-SNE; we draw the first two principal components (deterministic, no extra dependency) and
measure the separation instead of judging it by eye: the AUC of the source from a Fisher linear
discriminant fitted on half of the sample and scored on the other half (near 0.5 = the sources
are mixed, as x_inv should be; near 1 = separated, as x_con may be). Written under
``<run_dir>/analysis/``:

    discriminator_auc.json / .png    [{"epoch", "batch", "step", "auc"}, ...] and the curve
    representations.json / .png      the separation AUCs and the 2-D projections' figure

A resumed run keeps the records of the epochs before the one it resumes.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline import metrics as M

SOURCES = {1: "ad", 0: "rec"}


def source_sample(dataset: tf.data.Dataset, rows_per_source: int) -> Optional[dict]:
    """Up to ``rows_per_source`` rows of each source from ``dataset`` (batches of the training
    split, unshuffled): the input dict with ``_source``; None when a source has no row."""
    parts: List[dict] = []
    counts = {1: 0, 0: 0}
    for batch in dataset:
        x = tf.keras.utils.unpack_x_y_sample_weight(batch)[0]
        source = x["_source"].numpy().reshape(-1)
        keep = np.zeros(len(source), bool)
        for s in counts:
            rows = np.flatnonzero(source == s)[:max(rows_per_source - counts[s], 0)]
            keep[rows] = True
            counts[s] += len(rows)
        parts.append({k: v.numpy()[keep] for k, v in x.items()})
        if min(counts.values()) >= rows_per_source:
            break
    if min(counts.values()) == 0:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fisher_separation_auc(z: np.ndarray, source: np.ndarray, seed: int = 0) -> float:
    """AUC of the source from a Fisher linear discriminant of ``z`` fitted on a random half of
    the rows and scored on the other half (0.5 = indistinguishable)."""
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(z), bool)
    fit[rng.permutation(len(z))[:len(z) // 2]] = True
    a, r = z[fit & (source == 1)], z[fit & (source == 0)]
    scatter = np.cov(a, rowvar=False) + np.cov(r, rowvar=False) + 1e-6 * np.eye(z.shape[1])
    w = np.linalg.solve(scatter, a.mean(0) - r.mean(0))
    return M.auc(source[~fit], z[~fit] @ w)


def principal_components(z: np.ndarray, k: int = 2) -> np.ndarray:
    centred = z - z.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:k].T


class SourceRepresentations(tf.keras.callbacks.Callback):
    """See the module docstring."""

    def __init__(self, out_dir: str, dataset: tf.data.Dataset, rows_per_source: int = 2000, every_batches: int = 5):
        super().__init__()
        self.out_dir, self.dataset = out_dir, dataset
        self.rows_per_source, self.every = int(rows_per_source), max(int(every_batches), 1)
        self.sample: Optional[dict] = None
        self.records: List[dict] = []
        self.epoch = 0

    def _path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def on_train_begin(self, logs=None):
        os.makedirs(self.out_dir, exist_ok=True)
        self.sample = source_sample(self.dataset, self.rows_per_source)
        if os.path.exists(self._path("discriminator_auc.json")):
            with open(self._path("discriminator_auc.json")) as fh:
                self.records = json.load(fh)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
        self.records = [r for r in self.records if r["epoch"] < self.epoch]

    def _parts(self):
        source = tf.constant(self.sample["_source"].reshape(-1))
        x_inv, x_con = self.model.representations(self.sample, training=False, source=source)
        return x_inv, x_con, self.model.source_probability(x_inv)

    def on_train_batch_end(self, batch, logs=None):
        if self.sample is None or (batch + 1) % self.every:
            return
        step = len(self.records) and self.records[-1]["step"]
        prob = self._parts()[2].numpy()
        self.records.append({"epoch": self.epoch, "batch": batch + 1, "step": int(step) + self.every,
                             "auc": M.auc(self.sample["_source"].reshape(-1), prob)})

    def on_epoch_end(self, epoch, logs=None):
        with open(self._path("discriminator_auc.json"), "w") as fh:
            json.dump(self.records, fh, indent=1)

    def on_train_end(self, logs=None):
        if self.sample is None:
            with open(self._path("representations.json"), "w") as fh:
                json.dump({"note": "the training split lacks ad or rec rows: nothing to compare"}, fh)
            return
        x_inv, x_con, _ = (t.numpy().astype(np.float64) for t in self._parts())
        source = self.sample["_source"].reshape(-1)
        result = {"rows": {SOURCES[s]: int((source == s).sum()) for s in SOURCES},
                  "separation_auc": {"x_inv": fisher_separation_auc(x_inv, source),
                                     "x_con": fisher_separation_auc(x_con, source)},
                  "final_discriminator_auc": self.records[-1]["auc"] if self.records else None}
        with open(self._path("representations.json"), "w") as fh:
            json.dump(result, fh, indent=2)
        plot_representations(self._path("representations.png"), {"x_inv": x_inv, "x_con": x_con}, source,
                             result["separation_auc"])
        if self.records:
            plot_discriminator_auc(self._path("discriminator_auc.png"), self.records)


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_representations(path: str, reps: Dict[str, np.ndarray], source: np.ndarray,
                         separation: Dict[str, float]) -> None:
    """The first two principal components of each representation, ad red, rec blue (Fig. 7)."""
    fig = Figure(figsize=(5 * len(reps), 4.5))
    for ax, (name, z) in zip(fig.subplots(1, len(reps)), reps.items()):
        xy = principal_components(z)
        for s, color in ((0, "tab:blue"), (1, "tab:red")):
            ax.scatter(xy[source == s, 0], xy[source == s, 1], s=3, alpha=0.4, color=color, label=SOURCES[s])
        ax.set(title=f"{name}: source separation AUC {separation[name]:.3f}", xlabel="PC 1", ylabel="PC 2")
        ax.legend(markerscale=4)
    _save(fig, path)


def plot_discriminator_auc(path: str, records: List[dict]) -> None:
    """H's AUC on the fixed sample over training (Fig. 8)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in records], [r["auc"] for r in records], marker=".")
    ax.axhline(0.5, ls="--", color="grey", lw=0.8)
    ax.set(title="discriminator H: AUC of ad vs rec on x_inv", xlabel="training batch", ylabel="AUC")
    ax.grid(alpha=0.3)
    _save(fig, path)


def representation_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    """The callback of a Rec4Ad run on its training split (``pipeline.analyses``: ``representations``)."""
    from pipeline.data import make_dataset

    data = make_dataset(cfg.data_dir, cfg.train_split, cfg.eval_batch_size, shuffle=False, deterministic=True)
    return [SourceRepresentations(os.path.join(run_dir, "analysis"), data)]
