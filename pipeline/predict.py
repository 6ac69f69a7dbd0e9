"""Predictions of a model over a dataset, as numpy, in inference mode (``training=False``).

Batches are ``(inputs, labels)`` or ``(inputs, labels, sample_weights)`` (``pipeline/data.py``),
unpacked with Keras' own ``unpack_x_y_sample_weight``; metrics here are unweighted.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def predict_labels(model, dataset, tasks, extra_columns=()):
    """Run ``model`` over ``dataset`` once; return (labels, predictions[, columns]) as numpy."""
    ys = {t: [] for t in tasks}
    ps = {t: [] for t in tasks}
    cols = {c: [] for c in extra_columns}
    predict = _predict_fn(model)
    for batch in dataset:
        inputs, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(batch)  # weighted batches too
        out = predict(inputs)
        for t in tasks:
            ys[t].append(labels[t].numpy().reshape(-1))
            ps[t].append(out[t].numpy().reshape(-1))
        for c in extra_columns:
            cols[c].append(inputs[c].numpy().reshape(-1))
    y = {t: np.concatenate(v) for t, v in ys.items()}
    p = {t: np.concatenate(v).astype(np.float64) for t, v in ps.items()}
    if extra_columns:
        return y, p, {c: np.concatenate(v) for c, v in cols.items()}
    return y, p


def _predict_fn(model):
    """The model's traced inference call, one per training stage (a staged framework's forward
    depends on its current stage, ``FrameworkModel.enter_stage``)."""
    traced = getattr(model, "_ctrflow_predict_fns", None)
    if traced is None:  # not a Keras-tracked attribute: no part of the model's checkpoint
        traced = {}
        object.__setattr__(model, "_ctrflow_predict_fns", traced)
    stage = getattr(model, "stage", None)
    if stage not in traced:
        traced[stage] = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return traced[stage]
