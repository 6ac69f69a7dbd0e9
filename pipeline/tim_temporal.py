"""TIM's learned temporal encodings after a training run (Tencent Sec. 3.1: "much stronger
decaying patterns in the time interval embeddings than the relative position embedding").

The measure is what a temporal encoding does in Eq. 1: a behaviour's attention logit is
e~_i^T v~_t / sqrt(d) with e~_i = e_i + p_pos(k_i) + p_int(b_i), so its time-interval bucket b
adds c_int(b) = v~_t^T p_int(b) / sqrt(d) and its relative position k adds c_pos(k) =
v~_t^T p_pos(k) / sqrt(d). Both are averaged over the targets v~_t of a sample of the
validation split (``rows``, at the best weights once early stopping restored them) and are in
one unit, the attention logit, so the two curves share a plot. The softmax ignores a constant
shift, so what matters is how c falls with distance: per kind, over the entries holding at
least ``min_count`` behaviours of the sample (others keep their initial rows), ``range`` =
max c - min c and ``spearman`` = the rank correlation of c with the distance (-1: monotone
decay). ||p|| per entry is recorded too. Written under ``<run_dir>/analysis/``:

    tim_temporal.json   {module: {"options", "targets", "time_interval": {...}, "position": {...}}}
    tim_temporal.png    c per bucket and per position, one line each, per TIM module

Bucket b holds gaps in [2^b - 1, 2^(b+1) - 1) seconds (``models.tim.interval_buckets``); position
k is the k-th most recent behaviour. Registered in ``pipeline.analyses`` as ``tim_temporal``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.tim import TIM

KINDS = {"time_interval": ("interval_table", "buckets"), "position": ("position_table", "positions")}


def validation_sample(dataset: tf.data.Dataset, rows: int) -> dict:
    """The first ``rows`` rows of ``dataset`` (unshuffled batches): the input dict as numpy."""
    parts, count = [], 0
    for batch in dataset:
        x = tf.keras.utils.unpack_x_y_sample_weight(batch)[0]
        parts.append({k: v.numpy()[:rows - count] for k, v in x.items()})
        count += len(parts[-1][next(iter(x))])
        if count >= rows:
            break
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def spearman(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Rank correlation (ties share their mean rank); None with fewer than 3 points or a constant."""
    if len(x) < 3:
        return None
    rx, ry = (_ranks(np.asarray(v, np.float64)) for v in (x, y))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):  # ties: the mean rank
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def temporal_profile(tim: TIM, inputs: dict, emb, min_count: int = 20) -> Dict[str, object]:
    """The module docstring's measures of one TIM module on a sample (``emb``: its embedded fields)."""
    enc = tim.encode(inputs, emb)
    target = enc.target.numpy().astype(np.float64)  # v~_t [B, d]
    mask = enc.mask.numpy()
    out: Dict[str, object] = {"options": {k: v for k, v in tim.options.items()}, "targets": int(len(target)),
                              "behaviours": int(mask.sum())}
    for kind, (table_name, index_name) in KINDS.items():
        table = getattr(tim, table_name)
        if table is None:
            continue
        p = table.numpy().astype(np.float64)
        contribution = (target @ p.T).mean(axis=0) / math.sqrt(tim.embedding_dim)
        counts = np.bincount(getattr(enc, index_name).numpy()[mask], minlength=len(p))
        entries = [{"index": k, "attention_logit": float(contribution[k]), "norm": float(np.linalg.norm(p[k])),
                    "behaviours": int(counts[k])} for k in range(1, len(p))]  # 0 is the target's own
        if kind == "time_interval":
            for e in entries:
                e["gap_seconds"] = [2 ** e["index"] - 1, 2 ** (e["index"] + 1) - 1]
        seen = [e for e in entries if e["behaviours"] >= min_count]
        c = np.array([e["attention_logit"] for e in seen])
        out[kind] = {"target_attention_logit": float(contribution[0]), "entries": entries,
                     "occupied": [e["index"] for e in seen],
                     "range": float(c.max() - c.min()) if len(c) else None,
                     "spearman": spearman(np.array([e["index"] for e in seen]), c)}
    return out


def summary(record: dict) -> Dict[str, float]:
    """Per TIM module of a ``tim_temporal.json`` record, each temporal encoding's ``range`` and
    ``spearman`` (``ctrflow compare`` tabulates them; a module of one TIM is named by its kind only)."""
    modules = {k: v for k, v in record.items() if isinstance(v, dict) and "targets" in v}
    out: Dict[str, float] = {}
    for module, profile in modules.items():
        prefix = "" if len(modules) == 1 else f"{module} "
        for kind in KINDS:
            for key in ("range", "spearman"):
                value = profile.get(kind, {}).get(key)
                if value is not None:
                    out[f"{prefix}{kind} {key}"] = value
    return out


def plot_profiles(path: str, profiles: Dict[str, dict]) -> None:
    """Per TIM module, c per time-interval bucket and per relative position on one axes."""
    fig = Figure(figsize=(7, 4.2 * len(profiles)))
    for ax, (name, prof) in zip(np.atleast_1d(fig.subplots(len(profiles), 1)), profiles.items()):
        for kind, label in (("time_interval", "time-interval bucket b (gap ~ 2^b s)"),
                            ("position", "relative position k (k-th most recent)")):
            if kind not in prof:
                continue
            seen = [e for e in prof[kind]["entries"] if e["index"] in prof[kind]["occupied"]]
            rho = prof[kind]["spearman"]
            ax.plot([e["index"] for e in seen], [e["attention_logit"] for e in seen], marker="o",
                    label=f"{label}: range {prof[kind]['range'] or 0:.3f}, Spearman "
                          f"{'n/a' if rho is None else f'{rho:+.2f}'}")
        ax.axhline(0.0, ls="--", color="grey", lw=0.8)
        ax.set(title=f"{name}: attention-logit contribution v~_t.p / sqrt(d), mean over {prof['targets']} targets",
               xlabel="bucket b / position k", ylabel="attention logit")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class TIMTemporal(tf.keras.callbacks.Callback):
    """Writes the module docstring's files when training ends."""

    def __init__(self, out_dir: str, dataset: tf.data.Dataset, rows: int = 4096, min_count: int = 20):
        super().__init__()
        self.out_dir, self.dataset, self.rows, self.min_count = out_dir, dataset, int(rows), int(min_count)

    def on_train_end(self, logs=None):
        os.makedirs(self.out_dir, exist_ok=True)
        modules = [m for m in getattr(getattr(self.model, "added_fields", None), "modules", []) if isinstance(m, TIM)]
        path = os.path.join(self.out_dir, "tim_temporal.json")
        if not modules:
            with open(path, "w") as fh:
                json.dump({"note": "the model has no TIM field module: nothing to measure"}, fh)
            return
        x = validation_sample(self.dataset, self.rows)
        emb = self.model.embedded(x, training=False)
        profiles = {m.name: temporal_profile(m, x, emb, self.min_count) for m in modules}
        with open(path, "w") as fh:
            json.dump(profiles, fh, indent=1)
        plot_profiles(os.path.join(self.out_dir, "tim_temporal.png"), profiles)


def tim_temporal_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    """The callback of a run with TIM, on its validation split (``pipeline.analyses``: ``tim_temporal``)."""
    from pipeline.data import make_dataset

    data = make_dataset(cfg.data_dir, cfg.valid_split, cfg.eval_batch_size, shuffle=False, deterministic=True)
    return [TIMTemporal(os.path.join(run_dir, "analysis"), data)]
