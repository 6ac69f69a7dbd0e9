"""CTRModel, the plain model (framework ``none``): schema-driven embedding, field modules
(``models.field_modules``: fields joined before the backbone, or a representation u joined to
its output, r = concat(r_b, u) and z = z_b + w_u^T u), a registered backbone and a logit per
task from the task heads (``models.heads``: additive by default, z_t = z + w_t^T r + b_t; one
task: z).

Under mixed precision only the MLP hidden layers compute in the mixed dtype
(``models.layers.precision_sensitive``); embeddings, logits and probabilities are float32.
The training step is :class:`models.framework.FrameworkModel`'s (the compiled per-task losses).
"""
from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from models.backbones import backbone_class, get_backbone
from models.embedding import FeatureEmbedding, field_info
from models.field_modules import FieldModules, count_added_fields, modules_use_sequences
from models.framework import Forward, FrameworkModel
from models.heads import get_heads
from models.layers import plain, precision_sensitive


@tf.keras.utils.register_keras_serializable("ctrflow")
class CTRModel(FrameworkModel):
    """Encoded feature dict -> {task: probability [B, 1]}; other batch columns are ignored.

    ``heads`` / ``head_options`` name the task heads (``models.heads``); ``field_modules``
    is a list of ``{"name": ..., options}`` (``models.field_modules``) whose output joins the
    embedded fields before the backbone or the backbone's output (each module's ``join``).
    """

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dcnv2",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, heads: str = "additive",
                 head_options: Optional[dict] = None, field_modules: Optional[List[dict]] = None, **kw):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **kw)
        self.heads_name, self.head_options = heads, dict(head_options or {})
        self.field_module_specs = [dict(m) for m in field_modules or []]
        cls = backbone_class(backbone)
        added = count_added_fields(schema_dict, self.field_module_specs)
        info = field_info(self.schema, self.embedding_options.get("features"), added)
        num_fields = len(info)
        width = cls.input_embedding_dim(num_fields, self.embedding_dim, self.backbone_options)  # FFM: F * k
        with precision_sensitive():  # float32 but for MLP hidden layers under mixed precision (models.layers)
            sequences = cls.uses_sequences or modules_use_sequences(self.field_module_specs)
            self.embedding = FeatureEmbedding(schema_dict, embedding_dim=width, linear=cls.uses_linear,
                                              sequences=sequences, name="embedding",
                                              **self.embedding_options)
            self.added_fields = FieldModules(schema_dict, self.field_module_specs, width)
            self.backbone = get_backbone(backbone, num_fields, self.embedding_dim, info, **self.backbone_options)
            self.task_heads = get_heads(heads, tasks, **self.head_options)

    def embedded(self, inputs: dict, training=None):
        """The embedded fields the field modules and the backbone read (a framework such as ``iv``
        rewrites them here)."""
        return self.embedding(inputs, training=training)

    def forward(self, inputs: dict, training=None) -> Forward:
        emb = self.embedded(inputs, training=training)
        out = self.backbone(self.added_fields(inputs, emb, training=training), training=training)
        out = self.added_fields.join(out, inputs, emb, training=training)  # representation modules' u
        return Forward(self.task_heads(out, training=training), {})

    def variable_groups(self):
        """The model's parts, for a stage to freeze (e.g. the tables while a new head learns)."""
        return {"embedding": self.embedding.trainable_variables, "field_modules": self.added_fields.trainable_variables,
                "backbone": self.backbone.trainable_variables, "heads": self.task_heads.trainable_variables}

    def get_config(self):
        return {**super().get_config(), "heads": self.heads_name, "head_options": plain(self.head_options),
                "field_modules": plain(self.field_module_specs)}
