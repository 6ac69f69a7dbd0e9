"""Per-task losses on predicted probabilities, usable with any backbone.

bce    binary cross-entropy (LogLoss), the CTR default
focal  Focal loss (Lin et al., ICCV'17): -a_t (1 - p_t)^gamma log p_t, with
       p_t the probability of the true class; defaults a = 0.25, gamma = 2
rce    Reweighted cross-entropy (Wang et al., WSDM'21 "Denoising implicit
       feedback", TF4CTR ref. [33]): positives weighted by stop_grad(p)^beta so
       hard positives (likely noise) count less; negatives weight 1; beta = 0.25

``twin_focus_loss`` (TF4CTR Eq. 7) is the auxiliary loss on two encoders' logits that
the tf4ctr framework adds to the compiled loss in its ``train_step``.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict

import tensorflow as tf

from models.options import OptionError, check_options

EPS = 1e-7


def _clip(y_true, y_pred):
    y_true = tf.cast(tf.reshape(y_true, [-1]), tf.float32)
    y_pred = tf.clip_by_value(tf.cast(tf.reshape(y_pred, [-1]), tf.float32), EPS, 1.0 - EPS)
    return y_true, y_pred


def true_class_probability(y_true, y_pred):
    """p_t: the predicted probability of the true class (TF4CTR's p in Eq. 7/12)."""
    y_true, y_pred = _clip(y_true, y_pred)
    return y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred)


@tf.keras.utils.register_keras_serializable("ctrflow")
class FocalLoss(tf.keras.losses.Loss):
    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name="focal", **kw):
        super().__init__(name=name, **kw)
        self.alpha, self.gamma = alpha, gamma

    def call(self, y_true, y_pred):
        y, _ = _clip(y_true, y_pred)
        p_t = true_class_probability(y_true, y_pred)
        a_t = y * self.alpha + (1.0 - y) * (1.0 - self.alpha)
        return -a_t * tf.pow(1.0 - p_t, self.gamma) * tf.math.log(p_t)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


@tf.keras.utils.register_keras_serializable("ctrflow")
class ReweightedCE(tf.keras.losses.Loss):
    def __init__(self, beta: float = 0.25, name="rce", **kw):
        super().__init__(name=name, **kw)
        self.beta = beta

    def call(self, y_true, y_pred):
        y, p = _clip(y_true, y_pred)
        weight = y * tf.pow(tf.stop_gradient(p), self.beta) + (1.0 - y)
        ce = -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
        return weight * ce

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


LOSSES = {
    "bce": tf.keras.losses.BinaryCrossentropy,
    "focal": FocalLoss,
    "rce": ReweightedCE,
}
# the model outputs probabilities, and the reduction is the trainer's: not loss options
_NOT_OPTIONS = ("self", "name", "reduction", "from_logits", "axis")
OPTION_RANGES = {"alpha": "[0, 1]", "gamma": "[0, inf)", "beta": "[0, inf)", "label_smoothing": "[0, 1]"}


def check_loss_options(name: str, options: Dict[str, Any], prefix: str = "loss_options.") -> Dict[str, Any]:
    """Loss ``name``'s options checked against its constructor's defaults and :data:`OPTION_RANGES`."""
    if name not in LOSSES:
        raise OptionError(f"loss = {name!r}: unknown loss; known: {sorted(LOSSES)}")
    params = inspect.signature(LOSSES[name].__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.name not in _NOT_OPTIONS
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return check_options(options, defaults, prefix, f"loss '{name}'", OPTION_RANGES)


def get_loss(name: str, **options) -> tf.keras.losses.Loss:
    return LOSSES[name](**check_loss_options(name, options))


def check_twin_focus_options(alpha: float, c: float, gamma: float) -> None:
    """Eq. 7's ranges: alpha, c in [0, 1]; gamma >= 0."""
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f"twin focus loss: alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= c <= 1.0:
        raise OptionError(f"twin focus loss: c must be in [0, 1], got {c}")
    if gamma < 0:
        raise OptionError(f"twin focus loss: gamma must be >= 0, got {gamma}")


def twin_focus_loss(y_true, z_simple, z_complex, alpha: float = 0.25, c: float = 0.8, gamma: float = 2.0,
                    sample_weight=None):
    """Twin Focus loss (TF4CTR Eq. 7) on the two encoders' logits z_s, z_c.

    L_TF = alpha * L_simple + (1 - alpha) * L_complex with
    L_simple = -mean((c + p_s)^gamma log p_s), L_complex = -mean((m - p_c)^gamma log p_c),
    m = 2 - c, where p is the probability of the true class (as in L_ctr, Eq. 12).
    Computed from logits (log p = log sigma(+-z)) so a saturated encoder keeps a finite,
    non-zero gradient; the modulating factors are differentiated too (Eq. 14). The mean
    is over the batch (Keras' SUM_OVER_BATCH_SIZE: sum(w * l) / N with sample weights).
    """
    check_twin_focus_options(alpha, c, gamma)
    y = tf.cast(tf.reshape(y_true, [-1]), tf.float32)
    sign = 2.0 * y - 1.0  # the true class's logit is sign * z

    def log_p_true(z):
        return tf.math.log_sigmoid(sign * tf.cast(tf.reshape(z, [-1]), tf.float32))

    log_ps, log_pc = log_p_true(z_simple), log_p_true(z_complex)
    simple = -tf.pow(c + tf.exp(log_ps), gamma) * log_ps
    complex_ = -tf.pow((2.0 - c) - tf.exp(log_pc), gamma) * log_pc
    per_sample = alpha * simple + (1.0 - alpha) * complex_
    if sample_weight is not None:
        per_sample = per_sample * tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
    return tf.reduce_sum(per_sample) / tf.cast(tf.maximum(tf.size(per_sample), 1), tf.float32)
