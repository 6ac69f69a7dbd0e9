"""What APG, PEPNet and DGPM share: a single-task model over any backbone whose prediction
module reads user-side fields, picked from the schema by role.

    E = embedding(x)                        fields [B, F, d]
    r = backbone(E).repr                    r_b, the backbone's representation
    z = model's prediction module(r, E_u)   its logit (the backbone's own logit units are unused)

As GPRec attaches its modules (Sec. II-III: r_b into a prediction MLP), so each method attaches
to every backbone through the prediction MLP on r_b (``prediction_units``, GPRec's [64, 32, 16]).
For backbone ``dnn`` a model that sets :attr:`replaces_dnn` (APG, PEPNet) builds no backbone:
its own MLP, with dnn's units, activation and dropout (``backbone_options``), reads the flat
fields, so the deep network's every layer is the method's (the papers' MLP model) instead of a
static MLP under a conditioned one.

Roles (``features.schema.ROLES``) name the fields a model reads as user information (``personal``:
ID-like, e.g. user id; ``user``: the profile); :func:`models.embedding.fields_with_roles` picks them.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from features.schema import ROLES
from models.backbones import DNN, backbone_class, get_backbone
from models.embedding import FeatureEmbedding, field_info, fields_with_roles, flat_fields
from models.framework import FrameworkModel
from models.layers import precision_sensitive
from models.options import OptionError, check_activations

BASE_DEFAULTS = {
    "prediction_units": [64, 32, 16],  # the prediction MLP on r_b (GPRec Sec. IV-A4's widths)
    "prediction_activation": "relu",
}
BASE_RANGES = {"prediction_units": "[1, inf)"}


class PersonalizedModel(FrameworkModel):
    """The shared skeleton (module docstring). Subclasses set ``option_defaults`` (with
    :data:`BASE_DEFAULTS`), name their role-list options in ``role_options``, build their
    prediction module and write ``forward``."""

    single_task = True
    replaces_dnn = True                 # backbone dnn: the model's own MLP is the deep network
    role_options: Sequence[str] = ()    # options holding lists of roles

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        check_activations(self.options, "framework_options.", f"framework '{self.framework_name}'")
        self.task = self.tasks[0]
        cls = backbone_class(backbone)
        info = field_info(self.schema, self.embedding_options.get("features"))
        self.field_names, self.field_roles = [name for name, _ in info], [role for _, role in info]
        self.owns_mlp = self.replaces_dnn and cls.registered_name == "dnn"
        width = cls.input_embedding_dim(len(info), self.embedding_dim, self.backbone_options)  # FFM: F * k
        with precision_sensitive():  # float32 but for MLP hidden layers under mixed precision (models.layers)
            self.embedding = FeatureEmbedding(schema_dict, embedding_dim=width,
                                              linear=cls.uses_linear and not self.owns_mlp,
                                              sequences=cls.uses_sequences, name="embedding", **self.embedding_options)
            self.backbone = None if self.owns_mlp else get_backbone(backbone, len(info), self.embedding_dim, info,
                                                                    **self.backbone_options)

    def fields(self, option: str) -> List[int]:
        """The field indices of the roles listed in framework option ``option``."""
        return fields_with_roles(self.field_roles, self.options[option], f"framework_options.{option}")

    def mlp_options(self) -> Dict[str, object]:
        """units, activation and dropout of the model's MLP: dnn's own (``backbone_options``)
        when it replaces dnn, else the prediction MLP's (``prediction_*``)."""
        if not self.owns_mlp:
            o = self.options
            return {"units": o["prediction_units"], "activation": o["prediction_activation"],
                    "dropout": o.get("prediction_dropout", 0.0)}
        o = {**DNN.defaults, **self.backbone_options}
        for key, off in (("dnn_batch_norm", False), ("dnn_l2", 0.0)):
            if o[key] != off:
                raise OptionError(f"backbone_options.{key} = {o[key]!r}: framework '{self.framework_name}' makes "
                                  f"dnn's MLP its own, which has no batch normalisation or L2; leave it unset")
        return {"units": list(o["dnn_units"]), "activation": o["dnn_activation"], "dropout": o["dnn_dropout"]}

    def representation(self, emb, training=None) -> tf.Tensor:
        """What the prediction module reads: r_b, or the flat fields when the model owns dnn's MLP."""
        if self.backbone is None:
            return flat_fields(emb.fields, dtype=tf.float32)
        return tf.cast(self.backbone(emb, training=training).repr, tf.float32)

    @classmethod
    def check_framework_options(cls, options: dict, prefix: str = "framework_options.") -> dict:
        """The flat checks, and every entry of a role-list option a schema role."""
        options = super().check_framework_options(options, prefix)
        for key in cls.role_options:
            roles = options.get(key, [])
            if not isinstance(roles, list) or any(r not in ROLES for r in roles):
                raise OptionError(f"{prefix}{key} = {roles!r}: expected a list of roles from {list(ROLES)} "
                                  f"(framework '{cls.framework_name}')")
        return options

    def variable_groups(self):
        """The embedding and the backbone (subclasses add their own parts)."""
        groups = {"embedding": self.embedding.trainable_variables}
        if self.backbone is not None:
            groups["backbone"] = self.backbone.trainable_variables
        return groups
