"""Tencent's similarity encoding embedding (Sec. 3.3, Eq. 3 then Eq. 2), a field module.

Pretrained user and item embeddings (from a GNN, an LLM, ...: the simulator's
``user_pretrained`` / ``item_pretrained``, ``dense`` features) live in another space than the
recommender's ID embeddings (the paper's "semantic gap"), so instead of feeding the vectors the
module feeds their similarity, an ordinal value, through MNSE:

    w_sim(u, i) = cos(e~_u, e~_i)                                                          (Eq. 3)
    n = floor((w_sim + 1) / 2 * Q + 1/2)       (rounded to the nearest of 0..Q; Q = ``levels``)
    e_sim(u, i) = f_MNS(n) = [sum_k X^(2)_{2k+B_k}, sum_k X^(3)_{3k+C_k}, sum_k X^(10)_{10k+D_k}]  (Eq. 2)

all in the graph, so serving needs only the two vectors (request features). The paper gives
no quantisation scale: Q = 100 (two decimals of w_sim) by default, an option. The MNSE codes
are those of ``features/mnse.py`` (``tf_mnse_ids``, one id space for every numeral system,
``bases`` default [2, 3, 10], each with the digits Q needs), looked up in the module's own table
of learnable rows and summed per numeral system: one field per system, concatenated with the
interaction output by default (``join: representation``, the paper's "concatenate the resulting
representation with that of the feature interaction layer").

A zero vector (a missing ``dense`` list encodes as zeros) has no cosine: its codes are the
padding id, so the pair reads the learned padding row in each digit (as MNSE reads a missing
number). The baseline the paper argues against, the raw vectors as dense fields, is the
``dense`` encoding's projection (``configs/train_sim_dcnv2.yaml``); with this module a config
leaves them out of the embedded fields (``embedding_options.features``) and the module reads
them from the inputs (``configs/train_sim_similarity.yaml``).
"""
from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

from features import mnse
from features.schema import Schema, SchemaError
from models.embedding import OPTION_DEFAULTS
from models.field_modules import FieldModule, register_field_module
from models.options import OptionError


def quantise(w: tf.Tensor, levels: int) -> tf.Tensor:
    """float64 similarities in [-1, 1] -> the nearest of 0..levels (half up); NaN stays NaN."""
    w = tf.cast(w, tf.float64)
    w = tf.where(tf.math.is_nan(w), w, tf.clip_by_value(w, -1.0, 1.0))  # |cos| > 1 by rounding only
    return tf.floor((w + 1.0) / 2.0 * float(levels) + 0.5)


def cosine(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """float64 cosine of the rows of a and b [B, D] -> [B]; NaN where either row is zero."""
    a, b = tf.cast(a, tf.float64), tf.cast(b, tf.float64)
    norms = tf.norm(a, axis=1) * tf.norm(b, axis=1)
    nan = tf.constant(float("nan"), tf.float64)
    return tf.where(norms > 0, tf.reduce_sum(a * b, axis=1) / tf.where(norms > 0, norms, 1.0), nan)


def mnse_encoding(levels: int, bases) -> Dict[str, Any]:
    """The MNSE encoding of the integers 0..levels: every base with the digits ``levels`` needs."""
    return {"type": "mnse", "bases": list(bases), "digits": [mnse.digits_needed(levels, b) for b in bases],
            "scale": 1, "signed": False}


@register_field_module("similarity_encoding")
class SimilarityEncoding(FieldModule):
    """e_sim(u, i) as one field per numeral system [B, len(bases), d] (see the module docstring)."""

    default_join = "representation"
    option_defaults: Dict[str, Any] = {"user": "user_pretrained", "item": "item_pretrained", "levels": 100,
                                       "bases": list(mnse.DEFAULT_BASES)}
    option_ranges = {"levels": "[1, inf)", "bases": "[2, inf)"}

    @classmethod
    def count_fields(cls, schema_dict, options):
        return len(options["bases"])

    @classmethod
    def check_values(cls, options, prefix):
        try:
            mnse.check_bases(list(options["bases"]))
        except ValueError as e:
            raise OptionError(f"{prefix}bases = {options['bases']!r}: {e}") from None

    @classmethod
    def check_schema(cls, schema: Schema, options: Dict[str, Any], prefix: str) -> None:
        widths = {}
        for key in ("user", "item"):
            name = options[key]
            if name not in schema.feature_names or schema.feature(name).encoding.get("type") != "dense":
                raise SchemaError(f"{prefix}{key} = {name!r}: the similarity encoding reads a dense feature "
                                  f"(a pretrained embedding, encoding type dense) of the schema")
            widths[key] = schema.feature(name).width
        if widths["user"] != widths["item"]:
            raise SchemaError(f"{prefix}user / item: the pretrained embeddings '{options['user']}' and "
                              f"'{options['item']}' have different widths {widths['user']} and {widths['item']}: "
                              f"no cosine between them")

    def _build_module(self):
        o = self.options
        self.encoding = mnse_encoding(o["levels"], o["bases"])
        self.groups = mnse.column_groups(self.encoding)
        self.table = self.add_weight(name="similarity_embedding", shape=(mnse.num_ids(self.encoding),
                                                                         self.embedding_dim),
                                     initializer=tf.keras.initializers.RandomNormal(
                                         stddev=OPTION_DEFAULTS["initializer_stddev"]))

    def similarity(self, inputs: dict) -> tf.Tensor:
        """w_sim [B] float64 (Eq. 3), NaN where a vector is zero."""
        return cosine(inputs[self.options["user"]], inputs[self.options["item"]])

    def codes(self, inputs: dict) -> tf.Tensor:
        """The MNSE ids [B, sum of digits] of the quantised similarity (padding where it has none)."""
        return mnse.tf_mnse_ids(quantise(self.similarity(inputs), self.options["levels"]), self.encoding)

    def _fields(self, inputs, emb, training):
        rows = tf.nn.embedding_lookup(self.table, self.codes(inputs))  # [B, W, d]; ShardedVariables too
        return tf.stack([tf.reduce_sum(rows[:, a:b], axis=1) for a, b in self.groups], axis=1)
