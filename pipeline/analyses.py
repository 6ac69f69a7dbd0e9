"""Run analyses by name: callbacks that write figures and tables under ``<run>/analysis/``.

A training run gets the analyses its config lists (``analysis: [difficulty]``) plus those
its framework class names in ``analyses`` (TF4CTR: the sample-difficulty analysis of its
Fig. 10), so a framework brings its report with it and the pipeline holds no per-framework
branch. An analysis is one entry here: name -> ``factory(cfg, run_dir, tasks)`` returning
Keras callbacks. An analysis whose JSON has headline numbers names a ``summary(record) ->
{name: number}`` in :data:`SUMMARIES`; ``ctrflow compare`` tabulates them per method
(:func:`run_summaries`).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List

import tensorflow as tf

from pipeline import alignment, collapse, gates, gprec_groups, tim_temporal
from models.factory import framework_class
from pipeline.difficulty import difficulty_callbacks
from pipeline.representations import representation_callbacks

ANALYSES: Dict[str, Callable[..., List[tf.keras.callbacks.Callback]]] = {
    "difficulty": difficulty_callbacks,  # TF4CTR Sec. IV-D, Fig. 5 and 10
    "gates": gates.gate_callbacks,  # experts models (Tencent §5.1, AME): each task's gate weight per table
    "representations": representation_callbacks,  # Rec4Ad Sec. 4.2.4, Fig. 7 and 8
    "collapse": collapse.collapse_callbacks,  # Tencent KDD'24 Sec. 4.1 / 7.2: information abundance of the embeddings
    "tim_temporal": tim_temporal.tim_temporal_callbacks,  # Tencent Sec. 3.1: TIM's time-interval vs position embeddings
    "gprec_groups": gprec_groups.gprec_groups_callbacks,  # GPRec §IV-E, Fig. 4: group usage, cos(p_i, n_i), diversity
    "alignment": alignment.alignment_callbacks,  # HDA §5.5, Fig. 5: a fresh DeepFM's AUC of head vs tail from E_sh
}


# analysis -> summary of its <run>/analysis/<name>.json: the numbers a compare grid tabulates
SUMMARIES: Dict[str, Callable[[dict], Dict[str, float]]] = {
    "collapse": collapse.summary,  # each table's mean information abundance (with M: projected)
    "gates": gates.summary,  # each task's mean gate weight per table
    "tim_temporal": tim_temporal.summary,  # range and rank correlation of the learned temporal decay
    "gprec_groups": gprec_groups.summary,  # cos(p_i, n_i), the groups' pairwise cosine, groups per user
    "alignment": alignment.summary,  # the discriminator's valid AUC of head vs tail from E_sh (0.5 = aligned)
}


# analysis -> analyze(run_dir, **options) -> record: run again on a completed run (``ctrflow analyze``)
RERUNS: Dict[str, Callable[..., dict]] = {
    "alignment": alignment.analyze_run,  # its saved model's E_sh; options: pipeline.alignment.DEFAULTS
}


def run_summaries(run_dir: str) -> Dict[str, Dict[str, float]]:
    """{analysis: summary} of the analyses in :data:`SUMMARIES` that the run wrote."""
    out = {}
    for name, summarize in SUMMARIES.items():
        path = os.path.join(run_dir, "analysis", f"{name}.json")
        if os.path.exists(path):
            with open(path) as fh:
                numbers = summarize(json.load(fh))
            if numbers:
                out[name] = numbers
    return out


def requested_analyses(cfg) -> List[str]:
    """The config's analyses and the framework's own, in that order, each once."""
    own = getattr(framework_class(cfg.model.framework), "analyses", ())
    names = list(dict.fromkeys([*(cfg.analysis or []), *own]))
    unknown = sorted(set(names) - set(ANALYSES))
    if unknown:
        raise ValueError(f"analysis: unknown analysis {unknown}; known: {sorted(ANALYSES)}")
    return names


def analysis_callbacks(cfg, run_dir: str, tasks: List[str]) -> List[tf.keras.callbacks.Callback]:
    return [cb for name in requested_analyses(cfg) for cb in ANALYSES[name](cfg, run_dir, tasks)]
