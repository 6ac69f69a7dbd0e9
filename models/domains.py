"""The domain of a sample from a categorical feature: the user groups of the multi-domain
baselines (GPRec §IV-A3, Table II: MMoE, PLE and STAR with users split by gender, or by
``user_active_degree`` on KuaiRand), read by the experts framework's ``domain_feature`` option
and by STAR (``models/frameworks/star/``).

Each value of the feature's vocabulary is a domain; the padding / missing id (0) and the OOV id
(1, a value below the vocabulary's ``min_count`` or never seen in training) together form one
more domain, ``<feature>_unknown``, domain 0, so a row without a known value has a domain of its
own, trained on exactly the training rows without a known value (none on the simulator, whose
genders are never missing: it then keeps its initial weights). Id k >= 2 is domain k - 1:
``num_ids - 1`` domains in all. Ids outside ``[0, num_ids)`` (never written by the Beam job) are
unknown, as the embedding looks them up as OOV.
"""
from __future__ import annotations

import dataclasses
from typing import List

import tensorflow as tf

from features.encodings import encoding_of
from features.schema import Schema, SchemaError
from models.options import OptionError

OPTION = "framework_options.domain_feature"


@dataclasses.dataclass(frozen=True)
class Domains:
    """The domains of ``feature`` (a scalar categorical feature with ``num_ids`` ids)."""

    feature: str
    num_ids: int

    @property
    def count(self) -> int:
        """R, the number of domains: one per vocabulary value and the unknown one."""
        return self.num_ids - 1

    @property
    def names(self) -> List[str]:
        """Domain r's name: ``<feature>_unknown`` (r = 0), else ``<feature>_<id>`` with id = r + 1."""
        return [f"{self.feature}_unknown"] + [f"{self.feature}_{i}" for i in range(2, self.num_ids)]

    def index(self, inputs: dict) -> tf.Tensor:
        """Each row's domain r [B] int32, from the feature's encoded ids in ``inputs``."""
        ids = tf.reshape(tf.cast(inputs[self.feature], tf.int64), [-1])
        known = (ids >= 2) & (ids < self.num_ids)
        return tf.cast(tf.where(known, ids - 1, tf.zeros_like(ids)), tf.int32)

    def one_hot(self, inputs: dict) -> tf.Tensor:
        """Each row's domain as a one-hot row [B, R] float32."""
        return tf.one_hot(self.index(inputs), self.count, dtype=tf.float32)


def domains_of(schema: Schema, feature: str, key: str = OPTION) -> Domains:
    """The :class:`Domains` of ``feature``; an :class:`OptionError` naming ``key`` unless it is a
    scalar integer-encoded categorical feature (vocab / hash / bucketize) with at least one value."""
    try:
        f = schema.feature(feature)
    except SchemaError as err:
        raise OptionError(f"{key} = {feature!r}: {err}") from None
    if not (f.is_integer and f.width == 1 and encoding_of(f).field_kind == "lookup"):
        known = [g.name for g in schema.features if g.is_integer and g.width == 1
                 and encoding_of(g).field_kind == "lookup"]
        raise OptionError(f"{key} = {feature!r}: the domains come from a scalar categorical feature "
                          f"(one id per row); '{feature}' is {f.kind} with encoding '{f.encoding['type']}' and width "
                          f"{f.width}. Scalar categorical features: {known}")
    if f.num_ids < 3:
        raise OptionError(f"{key} = {feature!r}: num_ids = {f.num_ids}, so the feature has no value (ids 0 and 1 "
                          f"are padding and OOV)")
    return Domains(f.name, int(f.num_ids))


def select_domain(values: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """values [B, R, ...] -> [B, ...]: each row's entry of its own domain ``index`` [B] (a batched
    gather, so the other domains' entries get no gradient)."""
    return tf.gather(values, tf.cast(index, tf.int32)[:, None], batch_dims=1)[:, 0]
