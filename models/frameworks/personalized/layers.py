"""The layers of APG, PEPNet and DGPM.

====================  ========================================================================
:class:`GeneratedMLP`  APG: an MLP whose hidden layers' parameters each layer's own generator
                       makes from a condition (low rank, shared U / V, over-parameterised)
:class:`GateNU`        PEPNet's Gate Neural Unit: delta = gamma * sigmoid(ReLU(x W + b) W' + b')
:class:`PPNetMLP`      PEPNet's PPNet: an MLP whose hidden units a Gate NU per layer scales
:class:`GroupMemory`   DGPM: group embeddings, a user's softmax weights over them by cosine
                       similarity, the memory's update
====================  ========================================================================

Every per-sample weight goes through :class:`models.layers.ConditionedDense` (APG's generated
layers, DGPM's group mixture via :class:`models.layers.ConditionedMLP`). The layers reading
embeddings (generators, gates, the memory) and the logits compute in float32; MLP hidden layers
after the first take the mixed policy (``models.layers.hidden_policy``), as :class:`models.layers.MLP`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from models import layers as L

_register = tf.keras.utils.register_keras_serializable("ctrflow")
MEMORY_UPDATES = ("gradient", "write")


# ---- APG --------------------------------------------------------------------------------------------
@_register
class GeneratedMLP(tf.keras.layers.Layer):
    """APG's MLP (Yan et al., NeurIPS'22, Sec. 3): hidden layer l computes

        h_l = act(h_{l-1} W_l(z) + b_l(z)),   W_l(z) = U_l S_l(z) V_l

    with U_l [in, K], V_l [K, out] shared by all samples (the common characteristics), S_l(z)
    [K, K] and b_l(z) generated per sample: [S_l, b_l] = A_l G_l(z) + a_l, G_l layer l's own
    generator MLP (``generator_units``; empty: the linear generator A_l z + a_l), the "specific
    parameters" of the paper. Computed decomposed, ((h U) S(z)) V, never the [B, in, out]
    kernels: a :class:`models.layers.ConditionedDense` (``rank`` K, ``overparam`` P: U = U_l U_r,
    V = V_l V_r, no shared kernel) on coefficients c = [G_l(z), 1] (the 1 carries a_l). A rank
    above min(in, out) is simply full rank.

    z is the call's condition (group / mix-wise: user features), or with ``self_wise`` each
    layer's own input h_{l-1} (the paper's self-wise condition). The logit is a static linear
    unit on h_L. Call with ``(x, z)``; returns (h_L, logit [B, 1] float32).
    """

    def __init__(self, units: Sequence[int] = (64, 32, 16), activation: str = "relu", dropout: float = 0.0,
                 rank: int = 8, overparam: Optional[int] = 64, generator_units: Sequence[int] = (512, 256),
                 generator_activation: str = "relu", self_wise: bool = False, **kw):
        super().__init__(**kw)
        self.units = [int(u) for u in units]
        self.activation, self.dropout_rate = activation, float(dropout)
        self.rank, self.overparam = int(rank), None if overparam is None else int(overparam)
        self.generator_units, self.generator_activation = [int(u) for u in generator_units], generator_activation
        self.self_wise = bool(self_wise)
        self.generators = [L.MLP(self.generator_units, generator_activation, name=f"generator_{i}")
                           for i in range(len(self.units))]
        self.dense = [L.ConditionedDense(u, rank=self.rank, shared_kernel=False, overparam=self.overparam,
                                         name=f"dense_{i}", dtype=L.mlp_layer_policy(i)) for i, u in enumerate(self.units)]
        self.acts = [L.activation_layer(activation, f"act_{i}", L.hidden_policy()) for i in range(len(self.units))]
        self.head = tf.keras.layers.Dense(1, name="logit", dtype="float32")

    def coefficients(self, index: int, condition, training=None) -> tf.Tensor:
        """c = [G_l(z), 1] of hidden layer ``index`` [B, H + 1] float32."""
        g = tf.cast(self.generators[index](condition, training=training), tf.float32)
        return tf.concat([g, tf.ones_like(g[:, :1])], axis=-1)

    def call(self, inputs, training=None):
        x, z = inputs
        for i, (dense, act) in enumerate(zip(self.dense, self.acts)):
            c = self.coefficients(i, x if self.self_wise else z, training=training)
            x = act(dense((x, c)), training=training)
            if training and self.dropout_rate > 0:  # seeded per step (models.layers.step_seed)
                x = L.dropout(x, self.dropout_rate)
        return x, tf.cast(self.head(x), tf.float32)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "dropout": self.dropout_rate, "rank": self.rank, "overparam": self.overparam,
                "generator_units": self.generator_units, "generator_activation": self.generator_activation,
                "self_wise": self.self_wise}


# ---- PEPNet ------------------------------------------------------------------------------------------
@_register
class GateNU(tf.keras.layers.Layer):
    """PEPNet's Gate Neural Unit (Chang et al., KDD'23, Eq. 1-2): x' = ReLU(x W + b),
    delta = gamma * sigmoid(x' W' + b') in (0, gamma); gamma = 2 centres the gate on 1 (the
    identity scaling) with room to amplify. x [B, D] -> delta [B, ``units``] float32."""

    def __init__(self, units: int, hidden_units: int = 64, gamma: float = 2.0, **kw):
        super().__init__(**kw)
        self.units, self.hidden_units, self.gamma = int(units), int(hidden_units), float(gamma)
        self.hidden = tf.keras.layers.Dense(self.hidden_units, activation="relu", name="hidden")
        self.out = tf.keras.layers.Dense(self.units, name="out")

    def call(self, x):
        return self.gamma * tf.sigmoid(tf.cast(self.out(self.hidden(x)), tf.float32))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "hidden_units": self.hidden_units, "gamma": self.gamma}


@_register
class PPNetMLP(tf.keras.layers.Layer):
    """PEPNet's PPNet (Eq. 6-8): hidden layer l computes H_l = act(H_{l-1} W_l + b_l) ⊙ delta_l(p),
    delta_l a :class:`GateNU` of its own on the gate input p (the personal prior with the
    stop-gradient'ed embeddings; the model builds it), then a linear logit. Call with
    ``(x, p)``; returns (H_L, logit [B, 1] float32)."""

    def __init__(self, units: Sequence[int] = (64, 32, 16), activation: str = "relu", dropout: float = 0.0,
                 gate_units: int = 64, gamma: float = 2.0, **kw):
        super().__init__(**kw)
        self.units, self.activation, self.dropout_rate = [int(u) for u in units], activation, float(dropout)
        self.gate_units, self.gamma = int(gate_units), float(gamma)
        self.dense = [tf.keras.layers.Dense(u, name=f"dense_{i}", dtype=L.mlp_layer_policy(i))
                      for i, u in enumerate(self.units)]
        self.acts = [L.activation_layer(activation, f"act_{i}", L.hidden_policy()) for i in range(len(self.units))]
        self.gates = [GateNU(u, self.gate_units, self.gamma, name=f"gate_{i}") for i, u in enumerate(self.units)]
        self.head = tf.keras.layers.Dense(1, name="logit", dtype="float32")

    def call(self, inputs, training=None):
        x, p = inputs
        for dense, act, gate in zip(self.dense, self.acts, self.gates):
            x = act(dense(x), training=training)
            x = x * tf.cast(gate(p), x.dtype)
            if training and self.dropout_rate > 0:  # seeded per step (models.layers.step_seed)
                x = L.dropout(x, self.dropout_rate)
        return x, tf.cast(self.head(x), tf.float32)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "dropout": self.dropout_rate, "gate_units": self.gate_units, "gamma": self.gamma}


# ---- DGPM --------------------------------------------------------------------------------------------
@_register
class GroupMemory(tf.keras.layers.Layer):
    """DGPM's group memory (Ma et al., CIKM'23, as GPRec Sec. III-B describes it): G group
    embeddings e_g, the memory's keys, read by content as a Neural Turing Machine reads
    (Graves et al., 2014, the memory network DGPM cites): a user's weights

        a = softmax_g(cos(u, e_g) / temperature),   r = sum_g a_g e_g

    (``temperature`` 1: the plain softmax over the cosines). ``update`` says how the keys learn:
    ``gradient`` (they are weights the loss trains, an end-to-end memory) or ``write`` (NTM's
    write M_g <- M_g (1 - a_g e) + a_g v with erase e = 1 and add v = u, averaged over the
    batch at rate ``rate``: e_g <- e_g + rate / B sum_i a_ig (u_i - e_g), in training only; the
    keys are then no trainable weights, per replica and averaged when read across replicas, as
    batch-normalisation statistics). u [B, D] -> (a [B, G], r [B, D]) float32."""

    def __init__(self, num_groups: int = 10, temperature: float = 1.0, update: str = "gradient",
                 rate: float = 1.0, **kw):
        super().__init__(**kw)
        if update not in MEMORY_UPDATES:
            raise ValueError(f"GroupMemory: update {update!r} is not one of {MEMORY_UPDATES}")
        self.num_groups, self.temperature = int(num_groups), float(temperature)
        self.update, self.rate = update, float(rate)

    def build(self, input_shape):
        written = self.update == "write"
        self.keys = self.add_weight(
            name="keys", shape=(self.num_groups, int(input_shape[-1])), initializer="random_normal",
            dtype=tf.float32, trainable=not written, experimental_autocast=False,
            synchronization=tf.VariableSynchronization.ON_READ if written else tf.VariableSynchronization.AUTO,
            aggregation=tf.VariableAggregation.MEAN if written else tf.VariableAggregation.NONE)
        super().build(input_shape)

    def call(self, u, training=None):
        u = tf.cast(u, tf.float32)
        keys = tf.identity(self.keys)  # this step's keys, read before any write
        cos = tf.matmul(tf.math.l2_normalize(u, axis=-1), tf.math.l2_normalize(keys, axis=-1), transpose_b=True)
        a = tf.nn.softmax(cos / self.temperature, axis=-1)
        r = tf.matmul(a, keys)
        if training and self.update == "write":
            a_, u_ = tf.stop_gradient(a), tf.stop_gradient(u)
            batch = tf.cast(tf.shape(u)[0], tf.float32)
            step = (tf.matmul(a_, u_, transpose_a=True) - tf.reduce_sum(a_, axis=0)[:, None] * keys) / batch
            self.keys.assign_add(self.rate * step)
        return a, r

    def get_config(self):
        return {**super().get_config(), "num_groups": self.num_groups, "temperature": self.temperature,
                "update": self.update, "rate": self.rate}
