"""HDA Stage 1a: probabilistic feature mapping (§4.2.2, Eq. 2-3).

Per categorical field i a row-stochastic transition T_i [q, q] (q_i = p_i, as the paper sets),
T_i[x, j] = P(X^t_i = j | X_i = x), is the row-wise softmax of free logits, fitted to maximise
I(X_t; Y) - lambda1 * I(X_t; G) (Eq. 3, the soft form of Eq. 2), both terms computed exactly from
the field's joint counts with the label and with the group (:mod:`.information`), one field at a
time ("we optimize the mutual information between a single feature, the task label, and group
attributes at a time"). Group ids follow ``pipeline.user_groups``: 1 = head, 0 = long-tail.

Choices where the paper is silent:

- initialisation: logits = kappa * I with kappa = log(d (q - 1) / (1 - d)), so T[x, x] = d
  (``init_probability``, default 0.9) and the rest of each row is spread evenly: the fit starts
  from (nearly) the raw feature, which Theorem 4.2's proof takes as the lambda1 = 0 solution;
- lambda1 (:data:`DEFAULT_LAMBDA1` = 10), the steps (1000) and the learning rate (0.1) of the fit
  (Adam on the logits): the paper tunes lambda1 on the validation split and gives no value, so
  the default is tuned on Appendix A.2's example (its P(X, G), with P(Y = 1 | X) = 0.2, 0.5, 0.7
  since the appendix has no label; ``tests/models/test_hda_blocks.py``). There lambda1 <= 5 stops
  at the deterministic merge {A}, {B, C} (I(X_t; G) = 0.0048-0.0049 nats, Theorem 4.1's floor);
  10 is the smallest of {1, 2, 5, 10, 20, 50, 100} that leaves it for a genuinely probabilistic
  T: I(X_t; G) = 0.00064, 7.6x below the best merge, keeping I(X_t; Y) = 0.049 of the raw 0.089;
  20 / 100 reach 0.00013 / 0.000005 keeping 0.042 / 0.037. 1000 steps at 0.1 match 3000 at 0.05
  within 1 % for lambda1 <= 20;
- large vocabularies (an approximation): a field with more than ``top_k`` ids keeps the
  ``top_k`` most frequent (ties: the smaller id) as their own rows and columns, and every other
  id shares one OOV row, the last, so T is at most (K+1) x (K+1) and X_t takes K+1 values;
- how X_t is consumed (the paper fixes T after Stage 1a and says no more). Every mode returns
  weights over X_t's q values [..., q], so the shared embedding of a field is ``weights @ E``:

  ``sample``       a Gumbel-softmax draw of X_t from T[x], one-hot forward and the softmax's
                   gradient backward (straight-through), temperature ``temperature``; the noise
                   is stateless: from an explicit ``seed``, else the training step's seed
                   (``models.layers.step_seed``), so a resumed run repeats its draws. What
                   ``call`` does in training, and the only mode in which I(X_t; G) is the
                   fitted value (Appendix A.2's T reaches 0 only for the random draw);
  ``expectation``  T[x], deterministic (serving default). Distinct rows of T make it a
                   one-to-one function of x: it keeps all of I(X; G);
  ``most_likely``  one_hot(argmax_j T[x, j]): a deterministic merge of values.

X_t's value j is an id of the field when it is not compacted; after compaction j < K stands for
``kept_ids[j]`` and j = K for the OOV bucket.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from models import layers as L
from models.frameworks.hda.information import mapped_joint, mutual_information

DEFAULT_TOP_K = 1000          # the brief's example; not in the paper
DEFAULT_INIT_PROBABILITY = 0.9  # T[x, x] at initialisation; not in the paper
DEFAULT_TEMPERATURE = 1.0     # of the Gumbel-softmax draw; not in the paper
DEFAULT_LAMBDA1 = 10.0        # Eq. 3's lambda1; the paper tunes it on validation (no value given)
DEFAULT_STEPS = 1000
DEFAULT_LEARNING_RATE = 0.1
SERVING_MODES = ("expectation", "most_likely", "sample")

_register = tf.keras.utils.register_keras_serializable("ctrflow")


def diagonal_logit(size: int, probability: float) -> float:
    """kappa such that softmax(kappa * e_x)[x] = ``probability`` over ``size`` values."""
    if size == 1:
        return 0.0
    return float(np.log(probability * (size - 1) / (1.0 - probability)))


def most_frequent_ids(counts, top_k: int) -> Optional[list]:
    """The ``top_k`` ids with the largest row sums of ``counts`` [p, c] (ties: the smaller id),
    ascending; None when p <= top_k (every id keeps its own row)."""
    frequency = np.asarray(counts, np.float64).sum(axis=1)
    if frequency.size <= top_k:
        return None
    ranked = np.lexsort((np.arange(frequency.size), -frequency))
    return sorted(int(i) for i in ranked[:top_k])


@_register
class FieldMapping(tf.keras.layers.Layer):
    """T_i of one field (Eq. 2-3): ids [...] in [0, num_ids) -> weights over X_t [..., q] float32.

    ``kept_ids``: the ids keeping their own row (q = len + 1, the last row the shared OOV one),
    as :meth:`from_counts` picks them; else ``top_k``: a field with more than ``top_k`` ids has
    q = top_k + 1 rows, which ids keep one is set from the data by :meth:`keep_most_frequent`
    (a model builds its mappings before it sees the data); else q = num_ids. Which row each id
    reads is a non-trainable weight, saved and exported with the model. The logits [q, q] are
    trainable for :func:`fit_field_mapping`; a framework freezes them after Stage 1a.
    """

    def __init__(self, num_ids: int, kept_ids: Optional[Sequence[int]] = None, top_k: Optional[int] = None,
                 init_probability: float = DEFAULT_INIT_PROBABILITY, temperature: float = DEFAULT_TEMPERATURE,
                 serving: str = "expectation", **kw):
        super().__init__(**kw)
        self.num_ids = int(num_ids)
        self.kept_ids = None if kept_ids is None else sorted(int(i) for i in kept_ids)
        self.top_k = None if top_k is None else int(top_k)
        if self.num_ids < 1:
            raise ValueError(f"FieldMapping: num_ids must be >= 1, got {num_ids}")
        if self.kept_ids is not None and (len(set(self.kept_ids)) != len(self.kept_ids) or not self.kept_ids
                                          or self.kept_ids[0] < 0 or self.kept_ids[-1] >= self.num_ids):
            raise ValueError(f"FieldMapping: kept_ids must be distinct ids in [0, {self.num_ids})")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"FieldMapping: top_k must be >= 1, got {top_k}")
        if not 0.0 < float(init_probability) < 1.0:
            raise ValueError(f"FieldMapping: init_probability must be in (0, 1), got {init_probability}")
        if not float(temperature) > 0:
            raise ValueError(f"FieldMapping: temperature must be > 0, got {temperature}")
        if serving not in SERVING_MODES:
            raise ValueError(f"FieldMapping: serving {serving!r} is not one of {SERVING_MODES}")
        self.init_probability, self.temperature, self.serving = float(init_probability), float(temperature), serving
        if self.kept_ids is not None:
            self.num_values = len(self.kept_ids) + 1
        elif self.top_k is not None and self.num_ids > self.top_k:
            self.num_values = self.top_k + 1
        else:
            self.num_values = self.num_ids
        self.pooled = self.num_values != self.num_ids or self.kept_ids is not None
        self.row_of_id = self.add_weight(name="row_of_id", shape=(self.num_ids,), dtype=tf.int32, trainable=False,
                                         initializer=tf.keras.initializers.Constant(self._rows_of(self.kept_ids)))
        kappa = diagonal_logit(self.num_values, self.init_probability)
        self.logits = self.add_weight(name="logits", shape=(self.num_values, self.num_values), dtype=tf.float32,
                                      initializer=tf.keras.initializers.Identity(gain=kappa))

    def _rows_of(self, kept_ids: Optional[Sequence[int]]) -> np.ndarray:
        """Each id's row: itself (no pooling), its position among ``kept_ids``, else the OOV row."""
        if not self.pooled:
            return np.arange(self.num_ids, dtype=np.int32)
        rows = np.full(self.num_ids, self.num_values - 1, np.int32)  # every other id: the OOV row
        if kept_ids is not None:
            rows[list(kept_ids)] = np.arange(len(kept_ids), dtype=np.int32)
        return rows

    @classmethod
    def from_counts(cls, counts, top_k: int = DEFAULT_TOP_K, **kw) -> "FieldMapping":
        """A mapping for a field whose joint counts with anything (label or group) are
        ``counts`` [num_ids, c]: the ``top_k`` most frequent ids keep their own row."""
        counts = np.asarray(counts)
        if int(top_k) < 1:
            raise ValueError(f"FieldMapping: top_k must be >= 1, got {top_k}")
        return cls(counts.shape[0], most_frequent_ids(counts, int(top_k)), **kw)

    def keep_most_frequent(self, counts) -> None:
        """Set which ids keep their own row (a ``top_k`` mapping): the q - 1 ids with the most
        samples in ``counts`` [num_ids, c] (ties: the smaller id); no-op without pooling."""
        if not self.pooled:
            return
        self.kept_ids = most_frequent_ids(counts, self.num_values - 1)
        self.row_of_id.assign(self._rows_of(self.kept_ids))

    # ---- T and the rows of a batch ----------------------------------------------------------
    def transition(self) -> tf.Tensor:
        """T [q, q] float32, row-stochastic: softmax of the logits over each row."""
        return tf.nn.softmax(self.logits, axis=-1)

    def rows(self, ids) -> tf.Tensor:
        """The row of T of each id [...]: the id itself, or its kept position / the OOV row."""
        ids = tf.cast(ids, tf.int32)
        return tf.gather(tf.convert_to_tensor(self.row_of_id), ids) if self.pooled else ids

    def compact(self, counts) -> tf.Tensor:
        """Counts per id [num_ids, c] -> counts per row of T [q, c] float64 (OOV ids summed)."""
        counts = tf.cast(counts, tf.float64)
        if not self.pooled:
            return counts
        return tf.math.unsorted_segment_sum(counts, tf.convert_to_tensor(self.row_of_id), self.num_values)

    # ---- the three ways to read X_t -----------------------------------------------------------
    def expectation(self, ids) -> tf.Tensor:
        """T[x] [..., q]: the distribution of X_t given each id."""
        return tf.nn.softmax(tf.gather(self.logits, self.rows(ids)), axis=-1)

    def most_likely(self, ids) -> tf.Tensor:
        """argmax_j T[x, j] [...] int32: X_t's most likely value given each id."""
        return tf.argmax(tf.gather(self.logits, self.rows(ids)), axis=-1, output_type=tf.int32)

    def draw(self, ids) -> tf.Tensor:
        """X_t ~ T[x] per id [...] int32 (Gumbel-max; no gradient: T is fixed after Stage 1a)."""
        log_t = tf.nn.log_softmax(tf.gather(self.logits, self.rows(ids)), axis=-1)
        return tf.argmax(log_t - tf.math.log(-tf.math.log(L.random_uniform(tf.shape(log_t), 1e-10, 1.0))),
                         axis=-1, output_type=tf.int32)

    def sample(self, ids, temperature: Optional[float] = None, seed=None) -> tf.Tensor:
        """A draw of X_t ~ T[x] per id, one-hot [..., q] forward; backward the gradient of
        softmax((log T[x] + g) / temperature), g ~ Gumbel(0, 1) (straight-through estimator).
        ``seed`` ([2] ints): stateless draw; None: the step's seed (stateful outside a step)."""
        temperature = self.temperature if temperature is None else float(temperature)
        log_t = tf.nn.log_softmax(tf.gather(self.logits, self.rows(ids)), axis=-1)
        if seed is None:
            u = L.random_uniform(tf.shape(log_t), 1e-10, 1.0)
        else:
            u = tf.random.stateless_uniform(tf.shape(log_t), seed, 1e-10, 1.0)
        noisy = log_t - tf.math.log(-tf.math.log(u))  # + Gumbel(0, 1)
        soft = tf.nn.softmax(noisy / temperature, axis=-1)
        hard = tf.one_hot(tf.argmax(noisy, axis=-1), self.num_values, dtype=soft.dtype)
        return hard + (soft - tf.stop_gradient(soft))  # exactly one-hot forward

    def call(self, ids, training=None):
        """Weights over X_t [..., q]: a draw in training, else the ``serving`` mode."""
        if training or self.serving == "sample":
            return self.sample(ids)
        if self.serving == "most_likely":
            return tf.one_hot(self.most_likely(ids), self.num_values, dtype=tf.float32)
        return self.expectation(ids)

    def options(self) -> dict:
        """The constructor's options (JSON-ready)."""
        return {"num_ids": self.num_ids, "kept_ids": L.plain(self.kept_ids), "top_k": self.top_k,
                "init_probability": self.init_probability,
                "temperature": self.temperature, "serving": self.serving}

    def get_config(self):
        return {**super().get_config(), **self.options()}


@_register
class ProbabilisticFeatureMapping(tf.keras.layers.Layer):
    """The mappings {T_i} of several fields (§4.2.2): {field: ids} -> {field: weights [..., q_i]}.

    ``fields``: {field name: :class:`FieldMapping` options}; fields of the input not named pass
    through unmapped (absent from the output).
    """

    def __init__(self, fields: Dict[str, dict], **kw):
        super().__init__(**kw)
        self.field_names = sorted(fields)
        self.mappings = {f: FieldMapping(**dict(fields[f]), name=L.safe_name(f"map_{f}")) for f in self.field_names}

    @classmethod
    def from_counts(cls, counts: Dict[str, object], top_k: int = DEFAULT_TOP_K, **field_options):
        """Mappings for the fields of ``counts`` ({field: joint counts [num_ids, c]})."""
        made = {f: FieldMapping.from_counts(c, top_k, **field_options) for f, c in counts.items()}
        return cls({f: m.options() for f, m in made.items()})

    def call(self, inputs: dict, training=None):
        return {f: self.mappings[f](inputs[f], training=training) for f in self.field_names}

    def get_config(self):
        return {**super().get_config(), "fields": {f: self.mappings[f].options() for f in self.field_names}}


def mapping_objective(transition, label_counts, group_counts, lambda1: float):
    """(I(X_t; Y) - lambda1 I(X_t; G), I(X_t; Y), I(X_t; G)) of Eq. 3 for T ``transition``
    [q, q] and the counts per row of T with the label and with the group [q, 2]."""
    i_y = mutual_information(mapped_joint(label_counts, transition))
    i_g = mutual_information(mapped_joint(group_counts, transition))
    return i_y - lambda1 * i_g, i_y, i_g


def fit_field_mapping(mapping: FieldMapping, label_counts, group_counts, lambda1: float = DEFAULT_LAMBDA1,
                      steps: int = DEFAULT_STEPS, learning_rate: float = DEFAULT_LEARNING_RATE) -> dict:
    """Stage 1a for one field: ``steps`` Adam steps of gradient ascent on Eq. 3 over the logits.

    ``label_counts``, ``group_counts`` [num_ids, 2]: C[x, y] and C[x, g] (:func:`joint_counts`) of
    the same samples. Eq. 3 is computed in float64 (the logits stay float32): a field's mutual
    informations are small differences of logs, near float32's resolution. Deterministic. Returns
    the fitted and the raw (compacted, T = I) feature's mutual informations in nats:
    ``label_information``, ``group_information``, ``raw_label_information``, ``raw_group_information``.
    """
    label_counts, group_counts = np.asarray(label_counts, np.float64), np.asarray(group_counts, np.float64)
    if label_counts.shape != (mapping.num_ids, 2) or group_counts.shape != (mapping.num_ids, 2):
        raise ValueError(f"fit_field_mapping: counts must be [{mapping.num_ids}, 2], got {label_counts.shape} "
                         f"and {group_counts.shape}")
    if not np.allclose(label_counts.sum(axis=1), group_counts.sum(axis=1)):
        raise ValueError("fit_field_mapping: the label and group counts of an id differ: not the same samples")
    if float(lambda1) < 0 or int(steps) < 0 or not float(learning_rate) > 0:
        raise ValueError(f"fit_field_mapping: needs lambda1 >= 0, steps >= 0, learning_rate > 0; got {lambda1}, "
                         f"{steps}, {learning_rate}")
    c_y, c_g = mapping.compact(label_counts), mapping.compact(group_counts)
    optimizer = tf.keras.optimizers.Adam(float(learning_rate))

    def transition():  # in float64: a field's informations are small differences of logs
        return tf.nn.softmax(tf.cast(mapping.logits, tf.float64), axis=-1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            objective, _, _ = mapping_objective(transition(), c_y, c_g, float(lambda1))
            loss = -objective  # gradient ascent on Eq. 3
        optimizer.apply_gradients([(tape.gradient(loss, mapping.logits), mapping.logits)])

    for _ in range(int(steps)):  # offline, once per field before training
        step()
    _, i_y, i_g = mapping_objective(transition(), c_y, c_g, float(lambda1))
    identity = tf.eye(mapping.num_values, dtype=tf.float64)
    return {"label_information": float(i_y), "group_information": float(i_g),
            "raw_label_information": float(mutual_information(mapped_joint(c_y, identity))),
            "raw_group_information": float(mutual_information(mapped_joint(c_g, identity)))}


def fit_feature_mapping(mapping: ProbabilisticFeatureMapping, label_counts: Dict[str, object],
                        group_counts: Dict[str, object], **options) -> Dict[str, dict]:
    """:func:`fit_field_mapping` on every field of ``mapping`` ({field: counts [num_ids, 2]});
    ``options``: its lambda1 / steps / learning_rate. Returns {field: its result}."""
    return {f: fit_field_mapping(mapping.mappings[f], label_counts[f], group_counts[f], **options)
            for f in mapping.field_names}
