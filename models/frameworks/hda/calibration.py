"""HDA adaptive distribution calibration: group-aware beta calibration (§4.4.2, Eq. 13-14).

Eq. 13, y_c = 1 / (1 + (1 - y_a)^(b + b_g g) / (e^(c + c_g g) y_a^(a + a_g g))), is computed as its
logit, z = (a + a_g g) log y_a - (b + b_g g) log(1 - y_a) + c + c_g g, y_c = sigma(z): Beta
calibration (Kull et al., the paper's [13]) with parameters a, b, c of group 0 (long-tail, as
``pipeline.user_groups``: 1 = head) and offsets a_g, b_g, c_g of each other group, as the printed
"b + bg" with g in {0, 1} reads; so every parameter is identified by the data. Initialised to the
identity map (a = b = 1, c = 0, offsets 0: z = logit(y_a)).

:func:`fit_calibration` minimises the mean BCE of y_c on held-out predictions (Eq. 14 is printed
without the minus sign; the paper fits on the validation split) with scipy's L-BFGS-B, which is
deterministic. The paper does not constrain a, b >= 0 (Kull et al.'s condition for a monotone
map), and neither does this.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

EPSILON = 1e-7  # y_a is clipped to [EPSILON, 1 - EPSILON] before the logs, as models.losses clips

_register = tf.keras.utils.register_keras_serializable("ctrflow")


@_register
class GroupBetaCalibration(tf.keras.layers.Layer):
    """Eq. 13: (scores y_a, groups) -> calibrated probabilities y_c, float32, shaped as the scores."""

    def __init__(self, num_groups: int = 2, **kw):
        super().__init__(**kw)
        if int(num_groups) < 1:
            raise ValueError(f"GroupBetaCalibration: num_groups must be >= 1, got {num_groups}")
        self.num_groups = int(num_groups)

        def weight(name, shape, value):
            return self.add_weight(name=name, shape=shape, dtype=tf.float32,
                                   initializer=tf.keras.initializers.Constant(value))

        self.a, self.b, self.c = weight("a", (), 1.0), weight("b", (), 1.0), weight("c", (), 0.0)
        self.a_g, self.b_g, self.c_g = (weight(n, (self.num_groups - 1,), 0.0) for n in ("a_g", "b_g", "c_g"))

    def group_parameters(self) -> tf.Tensor:
        """(a + a_g, b + b_g, c + c_g) per group [G, 3], group 0's offsets 0."""
        offsets = tf.pad(tf.stack([self.a_g, self.b_g, self.c_g], axis=1), [[1, 0], [0, 0]])
        return tf.stack([self.a, self.b, self.c])[tf.newaxis] + offsets

    def logits(self, scores, groups) -> tf.Tensor:
        """z = (a + a_g g) log y - (b + b_g g) log(1 - y) + c + c_g g, shaped as ``scores``."""
        y = tf.clip_by_value(tf.cast(scores, tf.float32), EPSILON, 1.0 - EPSILON)
        params = tf.gather(self.group_parameters(), tf.reshape(tf.cast(groups, tf.int32), tf.shape(y)))
        return params[..., 0] * tf.math.log(y) - params[..., 1] * tf.math.log1p(-y) + params[..., 2]

    def call(self, scores, groups):
        return tf.sigmoid(self.logits(scores, groups))

    def get_config(self):
        return {**super().get_config(), "num_groups": self.num_groups}


def calibration_loss(layer: GroupBetaCalibration, scores, labels, groups) -> tf.Tensor:
    """Mean BCE of the calibrated probabilities (Eq. 14 as a loss), from the logits."""
    z = layer.logits(scores, groups)
    y = tf.reshape(tf.cast(labels, tf.float32), tf.shape(z))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z))


def fit_calibration(layer: GroupBetaCalibration, scores, labels, groups, max_iterations: int = 500) -> dict:
    """Fit ``layer``'s parameters on held-out (scores, labels, groups) by L-BFGS-B on
    :func:`calibration_loss`, starting from the layer's current values. Returns ``loss_before``,
    ``loss_after``, ``iterations``, ``converged``."""
    from scipy.optimize import minimize

    scores = tf.constant(np.asarray(scores, np.float32).reshape(-1))
    labels = tf.constant(np.asarray(labels, np.float32).reshape(-1))
    groups = tf.constant(np.asarray(groups, np.int32).reshape(-1))
    if not scores.shape == labels.shape == groups.shape:
        raise ValueError(f"fit_calibration: {scores.shape[0]} scores, {labels.shape[0]} labels, "
                         f"{groups.shape[0]} groups")
    variables = layer.trainable_variables
    sizes = [int(np.prod(v.shape)) for v in variables]

    @tf.function
    def loss_and_gradient():
        with tf.GradientTape() as tape:
            loss = calibration_loss(layer, scores, labels, groups)
        return loss, tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, variables)], axis=0)

    def assign(flat):
        for v, part in zip(variables, np.split(np.asarray(flat, np.float32), np.cumsum(sizes)[:-1])):
            v.assign(part.reshape(v.shape))

    def objective(flat):
        assign(flat)
        loss, grad = loss_and_gradient()
        return float(loss), grad.numpy().astype(np.float64)

    start = np.concatenate([v.numpy().reshape(-1) for v in variables]).astype(np.float64)
    before = objective(start)[0]
    result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": int(max_iterations)})
    assign(result.x)
    return {"loss_before": before, "loss_after": float(calibration_loss(layer, scores, labels, groups)),
            "iterations": int(result.nit), "converged": bool(result.success)}
