"""STAR's building blocks (Sheng et al., CIKM'21, §4): partitioned normalization (§4.1) and the
star topology fully-connected network (§4.2). Domains are indices r in [0, R) per row
(``models.domains``); batches may mix domains (the paper's mini-batches hold one domain each:
here each row is normalised with its own domain's rows of the batch, the same statistics)."""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from models.domains import select_domain
from models.layers import MovingMoments, activation_layer, dropout, hidden_policy, mlp_layer_policy


@tf.keras.utils.register_keras_serializable("ctrflow")
class PartitionedNormalization(tf.keras.layers.Layer):
    """PN (§4.1): z' = (gamma * gamma_p) (z - E) / sqrt(Var + eps) + (beta + beta_p) for a row of
    domain p, gamma / beta shared, gamma_p / beta_p domain p's (from 1 and 0: PN starts as BN).

    Training: E, Var are the batch moments of domain p's rows (a domain absent from the batch
    leaves its moving statistics unchanged); inference: domain p's own moving statistics E_p,
    Var_p (bias-corrected, :class:`models.layers.MovingMoments`, one update count per domain).
    ``num_domains=1`` with every row in domain 0 is plain batch normalisation (the paper's BN
    ablation). Normalises per unit of x [B, D]; computes in float32."""

    def __init__(self, num_domains: int, momentum: float = 0.99, epsilon: float = 1e-3, **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)
        self.num_domains, self.momentum, self.epsilon = int(num_domains), float(momentum), float(epsilon)
        if self.num_domains < 1 or not self.epsilon > 0:
            raise ValueError(f"PartitionedNormalization: num_domains must be >= 1 and epsilon > 0, got "
                             f"{num_domains}, {epsilon}")

    def build(self, input_shape):
        units, r = int(input_shape[-1]), self.num_domains
        self.gamma = self.add_weight(name="gamma", shape=(units,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(units,), initializer="zeros")
        self.domain_gamma = self.add_weight(name="domain_gamma", shape=(r, units), initializer="ones")
        self.domain_beta = self.add_weight(name="domain_beta", shape=(r, units), initializer="zeros")
        self.moving = MovingMoments(self, "moving_", (r, units), self.momentum, groups=r)
        super().build(input_shape)

    def call(self, x, domain, training=None):
        x = tf.cast(x, tf.float32)
        domain = tf.cast(tf.reshape(domain, [-1]), tf.int32)
        if training:
            rows = tf.one_hot(domain, self.num_domains, dtype=tf.float32)  # [B, R]
            n = tf.maximum(tf.reduce_sum(rows, axis=0), 1.0)[:, None]  # [R, 1]
            mean = tf.matmul(rows, x, transpose_a=True) / n  # [R, D]
            variance = tf.matmul(rows, tf.square(x - tf.gather(mean, domain)), transpose_a=True) / n
            self.moving.update(mean, variance, tf.reduce_sum(rows, axis=0)[:, None] > 0)
        else:
            mean, variance = self.moving.read()
        scale = self.gamma * tf.gather(self.domain_gamma, domain)
        shift = self.beta + tf.gather(self.domain_beta, domain)
        return scale * (x - tf.gather(mean, domain)) * tf.math.rsqrt(tf.gather(variance, domain) + self.epsilon) + shift

    def get_config(self):
        return {**super().get_config(), "num_domains": self.num_domains, "momentum": self.momentum,
                "epsilon": self.epsilon}


@tf.keras.utils.register_keras_serializable("ctrflow")
class StarDense(tf.keras.layers.Layer):
    """One star topology layer (§4.2): out = (W_p ⊙ W)^T x + (b_p + b) for a row of domain p,
    W / b shared by every domain, W_p / b_p domain p's (from 1 and 0: every domain starts as the
    shared layer, and a domain without training rows stays the shared layer).

    Every domain's layer runs on every row and each row keeps its own domain's output
    (:func:`models.domains.select_domain`): R times the FLOPs of one dense layer, no per-row
    weight copies ([B, in, out]) and no data-dependent shapes, so it runs as is on GPU / TPU; the
    attribute domains of a user (GPRec's gender, activity degree) are a handful. A row's output,
    hence its loss, reads no other domain's W_q, b_q."""

    def __init__(self, units: int, num_domains: int, **kw):
        super().__init__(**kw)
        self.units, self.num_domains = int(units), int(num_domains)

    def build(self, input_shape):
        fan_in, r = int(input_shape[-1]), self.num_domains
        self.kernel = self.add_weight(name="kernel", shape=(fan_in, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.domain_kernel = self.add_weight(name="domain_kernel", shape=(r, fan_in, self.units), initializer="ones")
        self.domain_bias = self.add_weight(name="domain_bias", shape=(r, self.units), initializer="zeros")
        super().build(input_shape)

    def call(self, x, domain):
        x = tf.cast(x, self.compute_dtype)
        kernels = self.kernel[None] * self.domain_kernel  # W_p* = W_p ⊙ W, [R, in, out]
        out = tf.einsum("bi,rio->bro", x, kernels) + (self.bias[None] + self.domain_bias)[None]  # [B, R, out]
        return select_domain(out, domain)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "num_domains": self.num_domains}


@tf.keras.utils.register_keras_serializable("ctrflow")
class StarFCN(tf.keras.layers.Layer):
    """The star topology FCN (§4.2): star layers of ``units`` with ``activation`` (and dropout in
    training) and a 1-unit star layer, the FCN's logit s_m [B, 1] float32. The layers take
    :func:`models.layers.mlp_layer_policy` under mixed precision (as :class:`models.layers.MLP`)."""

    def __init__(self, units: Sequence[int], num_domains: int, activation: str = "relu", dropout: float = 0.0,
                 **kw):
        super().__init__(**kw)
        self.units, self.num_domains = [int(u) for u in units], int(num_domains)
        self.activation, self.dropout_rate = activation, float(dropout)
        hidden = hidden_policy()
        self.star = [StarDense(u, self.num_domains, name=f"star_{i}", dtype=mlp_layer_policy(i))
                     for i, u in enumerate(self.units)]
        self.acts = [activation_layer(activation, f"act_{i}", hidden) for i in range(len(self.units))]
        self.logit = StarDense(1, self.num_domains, name="logit", dtype="float32")

    def call(self, x, domain, training=None):
        for star, act in zip(self.star, self.acts):
            x = act(star(x, domain), training=training)
            if training and self.dropout_rate > 0:  # seeded per step (models.layers.step_seed)
                x = dropout(x, self.dropout_rate)
        return tf.cast(self.logit(x, domain), tf.float32)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "num_domains": self.num_domains,
                "activation": self.activation, "dropout": self.dropout_rate}
