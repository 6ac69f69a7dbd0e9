"""Sample-difficulty analysis of a training run (TF4CTR Sec. IV-D, Fig. 10, and Fig. 5).

At each epoch end the model predicts the valid and eval splits; every sample falls in one
of three classes by p, the predicted probability of its true class (thresholds 0.3 and
0.6, the paper's):

    well-classified     p >= 0.6
    poorly classified   0.3 <= p < 0.6
    misclassified       p < 0.3

counted separately for positives and negatives. The per-batch gradient norms reaching the
encoders' logits, ``grad_norm_zs`` / ``grad_norm_zc`` (logged by the tf4ctr framework's
``train_step``), are collected from the batch logs. Written under ``<run_dir>/analysis/``:

    difficulty.json          {split: [{"epoch": e, "positive": {...}, "negative": {...}}, ...]}
    difficulty_<split>.png   counts per epoch, positives and negatives side by side
    grad_norms.json          {"grad_norm_zs": [[batch values of epoch 1], ...], "grad_norm_zc": ...}
    grad_norms.png           the per-batch curves over the run (Fig. 5)

A resumed run (``pipeline.train.RunBackup``) keeps the records of the epochs before the one it resumes.
:func:`compare_runs` draws several runs' analyses side by side (DualMLP vs TF4CTR, Fig. 10;
L_ctr + L_TF vs L_ctr alone, Fig. 5).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.predict import predict_labels

THRESHOLDS = (0.3, 0.6)
CATEGORIES = ("well_classified", "poorly_classified", "misclassified")
GRAD_KEYS = ("grad_norm_zs", "grad_norm_zc")


def difficulty_counts(y_true, y_prob, thresholds: Tuple[float, float] = THRESHOLDS) -> Dict[str, Dict[str, int]]:
    """{"positive"|"negative": {category: count}} by the probability of the true class."""
    low, high = thresholds
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"difficulty thresholds must satisfy 0 <= low < high <= 1, got {thresholds}")
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"difficulty_counts: {y.size} labels but {p.size} predictions")
    p_true = np.where(y > 0.5, p, 1.0 - p)
    out = {}
    for cls, mask in (("positive", y > 0.5), ("negative", y <= 0.5)):
        q = p_true[mask]
        out[cls] = {"well_classified": int(np.sum(q >= high)),
                    "poorly_classified": int(np.sum((q >= low) & (q < high))),
                    "misclassified": int(np.sum(q < low))}
    return out


class SampleDifficulty(tf.keras.callbacks.Callback):
    """Per-epoch difficulty counts on ``splits`` and per-batch encoder gradient norms,
    written under ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str, splits: Dict[str, tf.data.Dataset], task: str,
                 thresholds: Tuple[float, float] = THRESHOLDS):
        super().__init__()
        if not splits:
            raise ValueError("SampleDifficulty needs at least one split to analyse")
        self.out_dir, self.splits, self.task = out_dir, dict(splits), task
        self.thresholds = tuple(thresholds)
        self.records: Dict[str, List[dict]] = {s: [] for s in self.splits}
        self.grad_norms: Dict[str, List[List[float]]] = {k: [] for k in GRAD_KEYS}
        self._batch: Dict[str, List[float]] = {k: [] for k in GRAD_KEYS}

    # ---- state of a resumed run --------------------------------------------------------
    def on_train_begin(self, logs=None):
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, "difficulty.json")
        if os.path.exists(path):
            with open(path) as fh:
                saved = json.load(fh)
            self.records = {s: list(saved.get(s, [])) for s in self.splits}
        path = os.path.join(self.out_dir, "grad_norms.json")
        if os.path.exists(path):
            with open(path) as fh:
                saved = json.load(fh)
            self.grad_norms = {k: list(saved.get(k, [])) for k in GRAD_KEYS}

    def on_epoch_begin(self, epoch, logs=None):
        self._batch = {k: [] for k in GRAD_KEYS}
        for s in self.records:
            self.records[s] = [r for r in self.records[s] if r["epoch"] < epoch + 1]
        self.grad_norms = {k: v[:epoch] for k, v in self.grad_norms.items()}

    # ---- collection ----------------------------------------------------------------------
    def on_train_batch_end(self, batch, logs=None):
        for k in GRAD_KEYS:
            if logs and k in logs:
                self._batch[k].append(float(logs[k]))

    def on_epoch_end(self, epoch, logs=None):
        for split, ds in self.splits.items():
            y, p = predict_labels(self.model, ds, [self.task])
            self.records[split].append({"epoch": epoch + 1, **difficulty_counts(y[self.task], p[self.task],
                                                                                self.thresholds)})
        for k in GRAD_KEYS:
            self.grad_norms[k].append(self._batch[k])
        self.write()

    # ---- output ---------------------------------------------------------------------------
    def write(self) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, "difficulty.json"), "w") as fh:
            json.dump({"task": self.task, "thresholds": list(self.thresholds), **self.records}, fh, indent=2)
        for split, records in self.records.items():
            if records:
                plot_difficulty(os.path.join(self.out_dir, f"difficulty_{split}.png"), records,
                                f"{self.task} on '{split}': samples by difficulty "
                                f"(p of the true class; thresholds {self.thresholds[0]:g}, {self.thresholds[1]:g})")
        if any(len(epoch) for epoch in self.grad_norms["grad_norm_zs"]):
            with open(os.path.join(self.out_dir, "grad_norms.json"), "w") as fh:
                json.dump(self.grad_norms, fh)
            plot_grad_norms(os.path.join(self.out_dir, "grad_norms.png"),
                            {"simple encoder z_s": self.grad_norms["grad_norm_zs"],
                             "complex encoder z_c": self.grad_norms["grad_norm_zc"]},
                            "mean per-sample gradient norm reaching each encoder's logit")


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_difficulty(path: str, records: Sequence[dict], title: str) -> None:
    """Grouped bars per epoch (well / poorly / misclassified), positives and negatives (Fig. 10)."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    epochs = np.array([r["epoch"] for r in records])
    width = 0.8 / len(CATEGORIES)
    for ax, cls in zip(axes, ("positive", "negative")):
        for i, cat in enumerate(CATEGORIES):
            ax.bar(epochs + (i - 1) * width, [r[cls][cat] for r in records], width=width,
                   label=cat.replace("_", " "))
        ax.set(title=f"{cls} samples", xlabel="epoch", ylabel="samples", xticks=epochs)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def plot_grad_norms(path: str, series: Dict[str, List[List[float]]], title: str) -> None:
    """Per-batch curves (one per series: its values per epoch) over the run, epoch
    boundaries dashed (Fig. 5)."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    for label, epochs in series.items():
        values = [v for epoch in epochs for v in epoch]
        ax.plot(np.arange(1, len(values) + 1), values, label=label, lw=1)
    boundary = 0
    for epoch in next(iter(series.values()))[:-1]:
        boundary += len(epoch)
        ax.axvline(boundary + 0.5, ls="--", color="grey", lw=0.8)
    ax.set(title=title, xlabel="training batch", ylabel="mean |dl/dz|")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_difficulty_comparison(path: str, runs: Dict[str, Sequence[dict]], title: str) -> None:
    """Several runs' per-epoch counts of one split: a panel per (class, category), a line
    per run (Fig. 10's DualMLP vs TF4CTR)."""
    fig = Figure(figsize=(12, 6))
    axes = fig.subplots(2, 3)
    for row, cls in enumerate(("positive", "negative")):
        for col, cat in enumerate(CATEGORIES):
            ax = axes[row][col]
            for name, records in runs.items():
                ax.plot([r["epoch"] for r in records], [r[cls][cat] for r in records], marker="o", label=name)
            ax.set(title=f"{cls}: {cat.replace('_', ' ')}", xlabel="epoch", ylabel="samples")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    _save(fig, path)


def compare_runs(run_dirs: Dict[str, str], out_dir: str) -> List[str]:
    """Side-by-side plots of several runs' analyses (``{label: run_dir}``):
    ``difficulty_<split>.png`` for every split they share and ``grad_norms.png`` of the
    runs that logged grad norms. Returns the files written."""
    analyses = {}
    for name, run_dir in run_dirs.items():
        path = os.path.join(run_dir, "analysis", "difficulty.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"run '{run_dir}' has no {path}: train it with the difficulty analysis")
        with open(path) as fh:
            analyses[name] = json.load(fh)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    common = set.intersection(*(set(a) - {"task", "thresholds"} for a in analyses.values()))
    for split in sorted(common):
        path = os.path.join(out_dir, f"difficulty_{split}.png")
        task = next(iter(analyses.values()))["task"]
        plot_difficulty_comparison(path, {n: a[split] for n, a in analyses.items()},
                                   f"{task} on '{split}': samples by difficulty per epoch")
        written.append(path)
    series = {}
    for name, run_dir in run_dirs.items():
        path = os.path.join(run_dir, "analysis", "grad_norms.json")
        if os.path.exists(path):
            with open(path) as fh:
                norms = json.load(fh)
            series.update({f"{name}: {label}": norms[k] for k, label in zip(GRAD_KEYS, ("z_s", "z_c"))})
    if series:
        path = os.path.join(out_dir, "grad_norms.png")
        plot_grad_norms(path, series, "mean per-sample gradient norm reaching each encoder's logit")
        written.append(path)
    return written


def difficulty_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    """The sample-difficulty callback of a training run: on the valid split and every eval
    split, for the first task (``pipeline.analyses`` registers it as ``difficulty``)."""
    from pipeline.data import make_dataset

    splits = {s: make_dataset(cfg.data_dir, s, cfg.eval_batch_size, shuffle=False, deterministic=True,
                              cache=cfg.cache)
              for s in dict.fromkeys([cfg.valid_split, *cfg.eval_splits])}
    return [SampleDifficulty(os.path.join(run_dir, "analysis"), splits, tasks[0])]
