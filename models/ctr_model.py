"""CTRModel: schema-driven embedding + a registered backbone + a probability per task.

Single task: the task's logit is the backbone logit. Several tasks: each task t adds
its own linear head on the backbone representation to the backbone logit,
z_t = z_b + w_t^T r_b + b_t (heads start at zero, so every backbone weight keeps a
gradient and tasks separate as they train). Under mixed precision only the MLP hidden
layers compute in the mixed dtype (``models.layers.precision_sensitive``); embeddings,
logits and probabilities are float32.
"""
from __future__ import annotations

import inspect
import re
from typing import Dict, List, Optional

import tensorflow as tf

from features.schema import Schema
from models.backbones import backbone_class, get_backbone
from models.embedding import FeatureEmbedding, plan_fields
from models.layers import plain, precision_sensitive

_EMBEDDING_OPTIONS = sorted(set(inspect.signature(FeatureEmbedding.__init__).parameters)
                            - {"self", "schema_dict", "embedding_dim", "linear", "name", "kw"})


@tf.keras.utils.register_keras_serializable("ctrflow")
class CTRModel(tf.keras.Model):
    """Encoded feature dict -> {task: probability [B, 1]}; other batch columns are ignored."""

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dcnv2",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **kw):
        super().__init__(**kw)
        tasks = list(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct labels, got {tasks}")
        Schema.from_dict(schema_dict).check_names(labels=tasks, what="model config")
        embedding_options = dict(embedding_options or {})
        unknown = sorted(set(embedding_options) - set(_EMBEDDING_OPTIONS))
        if unknown:
            raise ValueError(f"embedding_options: unknown option(s) {unknown}; known: {_EMBEDDING_OPTIONS}")
        self.schema_dict, self.tasks = schema_dict, tasks
        self.backbone_name, self.embedding_dim = backbone, int(embedding_dim)
        self.backbone_options, self.embedding_options = dict(backbone_options or {}), embedding_options
        num_fields = len(plan_fields(schema_dict, embedding_options.get("features")))
        cls = backbone_class(backbone)
        width = cls.input_embedding_dim(num_fields, self.embedding_dim)
        with precision_sensitive():  # float32 but for MLP hidden layers under mixed precision (models.layers)
            self.embedding = FeatureEmbedding(schema_dict, embedding_dim=width, linear=cls.uses_linear,
                                              name="embedding", **embedding_options)
            self.backbone = get_backbone(backbone, num_fields, self.embedding_dim,
                                         **self.backbone_options)
            self.heads = {}
            if len(tasks) > 1:
                self.heads = {t: tf.keras.layers.Dense(1, kernel_initializer="zeros",
                                                       name="head_" + re.sub(r"[^A-Za-z0-9_.-]", "_", t))
                              for t in tasks}

    def logits(self, inputs: dict, training=None) -> Dict[str, tf.Tensor]:
        """{task: logit [B, 1] float32}."""
        out = self.backbone(self.embedding(inputs, training=training), training=training)
        if not self.heads:
            return {self.tasks[0]: out.logit}
        return {t: out.logit + self.heads[t](out.repr) for t in self.tasks}

    def call(self, inputs, training=None):
        return {t: tf.sigmoid(z) for t, z in self.logits(inputs, training=training).items()}

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "schema_dict": plain(self.schema_dict),
                "tasks": plain(self.tasks), "backbone": self.backbone_name,
                "backbone_options": plain(self.backbone_options), "embedding_dim": self.embedding_dim,
                "embedding_options": plain(self.embedding_options)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
