"""STAR (Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for
Multi-Domain CTR Prediction", CIKM'21) over any backbone, with the domains of a user attribute
(GPRec §IV-A3, Table II: gender, or ``user_active_degree`` on KuaiRand):

    x    = concat of the field embeddings (backbone ``dnn``), else the backbone's r_b
    x'   = PN_p(x)                                       partitioned normalization   (§4.1)
    s_m  = FCN_p(x'), layer l: phi((W_p^l ⊙ W^l)^T h + b_p^l + b^l)  star topology FCN (§4.2)
    s_a  = MLP([e_p, E_aux])                             auxiliary network           (§4.3)
    y    = sigma(s_m + s_a [+ z_b])

p is the row's domain (``models.domains``: a value of ``domain_feature``, or unknown), e_p its
learned domain-indicator embedding and E_aux the flattened embeddings of ``aux_features`` (all
fields by default: the paper's "other features").

Why the FCN reads r_b: in the paper STAR's FCN *is* the prediction network over the pooled,
concatenated embeddings. Over another backbone it takes the place of the backbone's classifier:
the backbone's interaction output r_b (cross network, attention, ... and their deep part) is the
sample's representation and the star FCN predicts from it per domain, which is the same
construction for every backbone and keeps each backbone whole. For ``dnn`` r_b would be the output
of the very MLP that STAR's FCN replaces, so there (``fcn_input: auto``) the FCN reads the
flattened embeddings and no backbone is built: STAR as published. ``fcn_input`` forces either.
Over a backbone its own logit z_b is added (``backbone_logit``): a logit can hold terms r_b does
not (the first-order terms of DeepFM, WideDeep and FM, FinalMLP's bilinear fusion), which STAR
would otherwise drop, so STAR over a backbone never predicts from less than the backbone does.

Defaults: the FCN is as wide and deep as the backbone's MLP (``fcn_units: null`` takes its
``dnn_units``), so STAR against its backbone differs only by the star topology, PN and the
auxiliary network; PN with Keras' BatchNormalization momentum / epsilon (0.99, 1e-3); the
auxiliary network two fully connected layers (a hidden layer of ``aux_units`` [64], the logit),
"much simpler than the main network" as the paper asks (its width is ours). ``normalization:
batch`` (one shared BN, the paper's BN ablation) or ``none`` and ``auxiliary: false`` switch parts off.
"""
from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from models.backbones import backbone_class, get_backbone
from models.domains import domains_of
from models.embedding import FeatureEmbedding, field_info, flat_fields
from models.factory import register_framework
from models.framework import Forward, FrameworkModel
from models.frameworks.star.layers import PartitionedNormalization, StarFCN
from models.layers import Tower, precision_sensitive
from models.options import OptionError

FCN_INPUTS = ("auto", "embeddings", "representation")
NORMALIZATIONS = ("partitioned", "batch", "none")

DEFAULTS = {
    "domain_feature": None,        # required: a scalar categorical feature; its values are the domains
    "fcn_input": "auto",           # auto (dnn: embeddings, else representation) | embeddings | representation
    "fcn_units": None,             # star FCN hidden units; None: the backbone's dnn_units
    "fcn_activation": "relu",
    "fcn_dropout": 0.0,
    "backbone_logit": True,        # add the backbone's logit z_b (FCN over r_b only)
    "normalization": "partitioned",  # partitioned (PN, §4.1) | batch (one shared BN) | none
    "norm_momentum": 0.99,
    "norm_epsilon": 1e-3,
    "auxiliary": True,             # the auxiliary network's logit s_a (§4.3)
    "aux_units": [64],             # its hidden layer(s)
    "aux_activation": "relu",
    "aux_features": None,          # features whose embeddings it reads besides the domain's; None: all
}
RANGES = {"fcn_units": "[1, inf)", "fcn_dropout": "[0, 1)", "norm_momentum": "[0, 1)", "norm_epsilon": "(0, inf)",
          "aux_units": "[1, inf)"}
CHOICES = {"fcn_input": FCN_INPUTS, "normalization": NORMALIZATIONS}
TYPES = {"domain_feature": str, "fcn_units": list, "aux_features": list}


@register_framework("star")
@tf.keras.utils.register_keras_serializable("ctrflow")
class STAR(FrameworkModel):
    """Encoded feature dict -> {task: probability [B, 1]} (see the module docstring)."""

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES
    single_task = True

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o = self.options
        self.task = self.tasks[0]
        self.domains = domains_of(self.schema, o["domain_feature"])
        cls = backbone_class(backbone)
        fcn_input = o["fcn_input"] if o["fcn_input"] != "auto" else (
            "embeddings" if cls.registered_name == "dnn" else "representation")
        info = field_info(self.schema, self.embedding_options.get("features"))
        self.aux_fields = self._aux_fields(info)
        units = o["fcn_units"] or {**cls.defaults, **self.backbone_options}.get("dnn_units")
        if not units:
            raise OptionError(f"framework_options.fcn_units: backbone '{backbone}' has no dnn_units for STAR's FCN "
                              f"to copy; give the FCN's units")
        r = self.domains.count
        with precision_sensitive():  # float32 but for MLP hidden layers under mixed precision (models.layers)
            reads = cls if fcn_input == "representation" else None
            width = reads.input_embedding_dim(len(info), self.embedding_dim, self.backbone_options) if reads \
                else self.embedding_dim
            self.embedding = FeatureEmbedding(schema_dict, embedding_dim=width, linear=bool(reads and reads.uses_linear),
                                              sequences=bool(reads and reads.uses_sequences), name="embedding",
                                              **self.embedding_options)
            self.backbone = (get_backbone(backbone, len(info), self.embedding_dim, info, layer_name="backbone",
                                          **self.backbone_options) if reads else None)
            self.norm = (PartitionedNormalization(r if o["normalization"] == "partitioned" else 1, o["norm_momentum"],
                                                  o["norm_epsilon"], name="norm")
                         if o["normalization"] != "none" else None)
            self.fcn = StarFCN(units, r, o["fcn_activation"], o["fcn_dropout"], name="star_fcn")
            if o["auxiliary"]:
                self.domain_embedding = tf.keras.layers.Embedding(r, self.embedding_dim, name="domain_embedding")
                self.aux = Tower(o["aux_units"], o["aux_activation"], name="auxiliary")

    @classmethod
    def check_framework_options(cls, options: dict, prefix: str = "framework_options.") -> dict:
        """The flat checks; ``domain_feature`` is required (checked against the schema when built)."""
        options = super().check_framework_options(options, prefix)
        if options.get("domain_feature") is None:
            raise OptionError(f"{prefix}domain_feature: STAR needs the feature whose values are its domains "
                              f"(e.g. gender)")
        return options

    def _aux_fields(self, info: list) -> Optional[List[int]]:
        """The field indices of ``aux_features`` (None: every field)."""
        names = self.options["aux_features"]
        if names is None:
            return None
        names = list(names)
        embedded = [f for f, _ in info]
        missing = [n for n in names if n not in embedded]
        if missing or not names:
            raise OptionError(f"framework_options.aux_features = {names}: name embedded features (missing: "
                              f"{missing}); embedded: {sorted(set(embedded))}")
        return [i for i, (f, _) in enumerate(info) if f in names]

    # ---- the forward pass ------------------------------------------------------------------------
    def forward(self, inputs: dict, training=None) -> Forward:
        domain = self.domains.index(inputs)
        emb = self.embedding(inputs, training=training)
        out = None if self.backbone is None else self.backbone(emb, training=training)
        x = flat_fields(emb.fields, dtype=tf.float32) if out is None else out.repr
        if self.norm is not None:
            x = self.norm(x, domain if self.norm.num_domains > 1 else tf.zeros_like(domain), training=training)
        z = self.fcn(x, domain, training=training)  # s_m
        if out is not None and self.options["backbone_logit"]:
            z = z + out.logit  # + z_b
        if self.options["auxiliary"]:
            fields = flat_fields(emb.fields, self.aux_fields, dtype=tf.float32)
            a = tf.concat([tf.cast(self.domain_embedding(domain), tf.float32), fields], axis=1)
            z = z + tf.cast(self.aux(a, training=training)[1], tf.float32)  # + s_a
        return Forward({self.task: z}, {})

    def variable_groups(self):
        parts = {"embedding": [self.embedding], "backbone": [self.backbone], "normalization": [self.norm],
                 "fcn": [self.fcn], "auxiliary": [getattr(self, "domain_embedding", None), getattr(self, "aux", None)]}
        return {k: [v for layer in layers if layer is not None for v in layer.trainable_variables]
                for k, layers in parts.items()}
