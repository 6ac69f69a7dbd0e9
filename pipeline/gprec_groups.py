"""How a group model divides users and how diverse its group embeddings are (GPRec §IV-E, Fig. 4),
the ``gprec_groups`` run analysis.

GPRec (and DGPM, its single-embedding baseline) exposes ``group_assignment(inputs) -> [B, G]``,
m^1 of Eq. 3 at inference (softmax(log s / tau), no Gumbel noise; DGPM: its softmax weights over
the groups), ``group_embeddings() -> (p [G, d], n [G, d] or None)`` (Eq. 5; a single-embedding
model gives (e, None)) and ``user_features()`` (the features of E_u). When training ends (at
the weights the run saves) the model assigns up to ``rows`` rows of the validation split:

- usage: a unit is a user (the schema's user key ``_user``; else the values of its ``personal``
  features, the ids E_p reads; else a row). A unit's m^1 is the mean over its rows (m^1 is a
  function of E_u, so one value per user when the profile is fixed); it is positive in group i
  when m^1_i > 0.5 (s^1_i > s^0_i). Per group: the share of units positive, the mean m^1, the
  share whose largest m^1 is this group's; per unit the number of groups it is positive in
  (its distribution); the groups never / always positive; the distinct positive-group sets
  (the dual embeddings can represent 2^G patterns, §III-B).
- similarity: cos(p_i, n_i) per group (Fig. 4: about 0.03); the mean and max pairwise cosine of
  the p's, of the n's and of all 2G embeddings (Fig. 4's largest, 0.6, is between two n's); for a
  single-embedding model the e's (DGPM's mean, 0.9). A lower mean pairwise cosine is a more
  diverse set of groups; the heat map shows ``shown`` groups picked at random (seeded), as Fig. 4.

Written under ``<run_dir>/analysis/``:

    gprec_groups.json   {"split", "rows", "unit", "units", "user_features", "groups", "dual",
                         "usage": {...}, "similarity": {...}, "shown": [group indices]}
    gprec_groups.png    share of units positive per group; Fig. 4's heat map; groups per unit
    gprec_groups.md     the headline numbers (:func:`summary`)

Registered in ``pipeline.analyses`` as ``gprec_groups``.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.config import ConfigError

USER_KEY = "_user"  # the side input holding the schema's user key (features.schema.SIDE_INPUTS)


def assignments(model, dataset: tf.data.Dataset, rows: int,
                personal: Sequence[str] = ()) -> Tuple[np.ndarray, Optional[np.ndarray], str]:
    """(m^1 [n, G] float64, unit index per row [n] or None, what a unit is) over the first ``rows``
    rows of ``dataset``: units are the user key, else the ``personal`` features' values, else rows."""
    masks, ids, unit, seen = [], [], "row", 0
    for batch in dataset:
        x = tf.keras.utils.unpack_x_y_sample_weight(batch)[0]
        take = min(rows - seen, int(tf.shape(next(iter(x.values())))[0]))
        x = {k: v[:take] for k, v in x.items()}
        masks.append(np.asarray(model.group_assignment(x), np.float64))
        if USER_KEY in x:
            unit = f"user ({USER_KEY}, the schema's user key)"
            ids.append(x[USER_KEY].numpy().reshape(take, -1))
        elif personal:
            unit = f"user (personal features {list(personal)})"
            ids.append(np.concatenate([x[f].numpy().reshape(take, -1) for f in personal], axis=1))
        seen += take
        if seen >= rows:
            break
    return np.concatenate(masks), (_index(np.concatenate(ids)) if ids else None), unit


def _index(ids: np.ndarray) -> np.ndarray:
    """Each row's index among the distinct rows of ``ids`` [n, k] (string keys have one column)."""
    one = ids.shape[1] == 1  # np.unique takes no axis for strings (object arrays)
    _, inverse = np.unique(ids[:, 0] if one else ids, axis=None if one else 0, return_inverse=True)
    return inverse.reshape(-1)


def unit_means(m1: np.ndarray, unit_ids: Optional[np.ndarray]) -> np.ndarray:
    """Each unit's mean m^1 over its rows [U, G] (units in id order; no ids: the rows)."""
    if unit_ids is None:
        return m1
    order = np.argsort(unit_ids, kind="stable")
    sorted_ids = unit_ids[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_ids)) + 1])
    counts = np.diff(np.concatenate([starts, [len(sorted_ids)]]))
    return np.add.reduceat(m1[order], starts, axis=0) / counts[:, None]


def group_usage(per_unit: np.ndarray) -> dict:
    """The module docstring's usage measures of the units' m^1 [U, G]."""
    positive = per_unit > 0.5
    groups = per_unit.shape[1]
    per_unit_count = positive.sum(axis=1)
    top = np.bincount(per_unit.argmax(axis=1), minlength=groups) / len(per_unit)
    share = positive.mean(axis=0)
    return {"share_positive": share.tolist(), "mean_m1": per_unit.mean(axis=0).tolist(), "share_top": top.tolist(),
            "groups_per_unit": {"counts": np.bincount(per_unit_count, minlength=groups + 1).tolist(),
                                "mean": float(per_unit_count.mean())},
            "never_positive": float(np.mean(share == 0)), "always_positive": float(np.mean(share == 1)),
            "patterns": int(len(np.unique(positive, axis=0)))}


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_j) [len(a), len(b)]; a zero row has cosine 0 with everything."""
    def unit(x):
        x = np.asarray(x, np.float64)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return unit(a) @ unit(b).T


def pairwise(embeddings: np.ndarray) -> dict:
    """Mean and max cosine over the distinct pairs of ``embeddings`` [k, d]."""
    c = cosine_matrix(embeddings, embeddings)[np.triu_indices(len(embeddings), k=1)]
    return {"mean": float(c.mean()), "max": float(c.max())} if c.size else {"mean": None, "max": None}


def embedding_similarity(p: np.ndarray, n: Optional[np.ndarray]) -> dict:
    """The module docstring's similarity measures of p [G, d] and n [G, d] (None: single embeddings)."""
    if n is None:
        return {"embeddings": pairwise(p)}
    cos_pn = np.diag(cosine_matrix(p, n))
    return {"cos_pn": cos_pn.tolist(), "cos_pn_mean": float(cos_pn.mean()), "cos_pn_max": float(cos_pn.max()),
            "positive": pairwise(p), "negative": pairwise(n), "all": pairwise(np.concatenate([p, n]))}


def group_report(model, dataset: tf.data.Dataset, rows: int, personal: Sequence[str] = (), shown: int = 5,
                 split: str = "valid", seed: int = 0) -> dict:
    """The ``gprec_groups.json`` record of ``model`` (module docstring)."""
    m1, unit_ids, unit = assignments(model, dataset, rows, personal)
    per_unit = unit_means(m1, unit_ids)
    p, n = model.group_embeddings()
    p = np.asarray(p, np.float64)
    n = None if n is None else np.asarray(n, np.float64)
    picked = np.sort(np.random.default_rng(seed).choice(len(p), size=min(shown, len(p)), replace=False))
    heat = p[picked] if n is None else np.concatenate([p[picked], n[picked]])  # Fig. 4: [p_i; n_i] of the picked
    return {"split": split, "rows": int(len(m1)), "unit": unit, "units": int(len(per_unit)),
            "user_features": list(model.user_features()), "groups": int(len(p)), "dual": n is not None,
            "usage": group_usage(per_unit), "similarity": embedding_similarity(p, n), "shown": picked.tolist(),
            "shown_cosine": cosine_matrix(heat, heat).tolist()}


def summary(record: dict) -> Dict[str, float]:
    """The headline numbers of a ``gprec_groups.json`` record (``ctrflow compare`` tabulates them):
    cos(p_i, n_i) mean / max, the groups' mean / max pairwise cosine (p's; a single-embedding
    model's e's), groups per user, and the share of groups never positive."""
    sim, usage = record["similarity"], record["usage"]
    own = sim["positive"] if record["dual"] else sim["embeddings"]
    out = {"mean pairwise cos": own["mean"], "max pairwise cos": own["max"],
           "groups per user": usage["groups_per_unit"]["mean"], "groups never positive": usage["never_positive"]}
    if record["dual"]:
        out.update({"mean cos(p, n)": sim["cos_pn_mean"], "max cos(p, n)": sim["cos_pn_max"]})
    return {k: v for k, v in out.items() if v is not None}


def markdown(record: dict) -> str:
    """A short table of :func:`summary` with what the numbers were measured on."""
    lines = [f"# Groups ({record['groups']} groups, {'dual p / n' if record['dual'] else 'single'} embeddings)", "",
             f"{record['rows']} rows of the '{record['split']}' split, {record['units']} units: {record['unit']}; "
             f"E_u = {record['user_features']}.", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in summary(record).items()]
    lines += [f"| distinct positive-group sets | {record['usage']['patterns']} |",
              f"| groups always positive | {record['usage']['always_positive']:.4f} |"]
    return "\n".join(lines) + "\n"


def plot_groups(path: str, record: dict) -> None:
    """Share of units positive per group (sorted; mean m^1 as dots), the cosine heat map of the
    shown groups' embeddings (Fig. 4) and the distribution of groups per unit."""
    usage, shown = record["usage"], record["shown"]
    fig = Figure(figsize=(15, 4.5))
    ax_use, ax_cos, ax_per = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.6, 1.0, 1.0]})
    order = np.argsort(usage["share_positive"])[::-1]
    x = np.arange(len(order))
    ax_use.bar(x, np.array(usage["share_positive"])[order], color="tab:orange", label="share positive (m^1 > 0.5)")
    ax_use.plot(x, np.array(usage["mean_m1"])[order], "k.", label="mean m^1")
    ax_use.set(xlabel="group (sorted by share positive)", ylim=(0, 1),
               title=f"group usage over {record['units']} units ({record['unit'].split(' ')[0]}s)")
    ax_use.legend(fontsize=8)
    labels = [f"p{i}" for i in shown] + [f"n{i}" for i in shown] if record["dual"] else [f"e{i}" for i in shown]
    cos = np.array(record["shown_cosine"])
    image = ax_cos.imshow(cos, vmin=-1, vmax=1, cmap="RdYlGn_r")
    for (i, j), value in np.ndenumerate(cos):
        ax_cos.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    ax_cos.set_xticks(range(len(labels)), labels, fontsize=7)
    ax_cos.set_yticks(range(len(labels)), labels, fontsize=7)
    ax_cos.set_title("cosine of the group embeddings (GPRec Fig. 4)", fontsize=10)
    fig.colorbar(image, ax=ax_cos, fraction=0.046)
    counts = usage["groups_per_unit"]["counts"]
    ax_per.bar(range(len(counts)), counts, color="tab:blue")
    ax_per.set(xlabel="groups a unit is positive in", ylabel="units",
               title=f"mean {usage['groups_per_unit']['mean']:.2f} of {record['groups']} groups")
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


class GroupAnalysis(tf.keras.callbacks.Callback):
    """Writes the module docstring's files when training ends."""

    def __init__(self, out_dir: str, dataset: tf.data.Dataset, personal: Sequence[str] = (), rows: int = 200_000,
                 split: str = "valid"):
        super().__init__()
        self.out_dir, self.dataset, self.personal = out_dir, dataset, list(personal)
        self.rows, self.split = int(rows), split

    def on_train_end(self, logs=None):
        os.makedirs(self.out_dir, exist_ok=True)
        record = group_report(self.model, self.dataset, self.rows, self.personal, split=self.split)
        with open(os.path.join(self.out_dir, "gprec_groups.json"), "w") as fh:
            json.dump(record, fh, indent=1)
        with open(os.path.join(self.out_dir, "gprec_groups.md"), "w") as fh:
            fh.write(markdown(record))
        plot_groups(os.path.join(self.out_dir, "gprec_groups.png"), record)


def gprec_groups_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    """The callback of a group model's run on its validation split (``pipeline.analyses``:
    ``gprec_groups``); a framework without ``group_assignment`` is a ConfigError."""
    from features.schema import Schema
    from models.factory import framework_class
    from pipeline.data import make_dataset

    if not all(hasattr(framework_class(cfg.model.framework), m)
               for m in ("group_assignment", "group_embeddings", "user_features")):
        raise ConfigError(f"analysis: 'gprec_groups' reads the groups of a group model (GPRec, DGPM); framework "
                          f"'{cfg.model.framework}' has none")
    schema = Schema.load(cfg.data_dir)
    personal = [f.name for f in schema.features_by_role("personal") if cfg.features is None or f.name in cfg.features]
    data = make_dataset(cfg.data_dir, cfg.valid_split, cfg.eval_batch_size, schema=schema, shuffle=False,
                        deterministic=True, labels=tasks)
    return [GroupAnalysis(os.path.join(run_dir, "analysis"), data, personal, split=cfg.valid_split)]
