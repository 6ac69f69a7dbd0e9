"""TF4CTR, the Twin Focus framework (Li et al., Sec. III, Algorithm 1), registered as
framework ``tf4ctr``.

    h_es, h_hs = SSEM(X)                                    (Eq. 3-5, models.tf4ctr_layers)
    (h^_es, z_s), (h^_hs, z_c) = simple / complex encoder   (Eq. 6)
    y^ = sigma(DFM(h^_es, z_s, h^_hs, z_c))                 (Eq. 8-11)
    L_total = L_ctr(y^, y) + L_TF(z_s, z_c, y)              (Eq. 12, L_TF Eq. 7)

The differentiated encoders are the two branches of a two-branch backbone
(``call_branches``): the default ``dualmlp`` gives MLP_s / MLP_c (Eq. 6, the paper's
own setup); DeepFM, DCN, DCNv2, xDeepFM, AutoInt+, WideDeep, GDCN and FinalMLP
contribute their explicit (simple) and deep (complex) branches (Sec. IV-B4). The
backbone's own fusion is replaced by the DFM.

``call`` returns only the fused ``{task: probability [B, 1]}`` (what is served and
exported). ``train_step`` adds L_TF to the compiled loss on the fused prediction (plus
the regularization losses), scaled for ``tf.distribute`` like the compiled loss, and
logs ``loss`` (the total), ``ctr_loss`` (compiled loss + regularization), ``tf_loss``
and ``grad_norm_zs`` / ``grad_norm_zc``: the mean over the batch of |dl_i/dz_i|,
the per-sample total loss's gradient reaching each encoder's logit (Fig. 5), taken on
the training tape. The grad norms are per-batch values (the epoch log holds the last
batch's); ``test_step`` reports the same losses without them.

Single-task, as in the paper: ``tasks`` must hold one label.
"""
from __future__ import annotations

import collections
from typing import List, Optional

import tensorflow as tf

from features.schema import Schema
from models.backbones import BACKBONES, get_backbone
from models.ctr_model import (_EMBEDDING_OPTIONS, apply_checked_gradients, checked_inputs, finite_or_stop,
                              step_number, step_randomness)
from models.factory import register_framework
from models.layers import plain, precision_sensitive
from models.losses import check_twin_focus_options, twin_focus_loss
from models.options import OptionError, check_options
from models.tf4ctr_layers import DFM_MODES, SSEM_MODES, DynamicFusion, SampleSelectionEmbedding

TF4CTRLogits = collections.namedtuple("TF4CTRLogits", ["fused", "simple", "complex"])
TF4CTRLogits.__doc__ = "fused z (DFM), simple z_s and complex z_c logits, each [B, 1] float32."

# framework_options and their defaults: the authors' best logged runs (SER with the easy
# table at half width, WSF, alpha 0.25; (c, gamma) = (0.8, 2) as on ML-1M, Sec. IV-C)
DEFAULTS = {
    "ssem": "ser",                 # share | ser | gm | moe (Eq. 3-5)
    "easy_embedding_dim": None,    # SER's easy table width; None = embedding_dim // 2
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
_MODEL_KW = ("name", "trainable", "dtype")
RANGES = {"easy_embedding_dim": "[1, inf)", "ssem_gate_units": "[1, inf)", "ssem_expert_units": "[1, inf)",
          "ssem_dropout": "[0, 1)", "vf_temperature": "(0, inf)", "alpha": "[0, 1]", "c": "[0, 1]",
          "gamma": "[0, inf)", "tf_loss_weight": "[0, inf)"}
CHOICES = {"ssem": SSEM_MODES, "dfm": DFM_MODES}
TYPES = {"easy_embedding_dim": int, "ssem_gate_units": list, "ssem_expert_units": list}  # None defaults


class _BatchMean(tf.keras.metrics.Metric):
    """The mean of the values of the latest update only: a per-batch log value. Its sum
    and count are sync-on-read SUM variables, so under tf.distribute the result is the
    mean over the global batch."""

    def __init__(self, name: str, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_weight(name="total", initializer="zeros")
        self.count = self.add_weight(name="count", initializer="zeros")

    def update_state(self, values, sample_weight=None):
        values = tf.cast(tf.reshape(values, [-1]), self.dtype)
        return tf.group(self.total.assign(tf.reduce_sum(values)),
                        self.count.assign(tf.cast(tf.size(values), self.dtype)))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)


def _two_branch_backbones() -> List[str]:
    return sorted(n for n, cls in BACKBONES.items() if cls.branch_names)


@register_framework("tf4ctr")
@tf.keras.utils.register_keras_serializable("ctrflow")
class TF4CTR(tf.keras.Model):
    """Encoded feature dict -> {task: fused probability [B, 1]} (see the module docstring).

    ``backbone`` names a two-branch backbone whose (simple, deep) branches are the
    (simple, complex) encoders; ``framework_options`` are the keys of :data:`DEFAULTS`.
    """

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES  # models.factory

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dualmlp",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        model_kw = {k: options.pop(k) for k in _MODEL_KW if k in options}
        options = check_options(options, DEFAULTS, "framework_options.", "framework 'tf4ctr'", RANGES, CHOICES,
                                TYPES)
        super().__init__(**model_kw)
        tasks = list(tasks)
        if len(tasks) != 1:
            raise OptionError(f"tf4ctr is single-task (the paper's setting): tasks must hold one label, "
                             f"got {tasks}; train one model per task or use framework 'none'")
        Schema.from_dict(schema_dict).check_names(labels=tasks, what="model config")
        embedding_options = dict(embedding_options or {})
        bad = sorted(set(embedding_options) - set(_EMBEDDING_OPTIONS))
        if bad:
            raise OptionError(f"embedding_options: unknown option(s) {bad}; known: {_EMBEDDING_OPTIONS}")
        self.options = {**DEFAULTS, **options}
        o = self.options
        self.schema_dict, self.tasks, self.task = schema_dict, tasks, tasks[0]
        self.backbone_name, self.embedding_dim = backbone, int(embedding_dim)
        self.backbone_options, self.embedding_options = dict(backbone_options or {}), embedding_options
        self.alpha, self.c, self.gamma = float(o["alpha"]), float(o["c"]), float(o["gamma"])
        self.tf_loss_weight = float(o["tf_loss_weight"])
        check_twin_focus_options(self.alpha, self.c, self.gamma)

        with precision_sensitive():  # embeddings and gates' first layers in float32 (models.layers)
            self.ssem = SampleSelectionEmbedding(
                schema_dict, embedding_dim=self.embedding_dim, mode=o["ssem"],
                easy_embedding_dim=o["easy_embedding_dim"], embedding_options=embedding_options,
                gate_units=o["ssem_gate_units"], expert_units=o["ssem_expert_units"],
                activation=o["ssem_activation"], dropout=o["ssem_dropout"], batch_norm=o["ssem_batch_norm"],
                name="ssem")
        self.backbone = get_backbone(backbone, self.ssem.num_fields, self.embedding_dim, **self.backbone_options)
        if not self.backbone.branches:
            raise OptionError(f"tf4ctr needs a two-branch backbone for its simple and complex encoders (Eq. 6); "
                             f"'{backbone}' with options {self.backbone_options} has one branch. Two-branch "
                             f"backbones: {_two_branch_backbones()} (dcn / dcnv2 / gdcn with structure: parallel)")
        self.dfm = DynamicFusion(o["dfm"], o["vf_temperature"], name="dfm", dtype="float32")
        self.total_loss_tracker = tf.keras.metrics.Mean(name="total_loss")
        self.tf_loss_tracker = tf.keras.metrics.Mean(name="tf_loss")
        self.grad_norm_zs = _BatchMean(name="grad_norm_zs")
        self.grad_norm_zc = _BatchMean(name="grad_norm_zc")

    # ---- forward -----------------------------------------------------------------------
    def encode(self, inputs: dict, training=None):
        """(simple, complex) :data:`BackboneOutput` of the differentiated encoders (Eq. 3-6)."""
        easy, hard = self.ssem(inputs, training=training)
        out = self.backbone.call_branches(easy, training=training, deep_emb=hard)
        self.backbone.built = True  # its weights exist now; call_branches bypasses Layer.__call__
        return out

    def logits(self, inputs: dict, training=None) -> TF4CTRLogits:
        simple, complex_ = self.encode(inputs, training=training)
        fused = self.dfm(simple.repr, simple.logit, complex_.repr, complex_.logit, training=training)
        return TF4CTRLogits(tf.cast(fused, tf.float32), simple.logit, complex_.logit)

    def call(self, inputs, training=None):
        return {self.task: tf.sigmoid(self.logits(inputs, training=training).fused)}

    # ---- training (Algorithm 1) ----------------------------------------------------------
    def _task_value(self, value):
        return value[self.task] if isinstance(value, dict) else value

    def _total_loss(self, x, y, y_pred, sample_weight, out: TF4CTRLogits):
        """L_ctr + regularization (compiled, scaled for distribution) + L_TF scaled the same
        way (Eq. 12); updates the loss trackers with the unscaled values."""
        if self.compiled_loss is None:
            raise RuntimeError("tf4ctr: compile the model with a loss on the fused prediction (L_ctr)")
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        ctr = self.compute_loss(x, y, y_pred, sample_weight)
        sw = None if sample_weight is None else self._task_value(sample_weight)
        l_tf = twin_focus_loss(self._task_value(y), out.simple, out.complex, self.alpha, self.c, self.gamma,
                               sample_weight=sw)
        batch = tf.shape(out.fused)[0]
        self.total_loss_tracker.update_state(ctr * replicas + self.tf_loss_weight * l_tf, sample_weight=batch)
        self.tf_loss_tracker.update_state(l_tf, sample_weight=batch)
        return ctr + self.tf_loss_weight * l_tf / replicas

    def _logs(self, x, y, y_pred, sample_weight) -> dict:
        logs = dict(self.compute_metrics(x, y, y_pred, sample_weight))
        logs["ctr_loss"] = logs["loss"]  # the compiled loss's own tracker: L_ctr + regularization
        logs["loss"] = logs.pop("total_loss")
        return logs

    def train_step(self, data):
        """Algorithm 1's step; inputs, the three logits and the gradients are checked finite
        and random draws (SSEM dropout, VF's Gumbel noise) seeded by the step, with the
        helpers CTRModel's step uses (models.ctr_model)."""
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        step = step_number(self)
        x = checked_inputs(self, x, step)
        with step_randomness(self), tf.GradientTape() as tape:
            out = self.logits(x, training=True)
            y_pred = {self.task: tf.sigmoid(out.fused)}
            loss = self._total_loss(x, y, y_pred, sample_weight, out)
            # the loss goes on once the logits are finite (they stay the gradient sources)
            [loss] = finite_or_stop(list(zip(TF4CTRLogits._fields, out)), "logit", step, release=[loss])
        # first-order weights that neither encoder reads (an MLP's) get no gradient
        grad_zs, grad_zc = apply_checked_gradients(self, tape, loss, step, sources=[out.simple, out.complex])
        # dl_i/dz_i of the per-sample loss: the mean-reduced loss's gradient times the global batch
        global_batch = tf.cast(tf.shape(out.fused)[0], tf.float32) * tf.distribute.get_replica_context(
        ).num_replicas_in_sync
        self.grad_norm_zs.update_state(tf.abs(grad_zs) * global_batch)
        self.grad_norm_zc.update_state(tf.abs(grad_zc) * global_batch)
        return self._logs(x, y, y_pred, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        out = self.logits(x, training=False)
        y_pred = {self.task: tf.sigmoid(out.fused)}
        self._total_loss(x, y, y_pred, sample_weight, out)
        logs = self._logs(x, y, y_pred, sample_weight)
        for key in (self.grad_norm_zs.name, self.grad_norm_zc.name):
            logs.pop(key)
        return logs

    # ---- config ----------------------------------------------------------------------------
    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "schema_dict": plain(self.schema_dict),
                "tasks": plain(self.tasks), "backbone": self.backbone_name,
                "backbone_options": plain(self.backbone_options), "embedding_dim": self.embedding_dim,
                "embedding_options": plain(self.embedding_options), **plain(self.options)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
