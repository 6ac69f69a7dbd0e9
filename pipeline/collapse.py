"""Embedding dimensional collapse (Tencent KDD'24 Sec. 4.1 and 7.2, after Guo et al., ICML'24).

The singular values sigma of a field's embedding matrix E_i [N_i, K] show how many of its K
dimensions the embeddings span; the information abundance (Definition 7.1)

    IA(E) = ||sigma(E)||_1 / ||sigma(E)||_inf

is 1 for a rank-one matrix and K for K equal singular values (no collapse). The run analysis
``collapse`` (``pipeline/analyses.py``) writes, when training ends (after early stopping has
restored the weights the run saves), under ``<run_dir>/analysis/``:

    collapse.json   {"tables": {table set: {"dim": K, "mean_ia": mean over its features,
                                            "features": {feature: {"rows", "ia", "spectrum"}}}},
                     "interactions": {interaction: {"dim": k, "projection", "mean_ia"[, "mean_ia_projected"],
                                   "fields": {field: {"pairs", "ia"[, "ia_projected"]}}}}}
    collapse.png    IA per feature of every table set (K dashed); per field of an interaction with
                    projection or several parts, IA without (and with) M

A table set is one ``FeatureEmbedding`` table set (``embedding_matrices``): every instance in
the model, each of its ``num_tables`` sets (``<layer>/table<t>``), so multi-embedding models
report each table. ``spectrum`` is sigma / sigma_max, descending.

``interactions``: per FM-family interaction (:class:`models.layers.PairwiseInteraction`), field
i meets each later field j with the k-wide slice of E_i of j's part (FFM / GwPFM tables are P * k
wide: the per-part IA is comparable with FM's at the same k); ``ia`` is the mean over those j of
IA(E_i^{P(j)}), and with the projection of Eq. 5 ``ia_projected`` the mean of IA(E_i^{P(j)}
M_{F(i)->F(j)}): "the projection interaction's IA with and without M". A model names its
interactions and the embeddings feeding them with ``interaction_sources()`` (a list of
(interaction layer, FeatureEmbedding, table set)); without it, ``model.backbone.interaction`` fed
by table set 0 of ``model.embedding`` (CTRModel, IV, Rec4Ad). Fields of field modules have no
table and are left out.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.embedding import FeatureEmbedding
from models.layers import PairwiseInteraction

DEFINITION = "IA(E) = ||sigma(E)||_1 / ||sigma(E)||_inf over the singular values of E (Tencent KDD'24 Def. 7.1)"


def singular_values(matrix) -> np.ndarray:
    """Singular values of ``matrix``, descending (float64)."""
    return np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)


def information_abundance(matrix) -> float:
    """IA = ||sigma||_1 / ||sigma||_inf; 0 for a zero matrix."""
    s = singular_values(matrix)
    return float(s.sum() / s[0]) if s.size and s[0] > 0 else 0.0


def normalised_spectrum(matrix) -> List[float]:
    """sigma / sigma_max, descending (zeros for a zero matrix)."""
    s = singular_values(matrix)
    return (s / s[0] if s.size and s[0] > 0 else s).tolist()


def _triangle(matrix: np.ndarray) -> np.ndarray:
    """R of E = Q R: E M has the singular values of R M, so each projection costs a K x K SVD."""
    return np.linalg.qr(np.asarray(matrix, np.float64), mode="r")


def _unique(label: str, taken: Dict[str, object]) -> str:
    out, n = label, 2
    while out in taken:
        out, n = f"{label}_{n}", n + 1
    return out


def embeddings_of(model: tf.Module) -> List[FeatureEmbedding]:
    """Every FeatureEmbedding layer in ``model`` (itself included), each once, in Keras' tracking order."""
    found = [model] if isinstance(model, FeatureEmbedding) else []
    for m in model.submodules:
        if isinstance(m, FeatureEmbedding) and all(m is not f for f in found):
            found.append(m)
    return found


def table_sets(model: tf.Module) -> Dict[str, Dict[str, np.ndarray]]:
    """{table set label: {feature: embedding matrix}} of every FeatureEmbedding in ``model``."""
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for layer in embeddings_of(model):
        for t, matrices in enumerate(layer.embedding_matrices()):
            label = layer.name + (f"/table{t}" if layer.num_tables > 1 else "")
            out[_unique(label, out)] = {f: m.numpy() for f, m in matrices.items()}
    return out


def table_report(matrices: Dict[str, np.ndarray]) -> dict:
    """IA and normalised spectrum of each feature's matrix, and their mean IA."""
    features = {f: {"rows": int(m.shape[0]), "ia": information_abundance(m), "spectrum": normalised_spectrum(m)}
                for f, m in matrices.items()}
    return {"dim": int(next(iter(matrices.values())).shape[1]) if matrices else None,
            "mean_ia": _mean(features, "ia"),
            "features": features}


def interaction_sources(model: tf.Module) -> list:
    """(built FM-family interaction, FeatureEmbedding feeding it, table set) of ``model`` (see the
    module docstring)."""
    if hasattr(model, "interaction_sources"):
        sources = list(model.interaction_sources())
    else:
        interaction = getattr(getattr(model, "backbone", None), "interaction", None)
        embedding = getattr(model, "embedding", None)
        sources = [(interaction, embedding, 0)] if isinstance(embedding, FeatureEmbedding) else []
    return [(i, e, t) for i, e, t in sources if isinstance(i, PairwiseInteraction) and i.built]


def interaction_report(interaction: PairwiseInteraction, embedding: FeatureEmbedding, table: int = 0) -> dict:
    """IA of the slices each embedded field meets its partners with, without and (with projection)
    with the pair matrices M (module docstring)."""
    matrices = {f: m.numpy() for f, m in embedding.embedding_matrices()[table].items()}
    m_pairs = interaction.projection_matrices.numpy() if interaction.projection else None
    k = interaction.latent_dim
    triangles: Dict[tuple, np.ndarray] = {}
    fields = {}
    for i, spec in enumerate(embedding.specs):
        pairs = np.flatnonzero(interaction.pair_rows == i)
        if spec.feature not in matrices or not len(pairs):
            continue
        plain, projected = [], []
        for p in pairs:
            part = int(interaction.parts[interaction.pair_cols[p]])
            key = (spec.feature, part)
            if key not in triangles:
                triangles[key] = _triangle(matrices[spec.feature][:, part * k:(part + 1) * k])
            plain.append(information_abundance(triangles[key]))
            if m_pairs is not None:
                projected.append(information_abundance(triangles[key] @ m_pairs[p]))
        fields[spec.name] = {"pairs": int(len(pairs)), "ia": float(np.mean(plain)),
                             **({"ia_projected": float(np.mean(projected))} if projected else {})}
    out = {"embedding": embedding.name, "table": int(table), "dim": int(k), "parts": interaction.num_parts,
           "projection": interaction.projection, "mean_ia": _mean(fields, "ia")}
    if interaction.projection:
        out["mean_ia_projected"] = _mean(fields, "ia_projected")
    return {**out, "fields": fields}


def _mean(entries: Dict[str, dict], key: str):
    return float(np.mean([v[key] for v in entries.values()])) if entries else None


def collapse_report(model: tf.Module) -> dict:
    """What ``collapse.json`` holds (see the module docstring)."""
    interactions: Dict[str, dict] = {}
    for interaction, embedding, table in interaction_sources(model):
        interactions[_unique(interaction.name, interactions)] = interaction_report(interaction, embedding, table)
    return {"definition": DEFINITION, "tables": {label: table_report(m) for label, m in table_sets(model).items()},
            "interactions": interactions}


def summary(record: dict) -> Dict[str, float]:
    """The headline numbers of a ``collapse.json`` record (``ctrflow compare`` tabulates them): each
    table set's mean IA, each interaction's, and with projection its mean IA of E_i M."""
    out = {f"IA {name}": t["mean_ia"] for name, t in record.get("tables", {}).items()}
    for name, inter in record.get("interactions", {}).items():
        out[f"IA {name}"] = inter["mean_ia"]
        if "mean_ia_projected" in inter:
            out[f"IA {name} with M"] = inter["mean_ia_projected"]
    return out


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_collapse(path: str, report: dict) -> None:
    """A bar chart per table set (IA per feature, the width K dashed) and per interaction with
    projection or several parts (IA per field of its k-wide slices, without / with M)."""
    panels = [("table", name, r) for name, r in report["tables"].items() if r["features"]]
    panels += [("interaction", name, r) for name, r in report["interactions"].items()
               if r["fields"] and (r["projection"] or r["parts"] > 1)]
    if not panels:
        return
    fig = Figure(figsize=(max(6.0, 0.45 * max(len(r.get("features", r.get("fields"))) for _, _, r in panels)),
                          3.2 * len(panels)))
    axes = np.atleast_1d(fig.subplots(len(panels), 1))
    for ax, (kind, name, r) in zip(axes, panels):
        if kind == "table":
            labels = list(r["features"])
            ax.bar(labels, [r["features"][f]["ia"] for f in labels], color="tab:blue")
            ax.set_title(f"{name}: IA per feature, mean {r['mean_ia']:.2f}", fontsize=10)
        else:
            labels, x = list(r["fields"]), np.arange(len(r["fields"]))
            keys = ([("ia", "E_i (without M)"), ("ia_projected", "E_i M_ij (with M)")] if r["projection"]
                    else [("ia", "E_i, the slice of j's part")])
            width = 0.8 / len(keys)
            for n, (key, label) in enumerate(keys):
                ax.bar(x + (n - (len(keys) - 1) / 2) * width, [r["fields"][f][key] for f in labels], width,
                       label=label)
            title = f"{name}: IA of the k-wide slices per field, mean {r['mean_ia']:.2f}"
            if r["projection"]:
                title += f" without M, {r['mean_ia_projected']:.2f} with"
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
        ax.axhline(r["dim"], ls="--", color="grey", lw=0.8)  # K: no collapse
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"IA (K = {r['dim']} dashed)")
    _save(fig, path)


class CollapseAnalysis(tf.keras.callbacks.Callback):
    """Writes ``collapse.json`` and ``collapse.png`` under ``out_dir`` when training ends."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self, logs=None):
        os.makedirs(self.out_dir, exist_ok=True)
        report = collapse_report(self.model)
        with open(os.path.join(self.out_dir, "collapse.json"), "w") as fh:
            json.dump(report, fh, indent=1)
        plot_collapse(os.path.join(self.out_dir, "collapse.png"), report)


def collapse_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    """The collapse analysis of a training run (``pipeline.analyses`` registers it as ``collapse``)."""
    return [CollapseAnalysis(os.path.join(run_dir, "analysis"))]
