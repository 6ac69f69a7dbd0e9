"""MLoRA (Yang et al., "MLoRA: Multi-Domain Low-Rank Adaptive Network for CTR Prediction",
RecSys'24) over any backbone, registered as framework ``mlora``: the HDA paper's (KDD'25) baseline
"treating different user groups as different domains" (head vs long-tail users).

Every fully-connected layer l of the shared network gets, per domain d, a LoRA adapter (§3):

    h_l = phi(W_l h_{l-1} + b_l + B_d^l A_d^l h_{l-1})          A_d^l [in, r_l], B_d^l [r_l, out]
    r_l = max(floor(n_l / alpha), 1)                            n_l: layer l's width, alpha: ``temperature``

B_d^l starts at zero and A_d^l random (LoRA), so at initialisation the model *is* the shared network;
each row reads its own domain's adapters only (:class:`~models.frameworks.mlora.layers.LoRADense`),
so a row's loss moves the shared weights and its own domain's adapters, no other domain's.

Domains (``domains``): ``user_group`` (the default, the HDA comparison): the head / long-tail group
of the row, ``_group`` in training and the learned head ids of the user feature at serving
(:class:`models.domains.UserGroups`, filled from the training split by the non-fit first stage
``user_groups``); ``feature``: the values of the categorical ``domain_feature``
(:func:`models.domains.domains_of`, as STAR), no extra stage.

Where the adapters sit (``models/frameworks/personalized/base.py``, as APG's generated layers):
with backbone ``dnn`` the adapted MLP *is* the deep network (dnn's units, activation, dropout read
from ``backbone_options``) over the flattened field embeddings; over any other backbone (WideDeep,
DeepFM, DCNv2, ...) the adapted MLP is the prediction MLP (``prediction_units``) on the backbone's
representation r_b, and the backbone's own layers stay shared (unadapted). The logit layer is
adapted too (``adapt_logit``; its rank is 1).

Defaults and choices (the paper's text was only partly available; its released code was read, none
copied): ``temperature`` alpha = 32, the released configuration for MovieLens with its two
gender domains (the closest to two user groups; 16 on Amazon, 256 on Taobao), so dnn [64, 32]
gets ranks 2 and 1; ``rank`` fixes every layer's rank instead. The released layer also adds a
domain bias b_d (``domain_bias: true``); off by default, as the equation above has none.

Training: by default the shared part and the adapters are trained jointly from the start (one
fit stage ``train``). The released code also pre-trains the backbone on all domains and then
fine-tunes with the shared part frozen; ``pretrain: true`` offers that: a fit stage ``pretrain``
(adapters frozen, so the plain shared network is trained) then ``train`` with the shared weights
(embedding, backbone, the MLP's W_l, b_l) frozen, only the adapters trained.
"""
from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from models.domains import (GROUP_INPUT, USER_GROUPS_STAGE, UserGroups, domains_of, run_user_groups_stage,
                             user_feature_of, with_user_groups)
from models.factory import register_framework
from models.framework import Forward, Stage
from models.frameworks.mlora.layers import LoRAMLP
from models.frameworks.personalized.base import BASE_DEFAULTS, BASE_RANGES, PersonalizedModel
from models.layers import precision_sensitive
from models.options import OptionError

DOMAINS = ("user_group", "feature")
DEFAULTS = {
    **BASE_DEFAULTS,                 # prediction_units / prediction_activation (backbones other than dnn)
    "prediction_dropout": 0.0,
    "domains": "user_group",         # user_group (head / long-tail users) | feature (domain_feature's values)
    "user_feature": None,            # user_group: the user-id feature (null: the schema's one personal feature)
    "domain_feature": None,          # feature: the scalar categorical feature whose values are the domains
    "temperature": 32.0,             # alpha: r_l = max(floor(n_l / alpha), 1)
    "rank": None,                    # a fixed rank for every layer instead (null: from the temperature)
    "adapt_logit": True,             # the 1-unit logit layer has its adapters too
    "domain_bias": False,            # a per-domain bias b_d in each adapted layer (the released code's)
    "pretrain": False,               # stages pretrain (adapters frozen) then train (shared part frozen)
}
RANGES = {**BASE_RANGES, "prediction_dropout": "[0, 1)", "temperature": "(0, inf)", "rank": "[1, inf)"}
CHOICES = {"domains": DOMAINS}
TYPES = {"user_feature": str, "domain_feature": str, "rank": int}


@register_framework("mlora")
@tf.keras.utils.register_keras_serializable("ctrflow")
class MLoRA(PersonalizedModel):
    """Encoded feature dict (+ ``_group`` in training with ``domains: user_group``) -> {task:
    probability [B, 1]}; see the module docstring."""

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o, schema = self.options, self.schema
        with precision_sensitive():
            if o["domains"] == "user_group":
                if GROUP_INPUT not in schema.side_columns():
                    raise OptionError(f"framework_options.domains = 'user_group': the data's schema has no head / "
                                      f"tail group column (preprocess data with a user column), or use domains: "
                                      f"feature with a domain_feature")
                user = user_feature_of(schema, o["user_feature"])
                self.groups = UserGroups(user, schema.feature(user).num_ids, name="user_groups")
                self.domains, count = None, self.groups.count
            else:
                self.groups = None
                self.domains = domains_of(schema, o["domain_feature"])
                count = self.domains.count
            self.mlp = LoRAMLP(**self.mlp_options(), num_domains=count, temperature=o["temperature"], rank=o["rank"],
                               adapt_logit=o["adapt_logit"], domain_bias=o["domain_bias"], name="mlora_mlp")

    @classmethod
    def check_framework_options(cls, options: dict, prefix: str = "framework_options.") -> dict:
        """The flat checks; ``domains: feature`` needs ``domain_feature`` (checked against the schema when built)."""
        options = super().check_framework_options(options, prefix)
        if options.get("domains", DEFAULTS["domains"]) == "feature" and options.get("domain_feature") is None:
            raise OptionError(f"{prefix}domain_feature: domains = 'feature' needs the feature whose values are "
                              f"MLoRA's domains (e.g. gender)")
        return options

    @property
    def domain_names(self) -> List[str]:
        return list(self.groups.names if self.groups is not None else self.domains.names)

    def domain_index(self, inputs: dict) -> tf.Tensor:
        """Each row's domain [B] int32 (its user group, or its domain feature's domain)."""
        return (self.groups if self.groups is not None else self.domains).index(inputs)

    # ---- stages ----------------------------------------------------------------------------------
    def stages(self) -> List[Stage]:
        fits = [Stage("pretrain", True, ("adapters",)), Stage("train", True, ("shared",))] \
            if self.options["pretrain"] else [Stage("train")]
        return with_user_groups(fits, getattr(self, "groups", None))

    def run_stage(self, name: str, data) -> dict:
        if name == USER_GROUPS_STAGE.name:
            return run_user_groups_stage(self.groups, data)
        return super().run_stage(name, data)

    def variable_groups(self):
        """embedding, backbone (when built), ``mlp``: the MLP's shared W_l, b_l, ``adapters``: every
        A_d, B_d (b_d); ``shared``: embedding, backbone and mlp together."""
        groups = {**super().variable_groups(), "mlp": self.mlp.shared_variables,
                  "adapters": self.mlp.adapter_variables}
        groups["shared"] = [v for k in ("embedding", "backbone", "mlp") for v in groups.get(k, [])]
        return groups

    # ---- forward -----------------------------------------------------------------------------------
    def forward(self, inputs: dict, training=None) -> Forward:
        domain = self.domain_index(inputs)
        emb = self.embedding(inputs, training=training)
        _, logit = self.mlp((self.representation(emb, training=training), domain), training=training)
        return Forward({self.task: logit}, {"domain": domain})
