"""Run analyses by name: callbacks that write figures and tables under ``<run>/analysis/``.

A training run gets the analyses its config lists (``analysis: [difficulty]``) plus those
its framework class names in ``analyses`` (TF4CTR: the sample-difficulty analysis of its
Fig. 10), so a framework brings its report with it and the pipeline holds no per-framework
branch. An analysis is one entry here: name -> ``factory(cfg, run_dir, tasks)`` returning
Keras callbacks.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import tensorflow as tf

from models.factory import framework_class
from pipeline.collapse import collapse_callbacks
from pipeline.difficulty import difficulty_callbacks
from pipeline.gates import gate_callbacks
from pipeline.representations import representation_callbacks
from pipeline.tim_temporal import tim_temporal_callbacks

ANALYSES: Dict[str, Callable[..., List[tf.keras.callbacks.Callback]]] = {
    "difficulty": difficulty_callbacks,  # TF4CTR Sec. IV-D, Fig. 5 and 10
    "gates": gate_callbacks,  # experts models (Tencent §5.1, AME): each task's gate weight per table
    "representations": representation_callbacks,  # Rec4Ad Sec. 4.2.4, Fig. 7 and 8
    "collapse": collapse_callbacks,  # Tencent KDD'24 Sec. 4.1 / 7.2: information abundance of the embeddings
    "tim_temporal": tim_temporal_callbacks,  # Tencent Sec. 3.1: TIM's time-interval vs position embeddings
}


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
