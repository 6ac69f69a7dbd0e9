"""TIM, Tencent's Temporal Interest Module (Sec. 3.1, Eq. 1, Fig. 2 left), a field module.

Over a behaviour sequence H (e.g. the user's clicked categories, ``hist_category``) against the
target (the impression's ``category``)::

    u_TIM = sum_{i in H} alpha(e~_i, v~_t) * (e~_i (.) v~_t)                              (Eq. 1)

* e~_i = e_i + p_pos(k_i) + p_int(b_i): the behaviour's semantic embedding e_i (a row of the
  sequence's table) plus its *target-aware temporal encoding*, the embedding of its relative
  position k_i to the target (k = 1 the most recent behaviour, ..., L) and of its time-interval
  bucket b_i. The paper's deployment uses both ("we adopt both relative position and time
  interval"); ``position`` and ``time_interval`` switch each off.
* v~_t = v_t + p_pos(0) + p_int(0): the target encoded in time too, at position 0 and gap 0
  ("at the target"). v_t is the target's row in the *sequence's* table (``share_vocab_with``),
  so behaviours and target live in one space.
* alpha, the *target-aware attention*: the scaled dot product of the TIN paper that Eq. 1 cites
  ([82]; its released code's ``target_attention``), alpha_i = softmax_{j valid}(e~_j^T v~_t /
  sqrt(d))_i, padding masked out of the softmax. A dot product of two temporally encoded
  vectors holds the four-way interaction (behaviour semantic, target semantic, behaviour time,
  target time) that TIN argues for, with no parameters of its own. ``target_attention: false``
  gives uniform weights over the valid behaviours (mean pooling).
* e~_i (.) v~_t, the *target-aware representation*; ``target_representation: false`` sums
  alpha_i e~_i instead.

Padding (id 0) weighs 0; a sequence with no behaviour gives u = 0. u is one field of width d,
joined by default to the interaction output (``join: representation``, the paper's "the output
of TIM is concatenated with the output of the feature interaction module"), or before the
backbone (``join: fields``).

Time intervals: ``gaps`` is a ``sequence_float`` feature aligned element by element with the
sequence (the simulator's ``hist_gap``: seconds from each behaviour to the impression; both lists
keep their last max_len elements, right-padded, so they align when neither has missing
elements). The paper says only "discretized time interval"; we use log2 buckets of seconds,
b = min(floor(log2(gap + 1)), num_buckets - 1) (:func:`interval_buckets`): bucket 0 is gap 0
(the target), 1 is 1 s, 2 is 2-3 s, ..., 12 is about 1-2 hours, 17 about 1.5-3 days; the
default 32 buckets reach ~68 years before the cap.
"""
from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple

import numpy as np
import tensorflow as tf

from features.schema import Schema, SchemaError
from models.embedding import OPTION_DEFAULTS, EmbeddedFields, SequenceRows
from models.field_modules import FieldModule, register_field_module

NEG = -1e9  # the attention logit of padding: exp underflows to 0 in float32


def interval_boundaries(num_buckets: int) -> np.ndarray:
    """Gaps (s) at which buckets 1..num_buckets-1 start: 2^b - 1 (float64, exact)."""
    return 2.0 ** np.arange(1, num_buckets) - 1.0


def interval_buckets(gaps: tf.Tensor, num_buckets: int) -> tf.Tensor:
    """int32 buckets of gaps in seconds, b = min(floor(log2(gap + 1)), num_buckets - 1), counted
    against exact boundaries (a float log2 of 2^b could round below b); negative gaps read as 0."""
    g = tf.cast(gaps, tf.float64)[..., None]
    return tf.reduce_sum(tf.cast(g >= tf.constant(interval_boundaries(num_buckets)), tf.int32), axis=-1)


class TemporalEncoding(NamedTuple):
    """TIM's inputs to Eq. 1: e~ [B, L, d], v~ [B, d], the valid mask [B, L], each behaviour's
    relative position [B, L] (1 = most recent) and time-interval bucket [B, L] (int32)."""

    rows: tf.Tensor
    target: tf.Tensor
    mask: tf.Tensor
    positions: tf.Tensor
    buckets: tf.Tensor


@register_field_module("tim")
class TIM(FieldModule):
    """u_TIM of Eq. 1 as one field [B, 1, d] (see the module docstring)."""

    default_join = "representation"
    uses_sequences = True
    option_defaults: Dict[str, Any] = {"sequence": "hist_category", "gaps": "hist_gap", "position": True,
                                       "time_interval": True, "target_attention": True,
                                       "target_representation": True, "num_buckets": 32}
    option_ranges = {"num_buckets": "[2, 64]"}

    @classmethod
    def count_fields(cls, schema_dict, options):
        return 1

    @classmethod
    def check_schema(cls, schema: Schema, options: Dict[str, Any], prefix: str) -> None:
        seq = options["sequence"]
        if seq not in schema.feature_names:
            raise SchemaError(f"{prefix}sequence = {seq!r}: not a feature of the schema ({schema.feature_names})")
        enc = schema.feature(seq).encoding
        if enc.get("type") != "sequence_vocab" or not enc.get("share_vocab_with"):
            raise SchemaError(f"{prefix}sequence = {seq!r}: TIM reads a sequence_vocab feature sharing its "
                              f"vocabulary with the target feature (share_vocab_with); its encoding is {enc}")
        if not options["time_interval"]:
            return
        gaps = options["gaps"]
        if gaps not in schema.feature_names or schema.feature(gaps).encoding.get("type") != "sequence_float":
            raise SchemaError(f"{prefix}gaps = {gaps!r}: TIM's time intervals need a sequence_float feature of "
                              f"seconds to the target (e.g. the simulator's hist_gap), or time_interval: false")
        if schema.feature(gaps).width != schema.feature(seq).width:
            raise SchemaError(f"{prefix}gaps = {gaps!r}: max_len {schema.feature(gaps).width} differs from the "
                              f"sequence '{seq}''s {schema.feature(seq).width}; the lists must align element by element")

    def _build_module(self):
        o = self.options
        self.max_len = int(Schema.from_dict(self.schema_dict).feature(o["sequence"]).width)
        init = OPTION_DEFAULTS["initializer_stddev"]  # the embedding tables' N(0, 0.01^2)
        # p_pos(0..L): 0 = the target, k = the k-th most recent behaviour; p_int(0..num_buckets-1)
        self.position_table = self.add_weight(
            name="position_embedding", shape=(self.max_len + 1, self.embedding_dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=init)) if o["position"] else None
        self.interval_table = self.add_weight(
            name="interval_embedding", shape=(o["num_buckets"], self.embedding_dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=init)) if o["time_interval"] else None

    def _sequence(self, emb: EmbeddedFields) -> SequenceRows:
        name = self.options["sequence"]
        for seq in emb.sequences or ():
            if seq.feature == name:
                return seq
        raise ValueError(f"TIM reads the rows of '{name}' against its target: embed both the sequence and the "
                         f"feature it shares its vocabulary with (embedding_options.features)")

    def encode(self, inputs: dict, emb: EmbeddedFields) -> TemporalEncoding:
        """e~_i = e_i + p_pos(k_i) + p_int(b_i) and v~_t = v_t + p_pos(0) + p_int(0) (the parts switched on)."""
        seq = self._sequence(emb)
        rows, target = tf.cast(seq.rows, tf.float32), tf.cast(seq.target, tf.float32)
        mask = tf.cast(seq.mask, tf.bool)
        # k-th most recent: valid elements at or after i (right-padded, most recent last)
        positions = tf.cumsum(tf.cast(mask, tf.int32), axis=1, reverse=True) * tf.cast(mask, tf.int32)
        buckets = tf.zeros_like(positions)
        # embedding_lookup (a gather) also reads a ShardedVariable shard by shard (ParameterServerStrategy)
        if self.position_table is not None:
            rows += tf.nn.embedding_lookup(self.position_table, positions)
            target += tf.nn.embedding_lookup(self.position_table, 0)
        if self.interval_table is not None:
            buckets = interval_buckets(inputs[self.options["gaps"]], self.options["num_buckets"])
            buckets *= tf.cast(mask, tf.int32)
            rows += tf.nn.embedding_lookup(self.interval_table, buckets)
            target += tf.nn.embedding_lookup(self.interval_table, 0)
        return TemporalEncoding(rows, target, mask, positions, buckets)

    def attention(self, enc: TemporalEncoding) -> tf.Tensor:
        """alpha [B, L]: softmax over the valid behaviours of e~_i^T v~_t / sqrt(d), or uniform over
        them without target attention; 0 on padding (all 0 for an empty sequence)."""
        valid = tf.cast(enc.mask, tf.float32)
        if not self.options["target_attention"]:
            return valid / tf.maximum(tf.reduce_sum(valid, axis=1, keepdims=True), 1.0)
        logits = tf.einsum("bld,bd->bl", enc.rows, enc.target) / math.sqrt(self.embedding_dim)
        return tf.nn.softmax(tf.where(enc.mask, logits, NEG), axis=1) * valid

    def _fields(self, inputs, emb, training):
        enc = self.encode(inputs, emb)
        values = enc.rows * enc.target[:, None, :] if self.options["target_representation"] else enc.rows
        return tf.einsum("bl,bld->bd", self.attention(enc), values)[:, None, :]
