"""Rec4Ad (Gao et al., "Rec4Ad: A Free Lunch to Mitigate Sample Selection Bias for Ads CTR
Prediction in Taobao", Sec. 3.2-3.3), registered as framework ``rec4ad``.

Training batches mix ad samples and recommendation samples mapped to pseudo-ads (the Beam
transform ``pseudo_ad_mapping``, Sec. 3.1); the ``_source`` side input says which (1 = ad).

    e' = SABN(e, s)                                     (Eq. 6; e = the backbone's input fields)
    x  = backbone(e')                                   (the "MLP layers" of Sec. 3.2.1; DIN by default)
    x_inv^s = MLP_inv^s(x),  x_con^s = MLP_con^ad(x)    (Eq. 7, 10: per-source invariant projection,
                                                         ONE confounder projection shared by both)
    s^ = sigma(MLP_H(GRL_alpha(x_inv)))                 (Eq. 8-9: the source discriminator H)
    y^s = sigma(MLP_pred^s(x_inv (+) x_con))            (Eq. 13-14)
    L = L_C + lambda1 L_A + lambda2 L_D                 (Eq. 15; L_A Eq. 8, L_D Eq. 11-12)

Reductions: the paper sums L_C and L_A over the samples and L_D over the d^2 pairs of both
sources. Here L_C is Keras' mean over the batch (SUM_OVER_BATCH_SIZE) and L_A the same mean, and
L_D enters as L_D / B (B = the batch on this replica): Eq. 15 divided by B throughout, so the
paper's lambda1 = 0.005 and lambda2 = 0.5 keep their meaning (the same gradients up to 1/B).

Serving scores ads: without ``training`` every row takes the ad branch (SABN's ad statistics,
MLP_inv^ad, MLP_pred^ad) and the served call computes nothing else (no discriminator, no rec
branch), so the export needs no ``source`` from a client. The paper gives no widths for the
projections, H or the prediction MLPs: see :data:`DEFAULTS` for ours.

Ablations (Fig. 6): ``normalization: shared`` (w/o SABN: one BN for both sources),
``lambda1: 0`` (w/o alignment), ``lambda2: 0`` (w/o decorrelation).
"""
from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from models.backbones import backbone_class, get_backbone
from models.embedding import FeatureEmbedding, field_info, plan_fields
from models.factory import register_framework
from models.framework import Forward, FrameworkModel, Objective, task_value, weighted_mean
from models.frameworks.rec4ad.layers import AD, DECORRELATIONS, SourceAwareBatchNorm, decorrelation_loss
from models.layers import MLP, GradientReversal, Tower, precision_sensitive
from models.options import OptionError

NORMALIZATIONS = ("sabn", "shared", "none")

# framework_options and their defaults: the paper's (Sec. 4.1) where it gives them
DEFAULTS = {
    "d": 128,                        # width of x_inv and x_con (Sec. 4.1)
    "alpha": 0.1,                    # GRL scale (Eq. 9, Sec. 4.1)
    "lambda1": 0.005,                # weight of L_A (Eq. 15, Sec. 4.1); 0 = w/o alignment
    "lambda2": 0.5,                  # weight of L_D (Eq. 15, Sec. 4.1); 0 = w/o decorrelation
    "normalization": "sabn",         # sabn (Eq. 6) | shared (w/o SABN) | none
    "decorrelation": "printed",      # printed (Eq. 11 as printed: / sqrt(Cov(p,p))) | pearson
    "projection_hidden": [],         # hidden units of MLP_inv / MLP_con before their d-wide layer (ours: none)
    "discriminator_units": [64],     # hidden units of MLP_H (ours)
    "prediction_units": [64],        # hidden units of MLP_pred^s (ours)
    "activation": "relu",
    "bn_momentum": 0.99,             # SABN's moving averages (Keras' default; bias-corrected, layers.py)
    "bn_epsilon": 0.001,
}
RANGES = {"d": "[1, inf)", "alpha": "[0, inf)", "lambda1": "[0, inf)", "lambda2": "[0, inf)",
          "projection_hidden": "[1, inf)", "discriminator_units": "[1, inf)", "prediction_units": "[1, inf)",
          "bn_momentum": "[0, 1)", "bn_epsilon": "(0, inf)"}
CHOICES = {"normalization": NORMALIZATIONS, "decorrelation": DECORRELATIONS}
TYPES = {"projection_hidden": list, "discriminator_units": list, "prediction_units": list}


@register_framework("rec4ad")
@tf.keras.utils.register_keras_serializable("ctrflow")
class Rec4Ad(FrameworkModel):
    """Encoded feature dict (+ ``_source`` in training) -> {task: ad click probability [B, 1]}."""

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES
    single_task = True
    objective_names = ("ctr", "align", "decor")
    training_aucs = {"discriminator_auc": ("source_prob", "source_label")}  # Fig. 8
    analyses = ("representations",)

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "din",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        if "_source" not in self.schema.side_columns():
            raise OptionError("rec4ad needs the sample source (ad / rec) of every training row: the data's schema "
                              "has no source column (preprocess with `source_column` and the pseudo_ad_mapping "
                              "transform, e.g. configs/preprocess_sim_rec4ad.yaml)")
        o = self.options
        self.task = self.tasks[0]
        cls = backbone_class(backbone)
        num_fields = len(plan_fields(self.schema, self.embedding_options.get("features")))
        with precision_sensitive():
            width = cls.input_embedding_dim(num_fields, self.embedding_dim, self.backbone_options)  # FFM: F * k
            self.embedding = FeatureEmbedding(schema_dict, embedding_dim=width, linear=cls.uses_linear,
                                              sequences=cls.uses_sequences, name="embedding", **self.embedding_options)
            self.sabn = (SourceAwareBatchNorm(o["bn_momentum"], o["bn_epsilon"], shared=o["normalization"] == "shared",
                                              name="sabn") if o["normalization"] != "none" else None)
            self.backbone = get_backbone(backbone, num_fields, self.embedding_dim,
                                         field_info(self.schema, self.embedding_options.get("features")),
                                         **self.backbone_options)
            units = [*o["projection_hidden"], int(o["d"])]
            self.inv = {s: MLP(units, o["activation"], name=f"inv_{s}") for s in ("ad", "rec")}  # Eq. 7
            self.con = MLP(units, o["activation"], name="con_ad")  # Eq. 10: the ad projection, for both
            self.reverse = GradientReversal(o["alpha"], name="grl")
            self.discriminator = Tower(o["discriminator_units"], o["activation"], name="discriminator")  # MLP_H
            self.pred = {s: Tower(o["prediction_units"], o["activation"], name=f"pred_{s}") for s in ("ad", "rec")}

    # ---- the forward pass ------------------------------------------------------------------
    @staticmethod
    def _by_source(branch, source):
        """branch("ad") on ad rows, branch("rec") on rec rows; only the ad branch when ``source`` is None."""
        ad = branch("ad")
        if source is None:
            return ad
        return tf.where(tf.equal(source, AD)[:, None], ad, tf.cast(branch("rec"), ad.dtype))

    def representations(self, inputs: dict, training=None, source=None):
        """(x_inv, x_con) [B, d] each; ``source`` [B] (1 = ad) picks each row's branches, None = the ad path."""
        emb = self.embedding(inputs, training=training)
        if self.sabn is not None:
            emb = emb._replace(fields=tf.cast(self.sabn(emb.fields, source, training=training), emb.fields.dtype))
        x = self.backbone(emb, training=training).repr
        x_inv = self._by_source(lambda s: self.inv[s](x, training=training), source)
        return x_inv, self.con(x, training=training)

    def source_probability(self, x_inv) -> tf.Tensor:
        """H's probability that a representation comes from an ad sample (Eq. 8), [B] float32."""
        return tf.sigmoid(tf.cast(self.discriminator(x_inv, training=False)[1], tf.float32))[:, 0]

    def _logit(self, x_inv, x_con, source, training):
        x_new = tf.concat([x_inv, tf.cast(x_con, x_inv.dtype)], axis=-1)  # Eq. 13
        return tf.cast(self._by_source(lambda s: self.pred[s](x_new, training=training)[1], source), tf.float32)  # Eq. 14

    def forward(self, inputs: dict, training=None) -> Forward:
        """Source-aware in training; the ad path at inference (validation scores ads as served)."""
        source = tf.reshape(inputs["_source"], [-1]) if training else None
        x_inv, x_con = self.representations(inputs, training=training, source=source)
        label = tf.ones_like(x_inv[:, 0], tf.float32) if source is None else tf.cast(tf.equal(source, AD), tf.float32)
        h = tf.cast(self.discriminator(self.reverse(x_inv), training=training)[1], tf.float32)  # Eq. 8-9
        aux = {"x_inv": x_inv, "x_con": x_con, "source_logit": h, "source_prob": tf.sigmoid(h[:, 0]),
               "source_label": label}
        return Forward({self.task: self._logit(x_inv, x_con, source, training)}, aux)

    def call(self, inputs, training=None, return_forward=False):
        """The served call (no ``return_forward``, not training) runs the ad path alone."""
        if return_forward or training:
            return super().call(inputs, training=training, return_forward=return_forward)
        if not self.discriminator.built:  # a first call that serves still creates every weight (rec branch, H)
            self._build_every_branch(inputs)
        x_inv, x_con = self.representations(inputs, training=training)
        return {self.task: tf.sigmoid(self._logit(x_inv, x_con, None, training))}

    def _build_every_branch(self, inputs: dict) -> None:
        rec = tf.zeros(tf.shape(inputs[self.schema.features[0].name])[:1], tf.int64)
        x_inv, x_con = self.representations(inputs, training=False, source=rec)
        self._logit(x_inv, x_con, rec, False)
        self.discriminator(x_inv, training=False)

    # ---- objectives --------------------------------------------------------------------------
    def objectives(self, x, y, forward: Forward, sample_weight):
        """L_C (compiled), L_A (Eq. 8) and L_D (Eq. 12), reduced as the module docstring says."""
        aux = forward.aux
        sw = None if sample_weight is None else task_value(sample_weight, self.task)
        l_a = tf.nn.sigmoid_cross_entropy_with_logits(aux["source_label"], aux["source_logit"][:, 0])
        rows = tf.cast(tf.shape(aux["x_inv"])[0], tf.float32)
        is_ad = tf.cast(aux["source_label"] > 0.5, tf.int64)
        l_d = decorrelation_loss(aux["x_inv"], aux["x_con"], is_ad, self.options["decorrelation"])
        return {**super().objectives(x, y, forward, sample_weight),
                "align": Objective(weighted_mean(l_a, sw), float(self.options["lambda1"])),
                "decor": Objective(l_d / rows, float(self.options["lambda2"]))}

    def variable_groups(self):
        return {"embedding": self.embedding.trainable_variables, "backbone": self.backbone.trainable_variables,
                "discriminator": self.discriminator.trainable_variables}
