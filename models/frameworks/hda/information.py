"""Exact mutual information of discrete variables from their joint tables (HDA §4.2.2, Eq. 2-3, 15).

=======================  ======================================================================
:func:`mutual_information`  I(A; B) in nats of a 2-D table proportional to P(a, b) (Eq. 15)
:func:`mapped_joint`        P(X_t = j, V) = sum_x P(x, V) T[x, j]: the joint of the mapped feature
                            X_t with V (the label Y or the group G), X_t drawn from T[x]
                            independently of V given X (Eq. 2-3)
:func:`joint_counts`        C[x, v]: the empirical joint counts of a field's ids and V (numpy)
=======================  ======================================================================

One definition serves numpy and TensorFlow: the functions take numpy arrays or tensors and
return tensors (``float(...)`` for a number). Floating inputs keep their dtype (a numpy float64
table computes in float64, the fit's float32 tensors in float32); integer ones compute in
float64. 0 log 0 = 0: an empty cell adds nothing, and every log reads a safe operand, so gradients are
finite, not NaN (an empty cell's gradient is what reaches it through the normalisation and
the marginals).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def _float_tensor(table, dtype=None) -> tf.Tensor:
    table = tf.convert_to_tensor(table)
    if dtype is not None:
        return tf.cast(table, dtype)
    return table if table.dtype.is_floating else tf.cast(table, tf.float64)


def mutual_information(joint) -> tf.Tensor:
    """I(A; B) = sum_{a,b} P(a,b) log(P(a,b) / (P(a) P(b))) in nats (Eq. 15).

    ``joint`` [|A|, |B|]: non-negative, proportional to P(a, b) (counts or probabilities;
    normalised here). Cells with P(a, b) = 0 contribute 0 and no NaN gradient.
    """
    p = _float_tensor(joint)
    p = p / tf.reduce_sum(p)
    shape = tf.shape(p)
    p_a = tf.broadcast_to(tf.reduce_sum(p, axis=1, keepdims=True), shape)
    p_b = tf.broadcast_to(tf.reduce_sum(p, axis=0, keepdims=True), shape)
    positive = p > 0  # then P(a) >= P(a, b) > 0 and P(b) > 0 too

    def safe_log(t):
        return tf.math.log(tf.where(positive, t, tf.ones_like(t)))

    terms = p * (safe_log(p) - safe_log(p_a) - safe_log(p_b))
    return tf.reduce_sum(tf.where(positive, terms, tf.zeros_like(terms)))


def mapped_joint(counts, transition) -> tf.Tensor:
    """P(X_t = j, V = v) = sum_x P(x, v) T[x, j] (Eq. 2-3): [q, |V|] in ``transition``'s dtype.

    ``counts`` [p, |V|]: C[x, v], the joint counts (or probabilities) of the field X and V;
    ``transition`` [p, q]: row-stochastic, T[x, j] = P(X_t = j | X = x).
    """
    t = _float_tensor(transition)
    c = _float_tensor(counts, t.dtype)
    return tf.linalg.matmul(t, c / tf.reduce_sum(c), transpose_a=True)


def joint_counts(values, other, num_values: int, num_other: int = 2) -> np.ndarray:
    """C[x, v] = #{samples with X = x and V = v}: [num_values, num_other] float64.

    ``values``: a field's integer ids in [0, num_values); ``other``: the label or the group
    (``pipeline.user_groups``: 1 = head, 0 = long-tail), integers in [0, num_other).
    """
    x = np.asarray(values, np.int64).reshape(-1)
    v = np.asarray(other, np.int64).reshape(-1)
    if x.shape != v.shape:
        raise ValueError(f"joint_counts: {x.size} values but {v.size} labels / groups")
    if x.size and (x.min() < 0 or x.max() >= num_values or v.min() < 0 or v.max() >= num_other):
        raise ValueError(f"joint_counts: ids must be in [0, {num_values}) and labels / groups in [0, {num_other})")
    flat = np.bincount(x * num_other + v, minlength=num_values * num_other)
    return flat.reshape(num_values, num_other).astype(np.float64)
