"""Rec4Ad's building blocks (Gao et al., Sec. 3.2): source-aware batch normalisation (Eq. 6)
and the decorrelation loss (Eq. 11-12).

Sources are coded as the ``_source`` side input is: 1 = ad sample, 0 = rec (pseudo-ad) sample.
"""
from __future__ import annotations

import tensorflow as tf

from models.layers import MovingMoments

AD, REC = 1, 0
DECORRELATIONS = ("printed", "pearson")


@tf.keras.utils.register_keras_serializable("ctrflow")
class SourceAwareBatchNorm(tf.keras.layers.Layer):
    """SABN (Eq. 6): gamma_s (e - mu_s) / sqrt(sigma_s^2 + eps) + beta_s, s in {ad, rec}.

    Each source has its own scale, shift and moving statistics. In training each row is
    normalised with the batch moments of its own source's rows (a source absent from the batch
    leaves its moving statistics unchanged); at inference each row takes its source's branch with
    its moving statistics, and without ``source`` every row takes the **ad** branch, as the
    served model does. ``shared=True`` is the ablation "w/o SABN" (Fig. 6): one
    batch normalisation for both sources. Normalises over the batch axis only, per feature of the
    remaining axes (fields [B, F, d]: per field and dimension); computes in float32.

    The moving statistics are bias-corrected exponential averages
    (:class:`models.layers.MovingMoments`): Keras-style averages starting at (0, 1) still
    mis-scaled the served embeddings (variance ~1e-4) after ~100 steps (measured on the
    simulator: ECE 0.29 on the random-policy log).
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, shared: bool = False, **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)
        self.momentum, self.epsilon, self.shared = float(momentum), float(epsilon), bool(shared)
        if not self.epsilon > 0:
            raise ValueError(f"SourceAwareBatchNorm: epsilon must be > 0, got {epsilon}")

    def build(self, input_shape):
        shape = tuple(input_shape[1:])
        self.branches = []
        for name in ("ad",) if self.shared else ("ad", "rec"):
            self.branches.append(dict(
                gamma=self.add_weight(name=f"{name}_gamma", shape=shape, initializer="ones"),
                beta=self.add_weight(name=f"{name}_beta", shape=shape, initializer="zeros"),
                moving=MovingMoments(self, f"{name}_moving_", shape, self.momentum)))
        super().build(input_shape)

    def _normalise(self, x, branch, mean, var):
        return branch["gamma"] * (x - mean) * tf.math.rsqrt(var + self.epsilon) + branch["beta"]

    def _train_branch(self, x, branch, rows):
        """The branch applied to every row with the moments of ``rows`` ([B] 0/1 float mask); a
        source absent from the batch leaves its moving statistics unchanged."""
        mask = tf.reshape(rows, [-1] + [1] * (x.shape.rank - 1))
        n = tf.reduce_sum(rows)
        mean = tf.reduce_sum(x * mask, axis=0) / tf.maximum(n, 1.0)
        var = tf.reduce_sum(tf.square(x - mean) * mask, axis=0) / tf.maximum(n, 1.0)
        branch["moving"].update(mean, var, n > 0)
        return self._normalise(x, branch, mean, var)

    def call(self, x, source=None, training=None):
        x = tf.cast(x, tf.float32)
        if self.shared and training:
            return self._train_branch(x, self.branches[0], tf.ones(tf.shape(x)[:1], tf.float32))
        if self.shared or (source is None and not training):
            return self._normalise(x, self.branches[0], *self.branches[0]["moving"].read())
        if source is None:
            raise ValueError("SourceAwareBatchNorm: training needs the source of every row")
        is_ad = tf.cast(tf.equal(tf.reshape(source, [-1]), AD), tf.float32)
        if training:
            ad = self._train_branch(x, self.branches[0], is_ad)
            rec = self._train_branch(x, self.branches[1], 1.0 - is_ad)
        else:
            ad, rec = (self._normalise(x, b, *b["moving"].read()) for b in self.branches)
        return tf.where(tf.reshape(is_ad > 0, [-1] + [1] * (x.shape.rank - 1)), ad, rec)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon, "shared": self.shared}


def cross_correlations(p: tf.Tensor, q: tf.Tensor, rows: tf.Tensor, form: str = "printed",
                       epsilon: float = 1e-8) -> tf.Tensor:
    """Upsilon(p_i, q_j) [d_p, d_q] over the rows of one source (Eq. 11).

    Cov(p_i, q_j) = (p_i - mean p_i)^T (q_j - mean q_j) over the in-batch vectors of the rows with
    ``rows`` = 1. ``printed`` divides by sqrt(Cov(p_i, p_i)) only, as Eq. 11 is printed;
    ``pearson`` also by sqrt(Cov(q_j, q_j)) (the Pearson correlation the text names).
    """
    if form not in DECORRELATIONS:
        raise ValueError(f"decorrelation form '{form}': expected one of {DECORRELATIONS}")
    p, q = tf.cast(p, tf.float32), tf.cast(q, tf.float32)
    m = tf.cast(rows, tf.float32)[:, None]
    n = tf.maximum(tf.reduce_sum(m), 1.0)
    pc = (p - tf.reduce_sum(p * m, axis=0) / n) * m
    qc = (q - tf.reduce_sum(q * m, axis=0) / n) * m
    ups = tf.matmul(pc, qc, transpose_a=True) * tf.math.rsqrt(tf.reduce_sum(tf.square(pc), axis=0) + epsilon)[:, None]
    if form == "pearson":
        ups = ups * tf.math.rsqrt(tf.reduce_sum(tf.square(qc), axis=0) + epsilon)[None, :]
    return ups


def decorrelation_loss(x_inv: tf.Tensor, x_con: tf.Tensor, source: tf.Tensor, form: str = "printed") -> tf.Tensor:
    """L_D (Eq. 12): sum over the d x d pairs of Upsilon(p_i^s, q_j^s)^2, summed over both sources."""
    is_ad = tf.cast(tf.equal(source, AD), tf.float32)
    return tf.add_n([tf.reduce_sum(tf.square(cross_correlations(x_inv, x_con, rows, form)))
                     for rows in (is_ad, 1.0 - is_ad)])
