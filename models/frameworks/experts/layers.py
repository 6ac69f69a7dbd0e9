"""The gate of an experts model: softmax weights over the experts a mixture reads."""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from models import layers as L


@tf.keras.utils.register_keras_serializable("ctrflow")
class ExpertGate(tf.keras.layers.Layer):
    """x [B, D] -> g = softmax(W MLP(x) + b) [B, n] float32: MMoE's g^k(x) = softmax(W_gk x)
    (Ma et al., Eq. 6) and PLE's w^k(x) (Tang et al., Eq. 3) with ``units`` empty (the default),
    an MLP gate with hidden ``units``. ``use_input=False`` ignores x but its batch size: g =
    softmax(v) of a learned vector v, the same weights for every sample (a fixed mixture)."""

    def __init__(self, num_experts: int, units: Sequence[int] = (), activation: str = "relu",
                 use_input: bool = True, **kw):
        super().__init__(**kw)
        self.num_experts, self.units = int(num_experts), [int(u) for u in units]
        self.activation, self.use_input = activation, bool(use_input)
        if self.use_input:
            self.mlp = L.MLP(self.units, activation, name="mlp")
            self.out = tf.keras.layers.Dense(self.num_experts, name="logits", dtype="float32")

    def build(self, input_shape):
        if not self.use_input:
            self.logits = self.add_weight(name="logits", shape=(self.num_experts,), initializer="zeros")
        super().build(input_shape)

    def call(self, x, training=None):
        if self.use_input:
            return tf.nn.softmax(tf.cast(self.out(self.mlp(x, training=training)), tf.float32), axis=-1)
        return tf.tile(tf.nn.softmax(self.logits)[None, :], [tf.shape(x)[0], 1])

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts, "units": self.units,
                "activation": self.activation, "use_input": self.use_input}
