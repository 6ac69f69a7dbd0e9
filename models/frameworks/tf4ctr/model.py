"""TF4CTR, the Twin Focus framework (Li et al., Sec. III, Algorithm 1), registered as
framework ``tf4ctr``.

    h_es, h_hs = SSEM(X)                                    (Eq. 3-5, layers.SampleSelectionEmbedding)
    (h^_es, z_s), (h^_hs, z_c) = simple / complex encoder   (Eq. 6)
    y^ = sigma(DFM(h^_es, z_s, h^_hs, z_c))                 (Eq. 8-11)
    L_total = L_ctr(y^, y) + w L_TF(z_s, z_c, y)            (Eq. 12, L_TF Eq. 7)

The simple and complex encoders are the two branches of a two-branch backbone
(``backbone(emb, branches=True)``): the default ``dualmlp`` gives MLP_s / MLP_c (Eq. 6,
the paper's own setup); DeepFM, DCN, DCNv2, xDeepFM, AutoInt+, WideDeep, GDCN and
FinalMLP contribute their explicit (simple) and deep (complex) branches (Sec. IV-B4). The
backbone's own fusion is replaced by the DFM.

The step is :class:`models.framework.FrameworkModel`'s with two objectives, ``ctr`` (the
compiled L_ctr on the fused prediction, plus regularization) and ``tf`` (L_TF, weight
``tf_loss_weight``); it logs ``loss`` (the total), ``ctr_loss``, ``tf_loss`` and, as
gradient taps, ``grad_norm_zs`` / ``grad_norm_zc``: the mean over the batch of |dl_i/dz_i|,
the per-sample total loss's gradient reaching each encoder's logit (Fig. 5), per batch.
Single-task, as in the paper. Its run report adds the sample-difficulty analysis (Fig. 10).
"""
from __future__ import annotations

import collections
from typing import List, Optional

import tensorflow as tf

from models.backbones import BACKBONES, backbone_class, get_backbone
from models.embedding import field_info
from models.factory import register_framework
from models.framework import COMPILED, Forward, FrameworkModel, Objective, task_value
from models.frameworks.tf4ctr.layers import DFM_MODES, SSEM_MODES, DynamicFusion, SampleSelectionEmbedding
from models.layers import precision_sensitive
from models.losses import check_twin_focus_options, twin_focus_loss
from models.options import OptionError

TF4CTRLogits = collections.namedtuple("TF4CTRLogits", ["fused", "simple", "complex"])
TF4CTRLogits.__doc__ = "fused z (DFM), simple z_s and complex z_c logits, each [B, 1] float32."

# framework_options and their defaults: the authors' best logged runs (SER with the simple
# encoder's table at half width, WSF, alpha 0.25; (c, gamma) = (0.8, 2) as on ML-1M, Sec. IV-C)
DEFAULTS = {
    "ssem": "ser",                 # share | ser | gm | moe (Eq. 3-5)
    "simple_embedding_dim": None,  # SER's simple-encoder table width; None = embedding_dim // 2
    "ssem_gate_units": None,       # GM / MoE gate hidden units; None = [D // 4], D = F * d
    "ssem_expert_units": None,     # MoE expert hidden units before the width-D output; None = [D // 2]
    "ssem_activation": "relu",
    "ssem_dropout": 0.0,
    "ssem_batch_norm": True,
    "dfm": "wsf",                  # sum | wsf | vf | cf | moef (Eq. 8-11)
    "vf_temperature": 0.8,         # VF's tau (the authors' value)
    "alpha": 0.25,                 # Eq. 7
    "c": 0.8,                      # Eq. 7, m = 2 - c
    "gamma": 2.0,                  # Eq. 7, in {1, 2, 3} (Sec. IV-C3)
    "tf_loss_weight": 1.0,         # weight of L_TF in Eq. 12 (1); 0 trains on L_ctr alone (Fig. 5b)
}
RANGES = {"simple_embedding_dim": "[1, inf)", "ssem_gate_units": "[1, inf)", "ssem_expert_units": "[1, inf)",
          "ssem_dropout": "[0, 1)", "vf_temperature": "(0, inf)", "alpha": "[0, 1]", "c": "[0, 1]",
          "gamma": "[0, inf)", "tf_loss_weight": "[0, inf)"}
CHOICES = {"ssem": SSEM_MODES, "dfm": DFM_MODES}
TYPES = {"simple_embedding_dim": int, "ssem_gate_units": list, "ssem_expert_units": list}  # None defaults


def _two_branch_backbones() -> List[str]:
    return sorted(n for n, cls in BACKBONES.items() if cls.branch_names)


@register_framework("tf4ctr")
@tf.keras.utils.register_keras_serializable("ctrflow")
class TF4CTR(FrameworkModel):
    """Encoded feature dict -> {task: fused probability [B, 1]} (see the module docstring).

    ``backbone`` names a two-branch backbone whose (simple, complex) branches are the
    encoders; ``framework_options`` are the keys of :data:`DEFAULTS`.
    """

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES
    single_task = True
    objective_names = (COMPILED, "tf")
    gradient_taps = {"grad_norm_zs": "z_s", "grad_norm_zc": "z_c"}
    analyses = ("difficulty",)

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dualmlp",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o = self.options
        self.task = self.tasks[0]
        self.alpha, self.c, self.gamma = float(o["alpha"]), float(o["c"]), float(o["gamma"])
        check_twin_focus_options(self.alpha, self.c, self.gamma)
        with precision_sensitive():  # embeddings and gates' first layers in float32 (models.layers)
            self.ssem = SampleSelectionEmbedding(
                schema_dict, embedding_dim=self.embedding_dim, mode=o["ssem"],
                simple_embedding_dim=o["simple_embedding_dim"], embedding_options=self.embedding_options,
                gate_units=o["ssem_gate_units"], expert_units=o["ssem_expert_units"],
                activation=o["ssem_activation"], dropout=o["ssem_dropout"], batch_norm=o["ssem_batch_norm"],
                sequences=backbone_class(backbone).uses_sequences, name="ssem")
        self.backbone = get_backbone(backbone, self.ssem.num_fields, self.embedding_dim,
                                     field_info(self.schema, self.embedding_options.get("features")),
                                     **self.backbone_options)
        if not self.backbone.branches:
            raise OptionError(f"tf4ctr needs a two-branch backbone for its simple and complex encoders (Eq. 6); "
                              f"'{backbone}' with options {self.backbone_options} has one branch. Two-branch "
                              f"backbones: {_two_branch_backbones()} (dcn / dcnv2 / gdcn with structure: parallel)")
        self.dfm = DynamicFusion(o["dfm"], o["vf_temperature"], name="dfm", dtype="float32")

    def variable_groups(self):
        """SSEM's tables and gates, the two encoders, the fusion."""
        return {"ssem": self.ssem.trainable_variables, "backbone": self.backbone.trainable_variables,
                "dfm": self.dfm.trainable_variables}

    def logits(self, inputs: dict, training=None) -> TF4CTRLogits:
        """The fused, simple and complex logits (Eq. 3-11)."""
        simple_emb, complex_emb = self.ssem(inputs, training=training)
        simple, complex_ = self.backbone(simple_emb, training=training, branches=True, complex_emb=complex_emb)
        fused = self.dfm(simple.repr, simple.logit, complex_.repr, complex_.logit, training=training)
        return TF4CTRLogits(tf.cast(fused, tf.float32), simple.logit, complex_.logit)

    def forward(self, inputs: dict, training=None) -> Forward:
        out = self.logits(inputs, training=training)
        return Forward({self.task: out.fused}, {"z_s": out.simple, "z_c": out.complex})

    def objectives(self, x, y, forward: Forward, sample_weight):
        """L_ctr (compiled) and w L_TF (Eq. 7, 12), sample-weighted alike."""
        sw = None if sample_weight is None else task_value(sample_weight, self.task)
        l_tf = twin_focus_loss(task_value(y, self.task), forward.aux["z_s"], forward.aux["z_c"], self.alpha, self.c,
                               self.gamma, sample_weight=sw)
        return {**super().objectives(x, y, forward, sample_weight),
                "tf": Objective(l_tf, float(self.options["tf_loss_weight"]))}
