"""GPRec's layers (Wang et al., "GPRec: Bi-level User Modeling for Deep Recommenders", Sec. III-B).

=====================  ====================================================================
:class:`GroupClassifier`  g (Eq. 2): flatten(E_u) -> log S, the log of G per-group softmaxes
                          [B, G, k] (k = 2: s^1, s^0 of the dual form; k = 1: one score per
                          group, softmax over the G groups, GPRec-1 / DGPM)
:class:`GumbelMasks`      Eq. 3-4: log S [B, G, 2] -> M [B, G, 2] = (m^1, m^0), Gumbel noise in
                          training only
:class:`GroupEmbedding`   E_G (Eq. 5) and r_G = M (.) E_G (Eq. 6), concatenated or summed over
                          the groups
:class:`GroupPredictor`   f_1 (Eq. 7, 10): an MLP whose weights can be read frozen (theta_1 fixed)
:class:`PersonalRepresentation`  f_2 (Eq. 12): E_p -> r_P, as wide as r_G
=====================  ====================================================================

All of them compute in float32 (built inside ``models.layers.precision_sensitive``): they read
the field embeddings or feed a temperature-scaled softmax, and hold a small share of the FLOPs.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from models import layers as L

CLASSIFIERS = ("per_group", "shared_trunk")
POOLINGS = ("concat", "sum")

_register = tf.keras.utils.register_keras_serializable("ctrflow")


def _glorot(fan_in: int, fan_out: int) -> tf.keras.initializers.Initializer:
    """Glorot-uniform over one (fan_in, fan_out) matrix, for weights stacked over groups."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return tf.keras.initializers.RandomUniform(-limit, limit)


@_register
class GroupClassifier(tf.keras.layers.Layer):
    """The group classifier g (Eq. 2): flatten(E_u) [B, D_u] -> log S [B, G, k] float32.

    ``per_group`` (the paper, Sec. IV-A4: "[64, 32, 2] for each group"): G independent MLPs
    ``units`` -> k, computed at once with weights stacked over the groups ([G, in, out], one
    batched matmul per layer over group-major activations [G, B, units]). ``shared_trunk``: one
    MLP ``units`` shared by the groups, then G k-way linear heads. S is positive, as Eq. 3 takes
    log s: with ``k = 2`` a softmax over each group's pair (s^1_i + s^0_i = 1); with ``k = 1`` a
    softmax over the G groups (GPRec-1's division, as DGPM's).
    """

    def __init__(self, num_groups: int, units: Sequence[int] = (64, 32), outputs: int = 2,
                 mode: str = "per_group", activation: str = "relu", **kw):
        super().__init__(**kw)
        if mode not in CLASSIFIERS:
            raise ValueError(f"GroupClassifier: mode {mode!r} is not one of {CLASSIFIERS}")
        if int(outputs) not in (1, 2) or int(num_groups) < 1:
            raise ValueError(f"GroupClassifier: outputs must be 1 or 2 and num_groups >= 1, got {outputs}, "
                             f"{num_groups}")
        self.num_groups, self.outputs, self.mode = int(num_groups), int(outputs), mode
        self.units = [int(u) for u in units]
        self.activation_name = activation
        self.activation = tf.keras.activations.get(activation)
        if mode == "shared_trunk":
            self.trunk = L.MLP(self.units, activation, name="trunk")
            self.heads = tf.keras.layers.Dense(self.num_groups * self.outputs, name="heads")

    def build(self, input_shape):
        if self.mode == "per_group":
            sizes = [int(input_shape[-1]), *self.units, self.outputs]
            self.kernels, self.biases = [], []
            for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
                self.kernels.append(self.add_weight(name=f"kernel_{i}", shape=(self.num_groups, fan_in, fan_out),
                                                   initializer=_glorot(fan_in, fan_out)))
                self.biases.append(self.add_weight(name=f"bias_{i}", shape=(self.num_groups, fan_out),
                                                   initializer="zeros"))
        super().build(input_shape)

    def call(self, e_u, training=None):
        x = tf.cast(e_u, tf.float32)
        if self.mode == "per_group":
            # group-major [G, B, units]: every layer is G matrix products (one batched matmul, x
            # broadcast over the groups in the first), with no transpose of the activations between
            # layers (einsums over [B, G, units] made them): a GPRec step 1.5x faster on one thread
            h = tf.matmul(x[None], self.kernels[0]) + self.biases[0][:, None]  # every group reads E_u
            for kernel, bias in zip(self.kernels[1:], self.biases[1:]):
                h = tf.matmul(self.activation(h), kernel) + bias[:, None]
            h = tf.transpose(h, [1, 0, 2])
        else:
            h = tf.reshape(self.heads(self.trunk(x, training=training)), [-1, self.num_groups, self.outputs])
        h = tf.cast(h, tf.float32)
        if self.outputs == 2:
            return tf.nn.log_softmax(h, axis=-1)  # log s^1, log s^0 per group
        return tf.nn.log_softmax(h, axis=1)  # one score per group, softmax over the groups

    def get_config(self):
        return {**super().get_config(), "num_groups": self.num_groups, "units": self.units,
                "outputs": self.outputs, "mode": self.mode, "activation": self.activation_name}


@_register
class GumbelMasks(tf.keras.layers.Layer):
    """Eq. 3-4: log S [B, G, 2] -> M [B, G, 2] = (m^1, m^0) float32.

    m^1_i = softmax_j((log s^j_i + gn^j_i) / tau) at j = 1, gn = -log(-log u), u ~ U(0, 1) i.i.d.
    per sample, group and j, and m^0_i = 1 - m^1_i. The noise is drawn in training only, through
    ``models.layers.random_uniform`` (stateless inside the step's ``step_seed``: a step's masks
    are a function of (seed, step), so a resumed run repeats them); at inference
    m^1 = softmax(log s / tau), deterministic. A user may be in several groups (each group's mask
    is its own two-way choice).
    """

    def __init__(self, temperature: float = 0.5, **kw):
        super().__init__(**kw)
        if not float(temperature) > 0:
            raise ValueError(f"GumbelMasks: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def call(self, log_s, training=None):
        logits = tf.cast(log_s, tf.float32)
        if training:
            u = L.random_uniform(tf.shape(logits), 1e-10, 1.0)
            logits = logits - tf.math.log(-tf.math.log(u))  # + Gumbel(0, 1)
        m1 = tf.nn.softmax(logits / self.temperature, axis=-1)[..., :1]  # Eq. 3
        return tf.concat([m1, 1.0 - m1], axis=-1)  # Eq. 4

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@_register
class GroupEmbedding(tf.keras.layers.Layer):
    """The group embeddings E_G and the group representation r_G (Eq. 5-6).

    ``dual`` (the paper): E_G = [p_1..p_G; n_1..n_G] (weights ``positive`` and ``negative``,
    [G, d] each) and, for masks M [B, G, 2], r_G = M (.) E_G: group i's pattern
    m^1_i p_i + m^0_i n_i. Not dual (GPRec-1): one embedding e_i per group (``positive``) and
    weights w [B, G] (the classifier's softmax over the groups), group i's pattern w_i e_i.
    ``pooling``: ``concat`` [B, G * d] (Eq. 6) or ``sum`` [B, d] (the paper's alternative for a
    large G; for GPRec-1 it is DGPM's weighted sum sum_i w_i e_i). The contrasting r_G^Con of
    Eq. 9 is this layer on (1 - M), i.e. M with m^1 and m^0 swapped.
    """

    def __init__(self, num_groups: int, dim: int, dual: bool = True, pooling: str = "concat",
                 initializer_stddev: float = 0.01, **kw):
        super().__init__(**kw)
        if pooling not in POOLINGS:
            raise ValueError(f"GroupEmbedding: pooling {pooling!r} is not one of {POOLINGS}")
        self.num_groups, self.dim, self.dual, self.pooling = int(num_groups), int(dim), bool(dual), pooling
        self.initializer_stddev = float(initializer_stddev)

    @property
    def width(self) -> int:
        """The width of r_G."""
        return self.num_groups * self.dim if self.pooling == "concat" else self.dim

    def build(self, input_shape):
        # an initializer each: an unseeded Keras initializer called twice repeats its values (p_i = n_i)
        init = lambda: tf.keras.initializers.RandomNormal(stddev=self.initializer_stddev)  # noqa: E731
        shape = (self.num_groups, self.dim)
        self.positive = self.add_weight(name="positive", shape=shape, initializer=init())
        self.negative = self.add_weight(name="negative", shape=shape, initializer=init()) if self.dual else None
        super().build(input_shape)

    def call(self, masks):
        """``masks``: M [B, G, 2] (dual) or the weights w [B, G] (single) -> r_G float32."""
        masks = tf.cast(masks, tf.float32)
        if self.dual:
            patterns = masks[..., :1] * self.positive + masks[..., 1:] * self.negative  # [B, G, d]
        else:
            patterns = masks[..., None] * self.positive
        if self.pooling == "sum":
            return tf.reduce_sum(patterns, axis=1)
        return tf.reshape(patterns, [-1, self.num_groups * self.dim])

    def get_config(self):
        return {**super().get_config(), "num_groups": self.num_groups, "dim": self.dim, "dual": self.dual,
                "pooling": self.pooling, "initializer_stddev": self.initializer_stddev}


@_register
class GroupPredictor(tf.keras.layers.Layer):
    """f_1 (Eq. 7): an MLP (``units``, then a 1-unit logit) on [r_G, flatten(E_v)] -> logit [B, 1].

    ``frozen=True`` evaluates it with theta_1 fixed (Eq. 10): the same weights read through
    ``stop_gradient``, so a loss on that output sends no gradient into f_1 while its inputs
    (r_G^Con, hence E_G and g) still get theirs. One definition, one set of weights.
    """

    def __init__(self, units: Sequence[int] = (64, 32, 16), activation: str = "relu", **kw):
        super().__init__(**kw)
        self.units = [int(u) for u in units]
        self.activation_name = activation
        self.activation = tf.keras.activations.get(activation)

    def build(self, input_shape):
        sizes = [int(input_shape[-1]), *self.units, 1]
        self.kernels, self.biases = [], []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.kernels.append(self.add_weight(name=f"kernel_{i}", shape=(fan_in, fan_out),
                                                initializer="glorot_uniform"))
            self.biases.append(self.add_weight(name=f"bias_{i}", shape=(fan_out,), initializer="zeros"))
        super().build(input_shape)

    def call(self, x, frozen=False):
        read = tf.stop_gradient if frozen else tf.identity
        h = tf.cast(x, tf.float32)
        last = len(self.kernels) - 1
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            h = h @ read(kernel) + read(bias)
            if i < last:
                h = self.activation(h)
        return h

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation_name}


@_register
class PersonalRepresentation(tf.keras.layers.Layer):
    """f_2 (Eq. 12): flatten(E_p) -> r_P [B, width] float32, an MLP (hidden ``units``) whose own
    output layer is linear and ``width`` wide (r_G's width, so Eq. 13 compares r_G and r_P with no
    projection in between). Linear so that r_P, like r_G (a mix of real-valued embeddings), can
    point in any direction."""

    def __init__(self, width: int, units: Sequence[int] = (64,), activation: str = "relu", **kw):
        super().__init__(**kw)
        self.width, self.units, self.activation_name = int(width), [int(u) for u in units], activation
        self.hidden = L.MLP(self.units, activation, name="mlp")
        self.out = tf.keras.layers.Dense(self.width, name="out", dtype="float32")

    def call(self, e_p, training=None):
        return tf.cast(self.out(self.hidden(e_p, training=training)), tf.float32)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "units": self.units, "activation": self.activation_name}
