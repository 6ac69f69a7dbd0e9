"""The domain of a sample from a categorical feature: the user groups of the multi-domain
baselines (GPRec §IV-A3, Table II: MMoE, PLE and STAR with users split by gender, or by
``user_active_degree`` on KuaiRand), read by the experts framework's ``domain_feature`` option,
by STAR (``models/frameworks/star/``) and by MLoRA's ``domains: feature``. The head / long-tail
user groups (:class:`UserGroups`, HDA's and MLoRA's domains) are filled from the training split by
:func:`fill_user_groups`, the non-fit stage both frameworks run first.

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

import numpy as np
import tensorflow as tf

from features.encodings import encoding_of
from features.schema import Schema, SchemaError
from models.framework import Stage, dataset_columns
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


GROUP_INPUT = "_group"  # the side input with the head / tail group (features.schema.SIDE_INPUTS)
GROUP_NAMES = ("tail", "head")  # group g: 0 = long-tail user, 1 = head user (pipeline.user_groups)

_register = tf.keras.utils.register_keras_serializable("ctrflow")


@_register
class UserGroups(tf.keras.layers.Layer):
    """The head / long-tail group of a row (HDA Def. 3.1), where training and serving differ:
    training rows carry it as the side input ``_group`` (1 = head, 0 = tail, from the Beam job),
    a served request does not (``_group`` = -1, ``features.schema.SIDE_INPUTS``). So the layer
    learns, once from the training split (:meth:`fill`), which ids of the user feature are head
    users, and a row without a group gets its user id's: an unknown user (OOV id) is long-tail.

    ``is_head`` is a non-trainable weight [num_ids] (saved with the model, exported with it).
    Two groups: ``count`` = 2, group g is domain g, named :data:`GROUP_NAMES`.
    """

    count = len(GROUP_NAMES)
    names = list(GROUP_NAMES)

    def __init__(self, user_feature: str, num_ids: int, **kw):
        super().__init__(**kw)
        self.user_feature, self.num_ids = user_feature, int(num_ids)
        self.is_head = self.add_weight(name="is_head", shape=(self.num_ids,), dtype=tf.float32, trainable=False,
                                       initializer="zeros", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def fill(self, user_ids, groups) -> dict:
        """Learn the head ids from training rows: ``user_ids`` (encoded ids of the user feature)
        and their ``groups`` (1 = head). An id seen as head in any row is head. Returns
        {head_ids, user_ids}: how many distinct ids are head, and were seen."""
        ids = np.asarray(user_ids, np.int64).reshape(-1)
        head = np.asarray(groups, np.int64).reshape(-1) == 1
        flags = np.zeros(self.num_ids, np.float32)
        inside = (ids >= 0) & (ids < self.num_ids)
        flags[ids[inside & head]] = 1.0
        self.is_head.assign(flags)
        return {"head_ids": int(flags.sum()), "user_ids": int(np.unique(ids[inside]).size)}

    def index(self, inputs: dict) -> tf.Tensor:
        """Each row's group [B] int32: ``_group`` where it is 0 / 1, else the user id's flag."""
        ids = tf.reshape(tf.cast(inputs[self.user_feature], tf.int32), [-1])
        flags = tf.gather(tf.convert_to_tensor(self.is_head), tf.clip_by_value(ids, 0, self.num_ids - 1))
        by_id = tf.where((ids >= 0) & (ids < self.num_ids), tf.cast(flags, tf.int32), tf.zeros_like(ids))
        if GROUP_INPUT not in inputs:
            return by_id
        given = tf.reshape(tf.cast(inputs[GROUP_INPUT], tf.int32), [-1])
        return tf.where(given >= 0, given, by_id)

    def one_hot(self, inputs: dict) -> tf.Tensor:
        """Each row's group as a one-hot row [B, 2] float32."""
        return tf.one_hot(self.index(inputs), self.count, dtype=tf.float32)

    def call(self, inputs: dict):
        return self.index(inputs)

    def get_config(self):
        return {**super().get_config(), "user_feature": self.user_feature, "num_ids": self.num_ids}


def fill_user_groups(groups: UserGroups, dataset, extra=()) -> tuple:
    """A staged framework's non-fit "user groups" step (HDA's stage 1a, MLoRA's first stage):
    :meth:`UserGroups.fill` from one pass of ``dataset`` (the train split, batches (x, y[, w])
    carrying the user feature and ``_group``). ``extra``: more input keys collected in the same
    pass. Returns (fill's summary, {key: array [N]} of the user feature, ``_group`` and ``extra``,
    {task: labels [N]}) (:func:`models.framework.dataset_columns`)."""
    columns, labels = dataset_columns(dataset, [groups.user_feature, GROUP_INPUT, *extra])
    summary = groups.fill(columns[groups.user_feature], columns[GROUP_INPUT].astype(np.int64))
    return summary, columns, labels


def user_feature_of(schema: Schema, feature=None, key: str = "framework_options.user_feature") -> str:
    """The scalar categorical feature holding the user id: ``feature``, else the schema's one
    such feature with role ``personal`` (an OptionError naming ``key`` when there is none or
    several, or when the schema has no head / tail group column to learn the groups from)."""
    if not schema.group_column:
        raise OptionError(f"{key}: the data has no head / tail group column (preprocess writes it when the "
                          f"data has a user column), so there are no user groups to learn")
    if feature is None:
        found = [f.name for f in schema.features if f.role == "personal" and f.is_integer and f.width == 1
                 and encoding_of(f).field_kind == "lookup"]
        if len(found) != 1:
            raise OptionError(f"{key} = null: expected exactly one scalar categorical feature of role 'personal' "
                              f"(the user id) to look the groups up by, found {found}; name it")
        return found[0]
    return domains_of(schema, feature, key).feature


USER_GROUP = "user_group"  # a ``domain_feature`` value: the head / long-tail user groups, not a feature
USER_GROUPS_STAGE = Stage("user_groups", fit=False)  # the first, non-fit stage that fills them


def domains_for(schema: Schema, feature: str, key: str = OPTION):
    """The domains a multi-domain framework's ``domain_feature`` names: the head / long-tail
    :class:`UserGroups` for :data:`USER_GROUP` (its user feature found by :func:`user_feature_of`),
    else the feature's :class:`Domains`. Both give ``count``, ``names``, ``index(inputs)``."""
    if feature != USER_GROUP:
        return domains_of(schema, feature, key)
    user = user_feature_of(schema, None, key)
    return UserGroups(user, schema.feature(user).num_ids, name="user_groups")


def with_user_groups(stages: List[Stage], domains) -> List[Stage]:
    """``stages`` after :data:`USER_GROUPS_STAGE` when ``domains`` are the user groups (a
    :class:`UserGroups`, filled there by :func:`run_user_groups_stage`)."""
    return [USER_GROUPS_STAGE, *stages] if isinstance(domains, UserGroups) else list(stages)


def run_user_groups_stage(domains: UserGroups, data) -> dict:
    """:data:`USER_GROUPS_STAGE`: learn the head ids from the train split (``data("train")``)."""
    return {"users": fill_user_groups(domains, data("train"))[0]}
