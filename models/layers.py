"""Shared building blocks of the backbones, one place each.

Every layer computes in its compute dtype, builds its weights from the shapes it first
sees (so a branch may receive embeddings of a different width than the model's, as
TF4CTR's SER does) and implements ``get_config``. Shapes: ``B`` batch, ``F`` fields,
``d`` embedding width.

Mixed precision (``mixed_bfloat16`` / ``mixed_float16``): models build their layers
inside :func:`precision_sensitive`, so the embeddings, every layer that reads the
field embeddings (explicit interactions, an MLP's first layer) and the logits compute
in float32, and only an MLP's hidden layers after its first take the mixed policy
(:func:`hidden_policy`). Those hidden layers hold nearly all the FLOPs (DNN
[400, 400, 400] on 10 fields: 320 k of 384 k multiply-adds per example). The placement
(:func:`mixed_precision`'s ``placement``) moves more into the mixed dtype: ``mlp`` every
MLP layer, the first included; ``embeddings`` also the field embeddings as handed on
(tables and logits stay float32 in every placement). ``docs/benchmarks.md`` measures
the three (speed and AUC against float32).
"""
from __future__ import annotations

import contextlib
import re
from typing import List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

_register = tf.keras.utils.register_keras_serializable("ctrflow")


def plain(value):
    """A JSON-ready copy of a config value: Keras wraps dicts/lists assigned to layers
    in tracking proxies, and tuples become lists."""
    if isinstance(value, Mapping) or callable(getattr(value, "items", None)):  # _DictWrapper is no Mapping
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def safe_name(text: str) -> str:
    """``text`` as a Keras layer / weight name: characters other than letters, digits, ``_.-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _int_list(values, what: str) -> list:
    out = [int(v) for v in values]
    if any(v <= 0 for v in out):
        raise ValueError(f"{what} must be positive integers, got {list(values)}")
    return out


_OUTER_POLICIES: List[tf.keras.mixed_precision.Policy] = []


@contextlib.contextmanager
def global_policy(name: str):
    """Keras' global dtype policy is ``name`` inside; the caller's comes back after.
    Yields the caller's policy."""
    outer = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield outer
    finally:
        tf.keras.mixed_precision.set_global_policy(outer)


PLACEMENTS = ("hidden", "mlp", "embeddings")  # what computes in the mixed dtype (module docstring)
_PLACEMENTS: List[str] = []


@contextlib.contextmanager
def mixed_precision(precision: str, placement: str = "hidden"):
    """Keras' global policy is ``precision`` inside, and models built inside put their
    mixed-dtype layers where ``placement`` says (:data:`PLACEMENTS`, module docstring);
    the caller's policy and placement come back after. Yields the caller's policy."""
    if placement not in PLACEMENTS:
        raise ValueError(f"precision placement {placement!r} not in {list(PLACEMENTS)}")
    _PLACEMENTS.append(placement)
    try:
        with global_policy(precision) as outer:
            yield outer
    finally:
        _PLACEMENTS.pop()


def _placement() -> str:
    return _PLACEMENTS[-1] if _PLACEMENTS else "hidden"


def mlp_layer_policy(index: int):
    """The dtype policy of an MLP's layer ``index``: :func:`hidden_policy`, but for the
    first layer (it reads the fields) under placement ``hidden``: None, its builder's
    (float32 inside :func:`precision_sensitive`)."""
    return None if index == 0 and _placement() == "hidden" else hidden_policy()


def embedding_output_dtype() -> Optional[str]:
    """The dtype the field embeddings are handed on in: the mixed compute dtype under
    placement ``embeddings`` (the tables stay float32), else None (the embedding's own)."""
    dtype = hidden_policy().compute_dtype
    return dtype if _placement() == "embeddings" and dtype != "float32" else None


@contextlib.contextmanager
def precision_sensitive():
    """Layers constructed inside compute in float32 whatever the global policy; MLP
    hidden layers take :func:`hidden_policy` (the module docstring says why)."""
    with global_policy("float32") as outer:
        _OUTER_POLICIES.append(outer)
        try:
            yield
        finally:
            _OUTER_POLICIES.pop()


def hidden_policy() -> tf.keras.mixed_precision.Policy:
    """The policy of MLP hidden layers: the global one outside :func:`precision_sensitive`."""
    return _OUTER_POLICIES[0] if _OUTER_POLICIES else tf.keras.mixed_precision.global_policy()


# ---- random draws of a training step ---------------------------------------------------
_STEP_SEEDS: List[list] = []


@contextlib.contextmanager
def step_seed(seed, dropout_impl: str = "bits"):
    """Random ops of the layers called inside (dropout, Gumbel noise) draw statelessly from
    ``seed`` ([2] int64: the global seed and the training step), each op from its own fold of
    it, so a step's draws are a pure function of (seed, step): a resumed run repeats them.
    Outside, they draw from TF's stateful generator (inference never draws). ``dropout_impl``
    (:data:`DROPOUT_IMPLS`) is how :func:`dropout` draws its masks inside."""
    if dropout_impl not in DROPOUT_IMPLS:
        raise ValueError(f"dropout_impl {dropout_impl!r} not in {DROPOUT_IMPLS}")
    _STEP_SEEDS.append([seed, 0, dropout_impl])
    try:
        yield
    finally:
        _STEP_SEEDS.pop()


def _op_seed():
    """The next random op's stateless seed in the current :func:`step_seed`, or None."""
    if not _STEP_SEEDS:
        return None
    entry = _STEP_SEEDS[-1]
    entry[1] += 1
    return tf.random.experimental.stateless_fold_in(entry[0], entry[1])


def random_uniform(shape, minval: float, maxval: float, dtype=tf.float32):
    """``tf.random.uniform``, stateless inside :func:`step_seed`."""
    seed = _op_seed()
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype)


# ---- dropout -----------------------------------------------------------------------------
DROPOUT_IMPLS = ("bits", "uniform")
DROPOUT_BITS = 16  # width of one draw of the ``bits`` dropout: its drop probability is exact to 2^-16


def dropout_threshold(rate: float) -> int:
    """The integer threshold T = round(rate * 2^16) of the ``bits`` dropout: a unit is dropped
    when its 16-bit draw (uniform on 0 .. 65535) is below T, so its exact drop probability is
    T / 65536, within 2^-17 of ``rate`` (rate 0.2: T = 13107, 0.1999969...; 0.5: exactly 0.5).
    A rate that would round to no dropout (0 < rate < 2^-17) or to dropping every unit
    (rate >= 1 - 2^-17) is refused with a ValueError rather than changed silently."""
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    threshold = int(round(rate * (1 << DROPOUT_BITS)))
    if rate > 0 and threshold == 0:
        raise ValueError(f"dropout rate {rate} rounds to 0 on the 1/65536 grid of the 16-bit dropout "
                         f"(it would drop nothing); use rate 0 or at least 2^-16")
    if threshold >= 1 << DROPOUT_BITS:
        raise ValueError(f"dropout rate {rate} rounds to 1 on the 1/65536 grid of the 16-bit dropout "
                         f"(it would drop every unit)")
    return threshold


def _draw_bits(n, seed) -> tf.Tensor:
    """``n`` (an int, or an int32 scalar tensor when the size is dynamic) independent uniform
    16-bit draws as int16 [n]: ceil(n / 2) full-range int32 draws (stateless from ``seed``,
    stateful when None), each bitcast to its two 16-bit halves."""
    if seed is None:  # a stateful draw of the seed (tf.random.uniform has no full-range ints)
        seed = tf.random.uniform([2], 0, tf.int64.max, tf.int64)
    words = tf.random.stateless_uniform([(n + 1) // 2], seed, minval=None, maxval=None, dtype=tf.int32)
    halves = tf.reshape(tf.bitcast(words, tf.int16), [-1])  # a view: no op on the data
    return halves if isinstance(n, int) and n % 2 == 0 else halves[:n]


@tf.custom_gradient
def _masked(x, mask):
    """x * mask, whose gradient is dy * mask (and none for the mask): nothing is redrawn or
    re-selected in the backward pass."""
    return x * mask, lambda dy: (dy * mask, None)


def dropout(x, rate: float, impl: Optional[str] = None):
    """Keras' dropout of ``x`` (training only: callers apply it when ``training``): each unit
    is zeroed with probability ``rate``, the kept ones scaled by 1 / (1 - rate). Inside
    :func:`step_seed` the draw is stateless from the op's fold of the step's seed (a resumed
    run repeats the masks), outside it is stateful (a user calling a layer eagerly in
    training mode). ``impl`` (default: the step's ``dropout_impl``, else ``bits``):

    ``bits``: the keep mask from random integer bits compared with an integer threshold.
      ceil(n / 2) full-range int32 draws are bitcast into n 16-bit draws (one Philox draw
      serves two units: the split is a view, no shift or mask op), a unit is kept when its
      draw >= T = round(rate * 2^16) (:func:`dropout_threshold`; the drop probability is
      exactly T / 65536, within 2^-17 of ``rate``, and the kept values are scaled by
      Keras' 1 / (1 - rate), so E[y] / x = (1 - T / 65536) / (1 - rate), 1 + 3.8e-6 at 0.2).
      The mask m = where(keep, 1 / (1 - rate), 0) is built once in ``x``'s dtype (the
      compute dtype: bfloat16 / float16 hidden layers under mixed precision, no float32
      round trip); forward x * m, backward dy * m (``tf.custom_gradient``).
    ``uniform``: ``tf.nn.experimental.stateless_dropout`` (``tf.nn.dropout`` outside a step),
      the previous implementation: float uniforms, compare, select and multiply, whose
      gradient re-runs the select and multiply.

    Why ``bits`` (issue 15): on MovieLens-1M, DNN [400, 400, 400], dropout 0.2, batch 4096,
    a 2-core Xeon, Keras-style dropout cost 17-20 ms of a 56-60 ms float32 training step
    (RandomUniform, SelectV2, Mul, GreaterEqual over 3 layers, forward and backward) and
    about twice that under mixed_bfloat16. A dropout from integer bits, applied with one
    multiply and a custom gradient dy * mask, measured 48.9 ms float32 / 37.0 ms bfloat16
    with 8-bit draws and 53.1 / 39.8 with 16-bit draws (the issue's numbers). This
    implementation, profiled here (``bench/step_profile.py``, AMD EPYC): the dropout's op time
    per step falls from 29.4 to 17.8 ms in float32 and from 47.4 to 20.5 ms in bfloat16; a DNN
    epoch is 1.13-1.23x faster (``docs/benchmarks.md``). The two implementations draw different masks from the
    same seed, so switching (``TrainConfig.dropout_impl``) changes a run's draws.
    """
    with tf.name_scope("dropout"):  # its ops (and their gradients) named as such in a profile
        impl = impl or (_STEP_SEEDS[-1][2] if _STEP_SEEDS else "bits")
        if impl not in DROPOUT_IMPLS:
            raise ValueError(f"dropout impl {impl!r} not in {DROPOUT_IMPLS}")
        if impl == "uniform":
            seed = _op_seed()
            if seed is None:
                return tf.nn.dropout(x, rate)
            return tf.nn.experimental.stateless_dropout(x, rate, seed)
        threshold = dropout_threshold(rate)
        x = tf.convert_to_tensor(x)
        if threshold == 0:
            return x
        seed = _op_seed()
        size = x.shape.num_elements()
        bits = tf.reshape(_draw_bits(tf.size(x) if size is None else size, seed), tf.shape(x))
        keep = bits >= tf.constant(threshold - (1 << (DROPOUT_BITS - 1)), tf.int16)  # signed: draw - 2^15 >= T - 2^15
        scale = tf.convert_to_tensor(1.0 / (1.0 - float(rate)), dtype=x.dtype)  # as tf.nn.dropout rounds it
        return _masked(x, tf.where(keep, scale, tf.zeros([], x.dtype)))


@tf.custom_gradient
def _reverse_gradient(x, alpha):
    def grad(upstream):
        # -alpha * g computed in float32 and rounded once to g's dtype: the exact value in
        # float32, the correctly rounded one in bfloat16 / float16
        return tf.cast(-alpha * tf.cast(upstream, tf.float32), upstream.dtype), tf.zeros_like(alpha)

    return tf.identity(x), grad


@_register
class GradientReversal(tf.keras.layers.Layer):
    """y = x forward, dL/dx = -alpha dL/dy backward (Ganin & Lempitsky's gradient-reversal
    layer; Rec4Ad's domain alignment): what follows it is trained to separate, what precedes
    it to confuse. Keeps the input's dtype; ``alpha`` is a float32 constant of the config."""

    def __init__(self, alpha: float = 1.0, **kw):
        kw.setdefault("dtype", None)
        super().__init__(**kw)
        if not float(alpha) >= 0:
            raise ValueError(f"GradientReversal: alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self._autocast = False  # the input keeps its dtype (bf16 in, bf16 out)

    def call(self, x):
        return _reverse_gradient(x, tf.constant(self.alpha, tf.float32))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


def _upper_pairs(num_fields: int):
    """Row/column indices (i, j) with i < j of an F x F matrix, row-major."""
    return np.triu_indices(num_fields, k=1)


# ---- moving statistics -------------------------------------------------------------------
class MovingMoments:
    """Bias-corrected moving mean and variance of a layer's batch statistics (what it uses at
    inference in place of the batch's): exponential averages with momentum m starting at 0,
    divided by 1 - m^t after t updates, as Adam corrects its moments, so they are the batches'
    own from the first update. (Keras' BatchNormalization starts its variance at 1 and, at
    m = 0.99, still holds a third of that after 100 steps: runs of a few hundred steps then
    serve mis-scaled activations.) (0, 1) before any update. Weights float32, per replica and
    averaged when read across replicas, as BatchNormalization's.

    ``groups`` > 0 keeps that many independent statistics, the leading axis of ``shape`` (STAR's
    partitioned normalization: per domain), each with its own update count, so a group absent
    from some batches is still corrected by its own number of updates."""

    def __init__(self, layer: tf.keras.layers.Layer, prefix: str, shape, momentum: float, groups: int = 0):
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"{layer.name}: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        shape = tuple(int(s) for s in shape)
        if groups and (not shape or shape[0] != groups):
            raise ValueError(f"{layer.name}: {groups} groups need statistics of shape ({groups}, ...), got {shape}")
        self.counts = (int(groups),) + (1,) * (len(shape) - 1) if groups else ()
        kw = dict(trainable=False, dtype=tf.float32, synchronization=tf.VariableSynchronization.ON_READ,
                  aggregation=tf.VariableAggregation.MEAN, initializer="zeros", experimental_autocast=False)
        self.mean = layer.add_weight(name=f"{prefix}mean", shape=shape, **kw)
        self.variance = layer.add_weight(name=f"{prefix}variance", shape=shape, **kw)
        self.updates = layer.add_weight(name=f"{prefix}updates", shape=self.counts, **kw)

    def update(self, mean, variance, present) -> None:
        """One step's batch moments; nothing changes where ``present`` (a scalar, per-unit or, with
        groups, per-group [groups, 1, ...] bool) is False."""
        keep = tf.where(present, self.momentum, 1.0)
        self.mean.assign(self.mean * keep + mean * (1.0 - keep))
        self.variance.assign(self.variance * keep + variance * (1.0 - keep))
        if self.counts:
            seen = tf.reduce_any(tf.broadcast_to(present, self.mean.shape), axis=list(range(1, self.mean.shape.rank)))
            self.updates.assign_add(tf.reshape(tf.cast(seen, tf.float32), self.counts))
        else:
            self.updates.assign_add(tf.cast(tf.reduce_any(present), tf.float32))

    def read(self):
        """(mean, variance), bias-corrected."""
        seen = self.updates > 0
        done = tf.maximum(1.0 - tf.pow(self.momentum, self.updates), 1e-12)
        return tf.where(seen, self.mean / done, 0.0), tf.where(seen, self.variance / done, 1.0)


# ---- activations with weights of their own ----------------------------------------------
LAYER_ACTIVATIONS = ("dice", "prelu")  # activation names MLP builds as layers (one per hidden layer)


@_register
class Dice(tf.keras.layers.Layer):
    """Dice, DIN's data-adaptive activation (Zhou et al., KDD'18: PReLU's f(s) of Eq. 8 with
    Dice's control function p(s) of Eq. 9).

    p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + epsilon)), f(s) = p(s) s + (1 - p(s)) alpha s,
    per unit (the last axis): E and Var are the batch's (over every other axis; only where
    ``mask`` [B, L] is True, so padded behaviours do not move them, unlike the authors' code)
    in training and their bias-corrected moving averages (:class:`MovingMoments`, ``momentum``)
    at inference; a batch with no unmasked position leaves them as they are. ``alpha`` is
    learned per unit, from 0 as in the authors' code. The statistics are computed in float32 whatever the
    compute dtype (a bf16 variance is too coarse for the sigmoid's centre).
    """

    def __init__(self, epsilon: float = 1e-8, momentum: float = 0.99, **kw):
        super().__init__(**kw)
        self.epsilon, self.momentum = float(epsilon), float(momentum)
        if not self.epsilon > 0 or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"Dice: epsilon must be > 0 and momentum in [0, 1), got {epsilon}, {momentum}")

    def build(self, input_shape):
        units = int(input_shape[-1])
        # float32 under mixed precision too (no autocast)
        self.alpha = self.add_weight(name="alpha", shape=(units,), initializer="zeros", dtype=tf.float32,
                                     experimental_autocast=False)
        self.moving = MovingMoments(self, "moving_", (units,), self.momentum)
        super().build(input_shape)

    def call(self, x, training=None, mask=None):
        s = tf.cast(x, tf.float32)
        if training:
            mean, variance, count = self._moments(s, mask)
            self.moving.update(mean, variance, count > 0)
        else:
            mean, variance = self.moving.read()
        p = tf.sigmoid((s - mean) * tf.math.rsqrt(variance + self.epsilon))
        return tf.cast(p * s + (1.0 - p) * self.alpha * s, x.dtype)

    @staticmethod
    def _moments(s: tf.Tensor, mask) -> tuple:
        """Mean, (biased) variance and count per unit over the positions ``mask`` keeps."""
        axes = list(range(s.shape.rank - 1))
        w = tf.ones_like(s) if mask is None else tf.broadcast_to(tf.cast(mask, s.dtype)[..., None], tf.shape(s))
        count = tf.reduce_sum(w, axis=axes)
        mean = tf.reduce_sum(w * s, axis=axes) / tf.maximum(count, 1.0)
        variance = tf.reduce_sum(w * tf.square(s - mean), axis=axes) / tf.maximum(count, 1.0)
        return mean, variance, count

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}


def activation_layer(name: str, layer_name: str, dtype=None) -> tf.keras.layers.Layer:
    """The layer applying activation ``name``: Dice or PReLU (with weights per unit, DIN's
    two), else the Keras activation of that name."""
    if name == "dice":
        return Dice(name=layer_name, dtype=dtype)
    if name == "prelu":
        return tf.keras.layers.PReLU(name=layer_name, dtype=dtype)
    return tf.keras.layers.Activation(name, name=layer_name, dtype=dtype)


# ---- MLP ---------------------------------------------------------------------------
@_register
class MLP(tf.keras.layers.Layer):
    """Dense -> [BatchNorm] -> activation -> [Dropout], per hidden layer.

    ``units=()`` is the identity (a backbone whose deep part is switched off). ``activation``
    is a Keras name or one of :data:`LAYER_ACTIVATIONS` (a layer of its own per hidden layer,
    :func:`activation_layer`). The Dense layers take :func:`mlp_layer_policy` (the first
    reads the input in the layer's own dtype unless the placement says otherwise);
    everything after it computes in :func:`hidden_policy` (mixed precision's fast part).
    """

    def __init__(self, units: Sequence[int] = (400, 400, 400), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, l2_reg: float = 0.0, **kw):
        super().__init__(**kw)
        self.units = _int_list(units, "MLP units")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1), got {dropout}")
        self.activation_name = activation
        self.dropout_rate = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.l2_reg = float(l2_reg)
        reg = tf.keras.regularizers.l2(self.l2_reg) if self.l2_reg > 0 else None
        hidden = hidden_policy()
        self.dense = [tf.keras.layers.Dense(u, kernel_regularizer=reg, name=f"dense_{i}", dtype=mlp_layer_policy(i))
                      for i, u in enumerate(self.units)]
        self.norms = ([tf.keras.layers.BatchNormalization(name=f"bn_{i}", dtype=hidden)
                       for i in range(len(self.units))] if self.batch_norm else [])
        self.acts = [activation_layer(activation, f"act_{i}", hidden) for i in range(len(self.units))]

    def call(self, x, training=None, mask=None):
        """``mask`` (x without its last axis; e.g. a sequence's non-padding) keeps masked-out
        positions out of batch normalisation's and Dice's batch statistics."""
        masked = {"mask": mask} if mask is not None else {}
        for i, dense in enumerate(self.dense):
            x = dense(x)
            if self.batch_norm:
                x = self.norms[i](x, training=training, **masked)
            x = self.acts[i](x, training=training, **(masked if isinstance(self.acts[i], Dice) else {}))
            if training and self.dropout_rate > 0:  # seeded per step (step_seed)
                x = dropout(x, self.dropout_rate)
        return x

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation_name,
                "dropout": self.dropout_rate, "batch_norm": self.batch_norm, "l2_reg": self.l2_reg}


@_register
class Tower(tf.keras.layers.Layer):
    """An MLP and a 1-unit logit on its output: ``x -> (h, w^T h + b)``."""

    def __init__(self, units: Sequence[int] = (400, 400, 400), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, l2_reg: float = 0.0, **kw):
        super().__init__(**kw)
        self.mlp = MLP(units, activation, dropout, batch_norm, l2_reg, name="mlp")
        self.head = tf.keras.layers.Dense(1, name="logit")

    def call(self, x, training=None):
        h = self.mlp(x, training=training)
        return h, self.head(h)

    def get_config(self):
        cfg = self.mlp.get_config()
        return {**super().get_config(), **{k: cfg[k] for k in
                                           ("units", "activation", "dropout", "batch_norm", "l2_reg")}}


# ---- per-sample (dynamic) parameters ----------------------------------------------------------
@_register
class ConditionedDense(tf.keras.layers.Layer):
    """A dense layer whose parameters move per sample with coefficients c [B, H]:

        y = act(x (W_0 + sum_h c_h W_h) + b_0 + sum_h c_h b_h)

    the one mechanism behind "parameters generated from a condition": GPRec's dynamic
    parameters theta_y + W_DP (Eq. 15-16, c = f_DP's last hidden layer, so W_DP = ReShape of a
    linear map of c), DGPM's mixture of group parameters (c = the group weights, no shared W_0)
    and APG's low-rank generation (``rank=K``: W_h = U S_h V with U [in, K] and V [K, out] shared,
    S_h [K, K], so x W(c) = ((x U) S(c)) V, the decomposed feed-forward). ``overparam=P`` (>= K)
    is APG's over-parameterisation: U = U_l U_r and V = V_l V_r with inner width P, the same
    function class with more weights to train (the products cost in*P*K + K*P*out multiply-adds
    per call, not per sample: the serving-time merge of the paper).

    Computed as x W_h for every h, then weighted by c ([B, H, out]), never the B per-sample
    kernels [B, in, out]. ``shared_kernel=False`` drops W_0 and b_0 (the parameters are the
    generated ones only). Call with ``(x, c)``.
    """

    def __init__(self, units: int, rank: Optional[int] = None, shared_kernel: bool = True,
                 activation: Optional[str] = None, overparam: Optional[int] = None, **kw):
        super().__init__(**kw)
        self.units, self.shared_kernel = int(units), bool(shared_kernel)
        self.rank = None if rank is None else int(rank)
        self.overparam = None if overparam is None else int(overparam)
        if self.units < 1 or (self.rank is not None and self.rank < 1):
            raise ValueError(f"ConditionedDense: units and rank must be >= 1, got {units}, {rank}")
        if self.overparam is not None and (self.rank is None or self.overparam < self.rank):
            raise ValueError(f"ConditionedDense: overparam needs a rank and must be >= it, got rank {rank}, "
                             f"overparam {overparam}")
        self.activation_name = activation
        self.activation = tf.keras.activations.get(activation)

    def build(self, input_shape):
        x_shape, c_shape = input_shape
        width, count = int(x_shape[-1]), int(c_shape[-1])
        if self.shared_kernel:
            self.kernel = self.add_weight(name="kernel", shape=(width, self.units), initializer="glorot_uniform")
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        inner = (width, self.units) if self.rank is None else (self.rank, self.rank)
        if self.rank is not None and self.overparam is None:
            self.u = self.add_weight(name="u", shape=(width, self.rank), initializer="glorot_uniform")
            self.v = self.add_weight(name="v", shape=(self.rank, self.units), initializer="glorot_uniform")
        elif self.rank is not None:  # U = U_l U_r, V = V_l V_r through the inner width P
            p = self.overparam
            self.u_left = self.add_weight(name="u_left", shape=(width, p), initializer="glorot_uniform")
            self.u_right = self.add_weight(name="u_right", shape=(p, self.rank), initializer="glorot_uniform")
            self.v_left = self.add_weight(name="v_left", shape=(self.rank, p), initializer="glorot_uniform")
            self.v_right = self.add_weight(name="v_right", shape=(p, self.units), initializer="glorot_uniform")
        # W_h [in, out] (or S_h [K, K]) for every h, glorot over (in, out) each
        limit = (6.0 / (inner[0] + inner[1])) ** 0.5
        self.kernels = self.add_weight(name="kernels", shape=(inner[0], count * inner[1]),
                                       initializer=tf.keras.initializers.RandomUniform(-limit, limit))
        self.biases = self.add_weight(name="biases", shape=(count, self.units), initializer="zeros")
        super().build(input_shape)

    def low_rank_factors(self):
        """(U [in, K], V [K, out]) of a low-rank layer (the products under ``overparam``)."""
        if self.overparam is None:
            return self.u, self.v
        return self.u_left @ self.u_right, self.v_left @ self.v_right

    def call(self, inputs):
        x, c = inputs
        c = tf.cast(c, self.compute_dtype)
        u, v = self.low_rank_factors() if self.rank is not None else (None, None)
        z = x @ u if self.rank is not None else x                              # x U (low rank)
        inner = self.kernels.shape[1] // c.shape[-1]
        per_kernel = tf.reshape(z @ self.kernels, [-1, c.shape[-1], inner])   # x W_h  [B, H, out]
        y = tf.einsum("bho,bh->bo", per_kernel, c)                             # sum_h c_h x W_h
        if self.rank is not None:
            y = y @ v
        y += c @ self.biases
        if self.shared_kernel:
            y += x @ self.kernel + self.bias
        return self.activation(y)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rank": self.rank,
                "shared_kernel": self.shared_kernel, "activation": self.activation_name, "overparam": self.overparam}


@_register
class ConditionedMLP(tf.keras.layers.Layer):
    """An MLP (hidden ``units`` then a 1-unit logit) whose every layer is a
    :class:`ConditionedDense` on coefficients c = G(condition), G an MLP of ``generator_units``
    (``()``: c is the condition itself, a mixture of parameter sets). One generator feeds every
    layer, as GPRec's f_DP whose output is reshaped into all of f_y's parameters (Eq. 15).
    Call with ``(x, condition)``; returns (the last hidden layer, the logit)."""

    def __init__(self, units: Sequence[int] = (64, 32, 16), activation: str = "relu",
                 generator_units: Sequence[int] = (64,), generator_activation: str = "relu",
                 rank: Optional[int] = None, shared_kernel: bool = True, **kw):
        super().__init__(**kw)
        self.units = _int_list(units, "ConditionedMLP units")
        self.generator_units = _int_list(generator_units, "ConditionedMLP generator_units")
        self.activation_name, self.generator_activation = activation, generator_activation
        self.rank, self.shared_kernel = rank, bool(shared_kernel)
        self.generator = MLP(self.generator_units, generator_activation, name="generator")
        self.layers_ = [ConditionedDense(u, rank, shared_kernel, activation, name=f"dense_{i}")
                        for i, u in enumerate(self.units)]
        self.head = ConditionedDense(1, None, shared_kernel, name="logit")

    def call(self, inputs, training=None):
        x, condition = inputs
        c = self.generator(condition, training=training)
        for layer in self.layers_:
            x = layer((x, c))
        return x, self.head((x, c))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation_name,
                "generator_units": self.generator_units, "generator_activation": self.generator_activation,
                "rank": self.rank, "shared_kernel": self.shared_kernel}


@_register
class FirstOrder(tf.keras.layers.Layer):
    """The linear (LR) part: ``b + sum_i w_i`` over the per-field first-order terms [B, F]."""

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(1,), initializer="zeros")
        super().build(input_shape)

    def call(self, linear):
        return tf.reduce_sum(linear, axis=-1, keepdims=True) + tf.cast(self.bias, linear.dtype)


# ---- pairwise (second-order) interactions: the FM family ------------------------------------
def _identity_matrices(shape, dtype=None, **_):
    """[n, k, k] identity matrices: the projection interaction starts as the plain product."""
    return tf.eye(int(shape[1]), batch_shape=[int(shape[0])], dtype=dtype or tf.float32)


class PairwiseInteraction(tf.keras.layers.Layer):
    """The FM family's second-order term, one mechanism for FM, FwFM, FFM and GwPFM:

        sum_{i<j} w_ij f(e_{i,P(j)}, e_{j,P(i)})  ->  [B, k]

    Field i's embedding ([B, F, P*k]) holds one k-vector per field *part*; against field j it
    uses the vector of j's part P(j) (FM, FwFM: one part; FFM: a part per field; GwPFM, Tencent
    KDD'24 Eq. 4: a few). w_ij weighs the pair (FwFM's r_ij, GwPFM's r_{G(i),G(j)}; 1 for FM
    and FFM). f is the element-wise product, or with ``projection`` the projection interaction
    (Tencent KDD'24 Sec. 4.4, Eq. 5): f(e_i, e_j) = (e_i M_{F(i)->F(j)}) ⊙ e_j, one k x k
    matrix per field pair i < j, initialised to the identity so training starts from the plain
    interaction (a collapsed field then no longer confines its partners to its own subspace).
    Summed over k the result is each sample's term (never summed over the batch).

    Subclasses give each field's part (``_field_parts``) and the pair weights (``_weight_matrix``).
    Without projection the sum is dense (``_plain``: sum_{i,p} e_{i,p} * sum_{j,q} W4[p,q,i,j]
    e_{j,q} with W4 = w_ij [i < j][P(j) = p][P(i) = q], P^2 F^2 k multiply-adds per sample, 2-4x
    faster on CPU than gathering the pairs when there are few parts; FM keeps Lemma 3.1's O(F k),
    FFM (P = F) its own dense form); with projection the pairs are gathered (``_pairwise``).
    After ``build``: ``pair_rows`` / ``pair_cols`` (the pairs i < j, row-major), ``parts`` (P(i)
    per field), ``latent_dim`` (k) and, with ``projection``, ``projection_matrices`` [pairs, k, k]
    (M of each pair, read by ``pipeline/collapse.py``).
    """

    def __init__(self, projection: bool = False, **kw):
        super().__init__(**kw)
        self.projection = bool(projection)

    def _field_parts(self, num_fields: int) -> np.ndarray:
        """P(i) of every field (default: a single part)."""
        return np.zeros(num_fields, np.int64)

    def _weight_matrix(self) -> Optional[tf.Tensor]:
        """w_ij as an F x F matrix (only i < j is read), or None (every pair weighs 1)."""
        return None

    def build(self, input_shape):
        f, width = int(input_shape[1]), int(input_shape[2])
        self.parts = np.asarray(self._field_parts(f), np.int64)
        self.num_parts = int(self.parts.max()) + 1 if f else 1
        if width % self.num_parts:
            raise ValueError(f"{self.name}: {self.num_parts} field parts need field embeddings of width "
                             f"{self.num_parts} * k, got {list(input_shape)}")
        self.latent_dim = width // self.num_parts
        self.pair_rows, self.pair_cols = _upper_pairs(f)
        # rows of the [B, F * P, k] view: e_{i,P(j)} (left) and e_{j,P(i)} (right) of each pair
        self._left = (self.pair_rows * self.num_parts + self.parts[self.pair_cols]).astype(np.int32)
        self._right = (self.pair_cols * self.num_parts + self.parts[self.pair_rows]).astype(np.int32)
        if self.projection:
            k = self.latent_dim
            self.projection_matrices = self.add_weight(name="projection", shape=(len(self.pair_rows), k, k),
                                                       initializer=_identity_matrices)
        super().build(input_shape)

    def call(self, fields):
        return self._pairwise(fields) if self.projection else self._plain(fields)

    def _plain(self, fields):
        """The interaction without projection, dense (see the class docstring)."""
        f, p = len(self.parts), self.num_parts
        v = tf.reshape(fields, [-1, f, p, self.latent_dim])
        mask = np.zeros((p, p, f, f), np.float32)  # [P(j), P(i), i, j] of the pairs i < j
        mask[self.parts[self.pair_cols], self.parts[self.pair_rows], self.pair_rows, self.pair_cols] = 1.0
        w = self._weight_matrix()
        w4 = tf.cast(mask if w is None else w[None, None] * mask, v.dtype)
        u = tf.einsum("pqij,bjqk->bipk", w4, v)  # u[b, i, p] = sum_{j > i, P(j) = p} w_ij e_{j,P(i)}
        return tf.reduce_sum(v * u, axis=[1, 2])

    def _pairwise(self, fields):
        """Each pair's vectors gathered: [B, pairs, k] operands, M applied with ``projection``."""
        v = tf.reshape(fields, [-1, fields.shape[1] * self.num_parts, self.latent_dim])
        left, right = tf.gather(v, self._left, axis=1), tf.gather(v, self._right, axis=1)  # [B, pairs, k]
        if self.projection:  # Eq. 5: e_i M_{F(i)->F(j)}
            left = tf.einsum("bpk,pkl->bpl", left, tf.cast(self.projection_matrices, left.dtype))
        pairs = left * right
        w = self._weight_matrix()
        if w is not None:
            w = tf.gather(tf.reshape(w, [-1]), (self.pair_rows * len(self.parts) + self.pair_cols).astype(np.int32))
            pairs = pairs * tf.cast(w, pairs.dtype)[None, :, None]
        return tf.reduce_sum(pairs, axis=1)

    def get_config(self):
        return {**super().get_config(), "projection": self.projection}


@_register
class FMInteraction(PairwiseInteraction):
    """FM's bi-interaction pooling (Rendle, ICDM'10): sum_{i<j} v_i * v_j -> [B, d].

    Plain, by Lemma 3.1's 0.5 ((sum v)^2 - sum v^2) in O(F d); with ``projection`` (Eq. 5 of
    :class:`PairwiseInteraction`) a matrix per pair breaks that identity: the pairwise form.
    """

    def _plain(self, fields):
        square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))
        sum_of_square = tf.reduce_sum(tf.square(fields), axis=1)
        return 0.5 * (square_of_sum - sum_of_square)


@_register
class FieldWeightedInteraction(PairwiseInteraction):
    """FwFM (Pan et al., WWW'18, Eq. 4): sum_{i<j} r_{F(i),F(j)} v_i * v_j -> [B, d].

    One scalar weight per field pair (the strict upper triangle of ``pair_weights`` R),
    initialised to 1 so training starts from FM.
    """

    def build(self, input_shape):
        f = int(input_shape[1])
        self.pair_weights = self.add_weight(name="pair_weights", shape=(f, f), initializer="ones")
        super().build(input_shape)

    def _weight_matrix(self):
        return self.pair_weights


@_register
class FieldAwareInteraction(PairwiseInteraction):
    """FFM (Juan et al., RecSys'16, Eq. 3): sum_{i<j} v_{i,F(j)} * v_{j,F(i)} -> [B, k].

    Input [B, F, F*k]: field i's row holds its F latent vectors of width k, the j-th
    being the one used against field j (what FeatureEmbedding gives when built with
    ``embedding_dim = F * k``, see ``FFM.input_embedding_dim``): a part per field.
    """

    def __init__(self, num_fields: int, **kw):
        super().__init__(**kw)
        self.num_fields = int(num_fields)

    def _field_parts(self, num_fields):
        if num_fields != self.num_fields:
            raise ValueError(f"FFM expects [batch, {self.num_fields}, {self.num_fields}*k] field embeddings, "
                             f"got {num_fields} fields")
        return np.arange(num_fields)

    def _plain(self, fields):
        f = self.num_fields
        v = tf.reshape(fields, [-1, f, f, self.latent_dim])  # v[b, i, j] = v_{i, F(j)}
        pair = v * tf.transpose(v, [0, 2, 1, 3])  # [b, i, j] = v_{i,F(j)} * v_{j,F(i)}
        upper = np.triu(np.ones((f, f), np.float32), k=1)[:, :, None]  # the pairs i < j
        return tf.reduce_sum(pair * tf.cast(upper, v.dtype), axis=[1, 2])

    def get_config(self):
        return {**super().get_config(), "num_fields": self.num_fields}


@_register
class GwPFMInteraction(PairwiseInteraction):
    """GwPFM (Tencent KDD'24 Sec. 4.3, Eq. 4): sum_{i<j} e_{i,P(j)} * e_{j,P(i)} r_{G(i),G(j)} -> [B, k];
    summed over k, the scalar Phi.

    ``field_parts`` gives P(i) and ``field_groups`` G(i) of every field (indices from 0); the
    input is [B, F, P*k] with P = max part + 1 (P embeddings per feature, one per part, instead
    of FFM's F). r, the learnable weight of each field-group pair, is ``group_weights`` R
    (G x G) read symmetrically, r_{g,h} = r_{h,g} = R[min(g, h), max(g, h)], initialised to 1.
    FM (one part, one group), FFM (a part per field, one group) and FwFM (one part, a group per
    field, R its pair weights) are special cases (``tests/models/test_gwpfm.py``). Eq. 4's
    x_i x_j is inside the embeddings (an identity-encoded field is value * v).
    """

    def __init__(self, field_parts: Sequence[int], field_groups: Sequence[int], projection: bool = False, **kw):
        super().__init__(projection=projection, **kw)
        self.field_parts, self.field_groups = [int(p) for p in field_parts], [int(g) for g in field_groups]
        if len(self.field_parts) != len(self.field_groups) or min(self.field_parts + self.field_groups, default=0) < 0:
            raise ValueError(f"GwPFM needs a part and a group index (>= 0) per field, got parts "
                             f"{self.field_parts} and groups {self.field_groups}")
        self.num_groups = max(self.field_groups, default=0) + 1

    def _field_parts(self, num_fields):
        if num_fields != len(self.field_parts):
            raise ValueError(f"GwPFM was given parts of {len(self.field_parts)} fields, got {num_fields} fields")
        return np.asarray(self.field_parts)

    def build(self, input_shape):
        g = self.num_groups
        self.group_weights = self.add_weight(name="group_weights", shape=(g, g), initializer="ones")
        super().build(input_shape)

    def _weight_matrix(self):
        """r_{G(i),G(j)} for every field pair, read from R's upper triangle."""
        groups = np.asarray(self.field_groups)
        a, b = groups[:, None], groups[None, :]
        index = (np.minimum(a, b) * self.num_groups + np.maximum(a, b)).astype(np.int32)
        return tf.gather(tf.reshape(self.group_weights, [-1]), index)

    def get_config(self):
        return {**super().get_config(), "field_parts": self.field_parts, "field_groups": self.field_groups}


@_register
class InnerProduct(tf.keras.layers.Layer):
    """IPNN's product layer (Qu et al., ICDM'16, Eq. 5): <v_i, v_j> for every i < j -> [B, F(F-1)/2]."""

    def build(self, input_shape):
        f = int(input_shape[1])
        rows, cols = _upper_pairs(f)
        self._flat_index = (rows * f + cols).astype(np.int32)
        self._num_fields = f
        super().build(input_shape)

    def call(self, fields):
        gram = tf.matmul(fields, fields, transpose_b=True)
        flat = tf.reshape(gram, [-1, self._num_fields * self._num_fields])
        return tf.gather(flat, self._flat_index, axis=1)


# ---- cross networks ------------------------------------------------------------------
@_register
class VectorCross(tf.keras.layers.Layer):
    """DCN (Wang et al., ADKDD'17, Eq. 3): x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l."""

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.w = self.add_weight(name="w", shape=(dim,), initializer="glorot_uniform")
        self.b = self.add_weight(name="b", shape=(dim,), initializer="zeros")
        super().build(input_shape)

    def call(self, x0, x):
        xw = tf.reduce_sum(x * tf.cast(self.w, x.dtype), axis=-1, keepdims=True)
        return x0 * xw + tf.cast(self.b, x.dtype) + x


@_register
class GatedCross(tf.keras.layers.Layer):
    """GDCN (Wang et al., CIKM'23, Eq. 1): c_{l+1} = c_0 * (W_c c_l + b_c) * sigmoid(W_g c_l) + c_l."""

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.cross = tf.keras.layers.Dense(dim, name="cross", dtype=self.dtype_policy)
        self.gate = tf.keras.layers.Dense(dim, use_bias=False, activation="sigmoid", name="gate",
                                          dtype=self.dtype_policy)
        super().build(input_shape)

    def call(self, x0, x):
        return x0 * self.cross(x) * self.gate(x) + x


CROSS_KINDS = ("vector", "matrix", "gated")


@_register
class CrossNetwork(tf.keras.layers.Layer):
    """A stack of cross layers over the flattened embeddings [B, F*d] -> [B, F*d].

    kind: ``vector`` DCN v1 (:class:`VectorCross`); ``matrix`` DCN-V2 (Wang et al.,
    WWW'21, Eq. 1; ``tfrs.layers.dcn.Cross``, low-rank U V^T when ``projection_dim``
    is set, Eq. 2); ``gated`` GDCN (:class:`GatedCross`).
    """

    def __init__(self, kind: str = "matrix", num_layers: int = 3, projection_dim: Optional[int] = None,
                 diag_scale: float = 0.0, **kw):
        super().__init__(**kw)
        if kind not in CROSS_KINDS:
            raise ValueError(f"cross network kind '{kind}' not in {CROSS_KINDS}")
        if int(num_layers) < 1:
            raise ValueError(f"a cross network needs num_layers >= 1, got {num_layers}")
        if kind != "matrix" and (projection_dim is not None or diag_scale):
            raise ValueError("projection_dim / diag_scale apply to the DCN-V2 (matrix) cross layer only")
        self.kind, self.num_layers = kind, int(num_layers)
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        self.diag_scale = float(diag_scale)
        if kind == "matrix":
            import tensorflow_recommenders as tfrs

            self.layers_ = [tfrs.layers.dcn.Cross(projection_dim=self.projection_dim, diag_scale=self.diag_scale,
                                                  name=f"cross_{i}") for i in range(self.num_layers)]
        else:
            cls = VectorCross if kind == "vector" else GatedCross
            self.layers_ = [cls(name=f"cross_{i}") for i in range(self.num_layers)]

    def call(self, x0):
        x = x0
        for layer in self.layers_:
            x = layer(x0, x)
        return x

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "num_layers": self.num_layers,
                "projection_dim": self.projection_dim, "diag_scale": self.diag_scale}


# ---- CIN -------------------------------------------------------------------------------
@_register
class CIN(tf.keras.layers.Layer):
    """Compressed Interaction Network of xDeepFM (Lian et al., KDD'18, Eq. 6-8).

    X^k_{h,*} = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_{i,*} * X^0_{j,*}); each layer's maps are
    sum-pooled over the embedding axis (Eq. 7) and concatenated into p+ (Eq. 8). With
    ``split_half`` every hidden layer but the last sends half its maps to the output
    and half to the next layer, as in the paper's implementation. Fields [B, F, d] ->
    [B, sum of output maps]. ``activation`` None is the identity of Eq. 6.
    """

    def __init__(self, layer_sizes: Sequence[int] = (200, 200, 200), split_half: bool = True,
                 activation: Optional[str] = None, **kw):
        super().__init__(**kw)
        self.layer_sizes = _int_list(layer_sizes, "CIN layer sizes")
        if not self.layer_sizes:
            raise ValueError("CIN needs at least one layer")
        self.split_half = bool(split_half)
        if self.split_half and any(s % 2 for s in self.layer_sizes[:-1]):
            raise ValueError(f"CIN split_half needs even sizes for all but the last layer, got {self.layer_sizes}")
        self.activation_name = activation
        self.maps = [tf.keras.layers.Dense(s, activation=activation, name=f"maps_{k}")
                     for k, s in enumerate(self.layer_sizes)]

    @property
    def output_dim(self) -> int:
        if not self.split_half:
            return sum(self.layer_sizes)
        return sum(s // 2 for s in self.layer_sizes[:-1]) + self.layer_sizes[-1]

    def call(self, fields):
        x0, xk = fields, fields
        dim = tf.shape(fields)[2]
        pooled = []
        for k, maps in enumerate(self.maps):
            z = tf.einsum("bhd,bmd->bdhm", xk, x0)  # outer product along the field axes, per d
            z = tf.reshape(z, [-1, dim, xk.shape[1] * x0.shape[1]])
            xk = tf.transpose(maps(z), [0, 2, 1])  # a 1x1 convolution: [B, H_k, d]
            if self.split_half and k < len(self.maps) - 1:
                half = self.layer_sizes[k] // 2
                xk, out = xk[:, :half], xk[:, half:]
            else:
                out = xk
            pooled.append(tf.reduce_sum(out, axis=2))
        return tf.concat(pooled, axis=1)

    def get_config(self):
        return {**super().get_config(), "layer_sizes": self.layer_sizes, "split_half": self.split_half,
                "activation": self.activation_name}


# ---- self-attention (AutoInt, DESTINE) -------------------------------------------------
def _split_heads(x, num_heads: int):
    """[B, F, H * a] -> [B, H, F, a]: head h is the h-th a-wide slice of every field."""
    f, width = x.shape[1], x.shape[2]
    return tf.transpose(tf.reshape(x, [-1, f, num_heads, width // num_heads]), [0, 2, 1, 3])


def _merge_heads(x):
    """[B, H, F, a] -> [B, F, H * a], the heads concatenated per field."""
    return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [-1, x.shape[2], x.shape[1] * x.shape[3]])


@_register
class InteractingLayer(tf.keras.layers.Layer):
    """AutoInt's interacting layer (Song et al., CIKM'19, Eq. 5-8).

    Multi-head self-attention over the fields: per head h, alpha = softmax_k <W_Q e_m,
    W_K e_k> (scaled by 1/sqrt(d') if ``use_scale``), e~_m = sum_k alpha W_V e_k; heads
    concatenated; e_res = ReLU(e~ + W_res e) (Eq. 8, ``use_residual``). [B, F, d] ->
    [B, F, heads * att_dim].
    """

    def __init__(self, att_dim: int = 32, num_heads: int = 2, use_residual: bool = True,
                 use_scale: bool = False, layer_norm: bool = False, **kw):
        super().__init__(**kw)
        self.att_dim, self.num_heads = int(att_dim), int(num_heads)
        if self.att_dim <= 0 or self.num_heads <= 0:
            raise ValueError(f"attention att_dim and num_heads must be positive, got {att_dim}, {num_heads}")
        self.use_residual, self.use_scale, self.layer_norm = bool(use_residual), bool(use_scale), bool(layer_norm)
        width = self.att_dim * self.num_heads
        self.query = tf.keras.layers.Dense(width, use_bias=False, name="query")
        self.key = tf.keras.layers.Dense(width, use_bias=False, name="key")
        self.value = tf.keras.layers.Dense(width, use_bias=False, name="value")
        self.residual = tf.keras.layers.Dense(width, use_bias=False, name="residual") if self.use_residual else None
        self.norm = tf.keras.layers.LayerNormalization(name="norm") if self.layer_norm else None

    def call(self, fields):
        q, k, v = (_split_heads(dense(fields), self.num_heads) for dense in (self.query, self.key, self.value))
        scores = tf.matmul(q, k, transpose_b=True)  # [B, H, F, F]
        if self.use_scale:
            scores = scores / tf.cast(tf.sqrt(float(self.att_dim)), scores.dtype)
        out = _merge_heads(tf.matmul(tf.nn.softmax(scores, axis=-1), v))  # [B, F, H * d']
        if self.residual is not None:
            out = out + self.residual(fields)
        out = tf.nn.relu(out)
        return self.norm(out) if self.norm is not None else out

    def get_config(self):
        return {**super().get_config(), "att_dim": self.att_dim, "num_heads": self.num_heads,
                "use_residual": self.use_residual, "use_scale": self.use_scale, "layer_norm": self.layer_norm}


UNARY_TERMS = ("linear", "mean_query")


@_register
class DisentangledSelfAttention(tf.keras.layers.Layer):
    """DESTINE's disentangled self-attention layer (Xu et al., CIKM'21, Sec. 3; after Yin et
    al.'s disentangled non-local block, ECCV'20).

    Per head (width ``att_dim``): q_i = W_Q e_i, k_j = W_K e_j, v_j = W_V e_j. The product
    q_i^T k_j is the whitened pairwise term (q_i - mu_q)^T (k_j - mu_k) (mu: means over the F
    fields of the example) plus mu_q^T k_j, which depends on the key alone, plus terms constant
    in j. DESTINE gives each term its own softmax over j and sums the weights:

        alpha_ij = softmax_j((q_i - mu_q)^T (k_j - mu_k) [/ sqrt(att_dim), ``use_scale``])
                   + softmax_j(u_j),      e~_i = sum_j alpha_ij v_j  [+ W_R e_i, ``use_residual``]

    so the pairwise weights are unchanged by a shift common to all fields' queries (the
    whitening) and the unary u_j, field j's importance to every field, is learned apart.
    ``unary``: ``linear`` u_j = w_h^T e_j (a learned linear importance of key field j per head:
    the authors' ``DisentangledSelfAttention``, their code's default, and FuxiCTR's);
    ``mean_query`` u_j = mu_q'^T k_j with a query projection q'_i = W_Q' e_i of its own (the
    decomposition's unary term with untied queries: the authors' ``DisentangledSelfAttentionWeighted``,
    which their run scripts use). ``dropout`` drops alpha in training, as the authors' code.
    W_Q, W_K and w_h have no bias (it would cancel in the softmaxes); W_V, W_R and W_Q' have one.
    No activation: DESTINE applies its ReLU after the stack. [B, F, d] -> [B, F, heads * att_dim].
    """

    def __init__(self, att_dim: int = 16, num_heads: int = 2, unary: str = "linear", use_scale: bool = True,
                 dropout: float = 0.0, use_residual: bool = True, **kw):
        super().__init__(**kw)
        self.att_dim, self.num_heads = int(att_dim), int(num_heads)
        if self.att_dim <= 0 or self.num_heads <= 0:
            raise ValueError(f"attention att_dim and num_heads must be positive, got {att_dim}, {num_heads}")
        if unary not in UNARY_TERMS:
            raise ValueError(f"unary term '{unary}' not in {UNARY_TERMS}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {dropout}")
        self.unary, self.use_scale, self.use_residual = unary, bool(use_scale), bool(use_residual)
        self.dropout_rate = float(dropout)
        width = self.att_dim * self.num_heads
        self.query = tf.keras.layers.Dense(width, use_bias=False, name="query")
        self.key = tf.keras.layers.Dense(width, use_bias=False, name="key")
        self.value = tf.keras.layers.Dense(width, name="value")
        if unary == "linear":
            self.unary_score = tf.keras.layers.Dense(self.num_heads, use_bias=False, name="unary")
        else:
            self.unary_score = tf.keras.layers.Dense(width, name="unary_query")
        self.residual = tf.keras.layers.Dense(width, name="residual") if self.use_residual else None

    def attention_weights(self, fields):
        """(pairwise [B, H, F, F], unary [B, H, 1, F]): the two softmax terms of alpha."""
        q, k = _split_heads(self.query(fields), self.num_heads), _split_heads(self.key(fields), self.num_heads)
        centred_q = q - tf.reduce_mean(q, axis=2, keepdims=True)
        centred_k = k - tf.reduce_mean(k, axis=2, keepdims=True)
        scores = tf.matmul(centred_q, centred_k, transpose_b=True)
        if self.use_scale:
            scores = scores / tf.cast(tf.sqrt(float(self.att_dim)), scores.dtype)
        if self.unary == "linear":
            unary = tf.transpose(self.unary_score(fields), [0, 2, 1])[:, :, None, :]
        else:
            mean_q = tf.reduce_mean(_split_heads(self.unary_score(fields), self.num_heads), axis=2, keepdims=True)
            unary = tf.matmul(mean_q, k, transpose_b=True)
        return tf.nn.softmax(scores, axis=-1), tf.nn.softmax(unary, axis=-1)

    def call(self, fields, training=None):
        pairwise, unary = self.attention_weights(fields)
        alpha = pairwise + unary
        if training and self.dropout_rate > 0:  # seeded per step (step_seed)
            alpha = dropout(alpha, self.dropout_rate)
        out = _merge_heads(tf.matmul(alpha, _split_heads(self.value(fields), self.num_heads)))
        return out + self.residual(fields) if self.residual is not None else out

    def get_config(self):
        return {**super().get_config(), "att_dim": self.att_dim, "num_heads": self.num_heads, "unary": self.unary,
                "use_scale": self.use_scale, "dropout": self.dropout_rate, "use_residual": self.use_residual}


# ---- FinalMLP --------------------------------------------------------------------------
@_register
class FeatureSelection(tf.keras.layers.Layer):
    """FinalMLP's stream-specific feature gating (Mao et al., AAAI'23, Eq. 3-4).

    g = 2 * sigmoid(MLP(c)); output = g * flat(e). The context c is the concatenated
    embeddings of ``context_fields`` (indices into the field order), or a learnable
    vector when none are given (the paper's "learnable parameters" option).
    Fields [B, F, d] -> [B, F*d].
    """

    def __init__(self, hidden_units: Sequence[int] = (1024, 512), context_fields: Sequence[int] = (),
                 activation: str = "relu", **kw):
        super().__init__(**kw)
        self.hidden_units = _int_list(hidden_units, "feature-selection hidden units")
        self.context_fields = [int(i) for i in context_fields]
        self.activation_name = activation
        self.mlp = MLP(self.hidden_units, activation=activation, name="gate_mlp")

    def build(self, input_shape):
        f, d = int(input_shape[1]), int(input_shape[2])
        bad = [i for i in self.context_fields if not 0 <= i < f]
        if bad:
            raise ValueError(f"FinalMLP context field indices {bad} out of range for {f} fields")
        self.gate_out = tf.keras.layers.Dense(f * d, activation="sigmoid", name="gate_out",
                                              dtype=self.dtype_policy)
        if not self.context_fields:
            self.context = self.add_weight(name="context", shape=(1, d), initializer="zeros")
        super().build(input_shape)

    def call(self, fields, training=None):
        flat = tf.reshape(fields, [-1, fields.shape[1] * fields.shape[2]])
        if self.context_fields:
            ctx = tf.reshape(tf.gather(fields, self.context_fields, axis=1),
                             [-1, len(self.context_fields) * fields.shape[2]])
        else:
            ctx = tf.cast(self.context, fields.dtype)
        gate = 2.0 * self.gate_out(self.mlp(ctx, training=training))
        return flat * gate

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units,
                "context_fields": self.context_fields, "activation": self.activation_name}


@_register
class MultiHeadBilinear(tf.keras.layers.Layer):
    """FinalMLP's multi-head bilinear fusion term (Eq. 7-8): sum_h o1_h^T W_h o2_h -> [B, 1].

    The first-order terms b + w1^T o1 + w2^T o2 of Eq. 7 are the two streams' own
    logits; this layer adds the second-order term.
    """

    def __init__(self, num_heads: int = 2, **kw):
        super().__init__(**kw)
        self.num_heads = int(num_heads)
        if self.num_heads <= 0:
            raise ValueError(f"num_heads must be positive, got {num_heads}")

    def build(self, input_shape):
        d1, d2 = int(input_shape[0][-1]), int(input_shape[1][-1])
        if d1 % self.num_heads or d2 % self.num_heads:
            raise ValueError(f"bilinear fusion: stream widths {d1} and {d2} must both be divisible by "
                             f"num_heads={self.num_heads}")
        self.kernel = self.add_weight(name="kernel", shape=(self.num_heads, d1 // self.num_heads,
                                                            d2 // self.num_heads),
                                      initializer="glorot_uniform")
        super().build(input_shape)

    def call(self, inputs):
        o1, o2 = inputs
        h = self.num_heads
        o1 = tf.reshape(o1, [-1, h, o1.shape[-1] // h])
        o2 = tf.reshape(o2, [-1, h, o2.shape[-1] // h])
        term = tf.einsum("bha,hac,bhc->b", o1, tf.cast(self.kernel, o1.dtype), o2)
        return term[:, None]

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


# ---- DIN ---------------------------------------------------------------------------------
@_register
class ActivationUnit(tf.keras.layers.Layer):
    """DIN's local activation unit and target attention (Zhou et al., KDD'18, Eq. 3, Fig. 2).

    Each behaviour e_j [B, L, d] against the target v_A [B, d]: w_j = a(e_j, v_A), an MLP
    (``units``, ``activation``) over [e_j, v_A, e_j - v_A, e_j * v_A] and a linear unit;
    the interest v_U = sum_j w_j e_j [B, d]. The weights are not softmax-normalised (the
    paper keeps the intensity of the user's interest); padding (``mask`` False) gets weight
    exactly 0 and the others are not rescaled; it is also kept out of the MLP's batch
    statistics (Dice, batch normalisation). Returns (v_U, the weights [B, L]).
    """

    def __init__(self, units: Sequence[int] = (80, 40), activation: str = "dice", dropout: float = 0.0,
                 batch_norm: bool = False, l2_reg: float = 0.0, **kw):
        super().__init__(**kw)
        self.mlp = MLP(units, activation, dropout, batch_norm, l2_reg, name="mlp")
        self.score = tf.keras.layers.Dense(1, name="score")

    def call(self, keys, query, mask, training=None):
        query = tf.broadcast_to(query[:, None, :], tf.shape(keys))
        x = tf.concat([keys, query, keys - query, keys * query], axis=-1)  # [B, L, 4d]
        scores = self.score(self.mlp(x, training=training, mask=mask))[..., 0]
        weights = tf.where(mask, tf.cast(scores, keys.dtype), tf.zeros_like(keys[..., 0]))
        return tf.reduce_sum(weights[..., None] * keys, axis=1), weights

    def get_config(self):
        cfg = self.mlp.get_config()
        return {**super().get_config(), **{k: cfg[k] for k in
                                           ("units", "activation", "dropout", "batch_norm", "l2_reg")}}
