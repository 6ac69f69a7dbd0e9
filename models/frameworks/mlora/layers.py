"""MLoRA's layers (Yang et al., RecSys'24, §3): a dense layer with one LoRA adapter per domain,
and an MLP of them. Domains are indices d in [0, R) per row (``models.domains``); a batch may mix
domains (the paper's batches hold one domain each), every row reads its own domain's adapter."""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from models import layers as L
from models.domains import select_domain

_register = tf.keras.utils.register_keras_serializable("ctrflow")


def lora_rank(units: int, temperature: float, rank: Optional[int] = None) -> int:
    """A layer's adapter rank: ``rank`` when given, else MLoRA's r = max(floor(units / alpha), 1)
    with the temperature coefficient alpha (the layer's output width divided by alpha)."""
    if rank is not None:
        return int(rank)
    return max(int(int(units) // float(temperature)), 1)


@_register
class LoRADense(tf.keras.layers.Layer):
    """One MLoRA layer for a row of domain d (LoRA, Hu et al. 2021, per domain):

        y = x W + b + (x A_d) B_d  [+ b_d]

    W [in, out], b shared by every domain; A_d [in, r] random (uniform, Glorot's limit over
    (in, r)), B_d [r, out] zero, so at initialisation every domain's layer is the shared one and
    training starts from the shared network; ``domain_bias`` adds a domain bias b_d (from 0).

    Computed as x [A_1 .. A_R] (one [in, R r] matmul), each row's own r columns kept
    (:func:`models.domains.select_domain`), times every B_q, each row's own kept again: no
    per-row [in, out] kernels, and a row's output (hence its loss) reads no other domain's A_q,
    B_q, b_q, so they get no gradient from it. Call with ``(x, domain [B])``; no activation."""

    def __init__(self, units: int, num_domains: int, rank: int, domain_bias: bool = False, **kw):
        super().__init__(**kw)
        self.units, self.num_domains, self.rank = int(units), int(num_domains), int(rank)
        self.domain_bias = bool(domain_bias)
        if min(self.units, self.num_domains, self.rank) < 1:
            raise ValueError(f"LoRADense: units, num_domains and rank must be >= 1, got {units}, {num_domains}, "
                             f"{rank}")

    def build(self, input_shape):
        fan_in, r, k = int(input_shape[-1]), self.num_domains, self.rank
        self.kernel = self.add_weight(name="kernel", shape=(fan_in, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        limit = (6.0 / (fan_in + k)) ** 0.5
        self.lora_a = self.add_weight(name="lora_a", shape=(r, fan_in, k),
                                      initializer=tf.keras.initializers.RandomUniform(-limit, limit))
        self.lora_b = self.add_weight(name="lora_b", shape=(r, k, self.units), initializer="zeros")
        self.lora_bias = (self.add_weight(name="lora_bias", shape=(r, self.units), initializer="zeros")
                          if self.domain_bias else None)
        super().build(input_shape)

    @property
    def adapter_variables(self):
        """A, B (and the domain biases) of every domain (none before the layer is built)."""
        if not self.built:
            return []
        return [v for v in (self.lora_a, self.lora_b, self.lora_bias) if v is not None]


    def call(self, x, domain):
        x = tf.cast(x, self.compute_dtype)
        domain = tf.cast(tf.reshape(domain, [-1]), tf.int32)
        r, k = self.num_domains, self.rank
        a = tf.reshape(tf.transpose(self.lora_a, [1, 0, 2]), [-1, r * k])          # [in, R r]
        low = select_domain(tf.reshape(x @ a, [-1, r, k]), domain)                   # x A_d  [B, r]
        delta = select_domain(tf.einsum("bk,rko->bro", low, self.lora_b), domain)    # x A_d B_d  [B, out]
        y = x @ self.kernel + self.bias + delta
        if self.lora_bias is not None:
            y += tf.gather(self.lora_bias, domain)
        return y

    def get_config(self):
        return {**super().get_config(), "units": self.units, "num_domains": self.num_domains, "rank": self.rank,
                "domain_bias": self.domain_bias}


@_register
class LoRAMLP(tf.keras.layers.Layer):
    """An MLP of :class:`LoRADense` hidden layers (``units``, ``activation``, dropout in training)
    and a 1-unit logit, a :class:`LoRADense` too with ``adapt_logit`` (else a shared Dense): every
    fully-connected layer of the network has its per-domain adapter. Layer l's rank is
    :func:`lora_rank` of its width (``temperature``, or a fixed ``rank``). The layers take
    :func:`models.layers.mlp_layer_policy` (as :class:`models.layers.MLP`), the logit float32. Call with ``(x, domain)``; returns
    (h_L, logit [B, 1] float32)."""

    def __init__(self, units: Sequence[int], num_domains: int, activation: str = "relu", dropout: float = 0.0,
                 temperature: float = 32.0, rank: Optional[int] = None, adapt_logit: bool = True,
                 domain_bias: bool = False, **kw):
        super().__init__(**kw)
        self.units, self.num_domains = [int(u) for u in units], int(num_domains)
        self.activation, self.dropout_rate = activation, float(dropout)
        self.temperature, self.rank = float(temperature), None if rank is None else int(rank)
        self.adapt_logit, self.domain_bias = bool(adapt_logit), bool(domain_bias)
        hidden = L.hidden_policy()
        self.dense = [LoRADense(u, self.num_domains, lora_rank(u, self.temperature, self.rank), self.domain_bias,
                                name=f"dense_{i}", dtype=L.mlp_layer_policy(i))
                      for i, u in enumerate(self.units)]
        self.acts = [L.activation_layer(activation, f"act_{i}", hidden) for i in range(len(self.units))]
        self.head = (LoRADense(1, self.num_domains, lora_rank(1, self.temperature, self.rank), self.domain_bias,
                               name="logit", dtype="float32")
                     if self.adapt_logit else tf.keras.layers.Dense(1, name="logit", dtype="float32"))

    @property
    def lora_layers(self):
        return self.dense + ([self.head] if self.adapt_logit else [])

    @property
    def adapter_variables(self):
        return [v for layer in self.lora_layers for v in layer.adapter_variables]

    @property
    def shared_variables(self):
        adapters = {v.ref() for v in self.adapter_variables}
        return [v for v in self.trainable_variables if v.ref() not in adapters]

    def call(self, inputs, training=None):
        x, domain = inputs
        for dense, act in zip(self.dense, self.acts):
            x = act(dense(x, domain), training=training)
            if training and self.dropout_rate > 0:  # seeded per step (models.layers.step_seed)
                x = L.dropout(x, self.dropout_rate)
        logit = self.head(x, domain) if self.adapt_logit else self.head(x)
        return x, tf.cast(logit, tf.float32)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "num_domains": self.num_domains,
                "activation": self.activation, "dropout": self.dropout_rate, "temperature": self.temperature,
                "rank": self.rank, "adapt_logit": self.adapt_logit, "domain_bias": self.domain_bias}
