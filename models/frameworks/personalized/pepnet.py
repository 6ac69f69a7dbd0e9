"""PEPNet (Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information", KDD 2023), registered as framework ``pepnet`` over any backbone.

    delta_domain = GateNU_ep(E(F_d) ⊕ sg(E))             Eq. 3: EPNet, one scale per field
    O_ep = delta_domain ⊗ E                              Eq. 4: the personalised embeddings
    p = E(F_prior) ⊕ sg(O_ep)                            Eq. 5: PPNet's gate input
    H_l = act(H_{l-1} W_l + b_l) ⊗ GateNU_l(p)            Eq. 6-8: every hidden layer scaled
    y = sigma(w^T H_L + b)

GateNU is two layers, ReLU then gamma * sigmoid with gamma = 2 (Eq. 1-2,
:class:`~models.frameworks.personalized.layers.GateNU`); sg is the stop-gradient: the gates read
the general embeddings but do not train them (the prior and domain fields' own embeddings do
learn through the gates).

Mapping onto the schema (single task: the paper's task towers collapse to one, so PPNet's gate
output is not split over tasks):

- Domain-side features F_d (``domain_roles``): the paper's are the scenario id and per-scenario
  statistics. The simulator has no scenario; the default is the ``context`` fields (where and
  when the ad is shown: position, hour, weekday; on KuaiRand also ``tab``, its scenario).
  ``domain_roles: []`` leaves EPNet only the stop-gradient'ed embeddings.
- Personal prior F_prior (``prior_roles``): the paper's are user id, item id and author id; here
  the user-side fields, ``personal`` (user id) and ``user`` (the profile), as GPRec compares it
  for user modeling; add ``item`` / ``ad`` for the paper's item-side ids.
- delta_domain scales each field's embedding as a whole (delta_domain in R^k for k fields,
  broadcast over the embedding width).

Where it attaches (``models/frameworks/personalized/base.py``): EPNet rescales the fields every
backbone reads (not DIN's behaviour rows nor the first-order terms); PPNet gates an MLP: with
backbone ``dnn`` the deep network itself (dnn's units, activation, dropout: PEPNet's own model),
over any other backbone the prediction MLP on r_b (``prediction_units``).

Ours, as the paper gives no width: Gate NU hidden width ``gate_units`` 64 (FuxiCTR's PPNet
default). ``epnet`` / ``ppnet`` switch either part off (the paper's ablations).
"""
from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from models import layers as L
from models.factory import register_framework
from models.framework import Forward
from models.embedding import flat_fields
from models.frameworks.personalized.base import BASE_DEFAULTS, BASE_RANGES, PersonalizedModel
from models.frameworks.personalized.layers import GateNU, PPNetMLP
from models.layers import precision_sensitive

DEFAULTS = {
    **BASE_DEFAULTS,
    "prediction_dropout": 0.0,
    "domain_roles": ["context"],          # EPNet's domain-side fields F_d
    "prior_roles": ["personal", "user"],  # PPNet's personal prior F_prior
    "epnet": True,                        # Eq. 3-4 (off: O_ep = E)
    "ppnet": True,                        # Eq. 5-8 (off: a plain MLP)
    "gamma": 2.0,                         # Gate NU's scale (Eq. 2)
    "gate_units": 64,                     # Gate NU's hidden width (ours)
}
RANGES = {**BASE_RANGES, "prediction_dropout": "[0, 1)", "gamma": "(0, inf)", "gate_units": "[1, inf)"}


@register_framework("pepnet")
@tf.keras.utils.register_keras_serializable("ctrflow")
class PEPNet(PersonalizedModel):
    """Encoded feature dict -> {task: probability [B, 1]} (module docstring)."""

    option_defaults, option_ranges = DEFAULTS, RANGES
    role_options = ("domain_roles", "prior_roles")

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o = self.options
        self.domain_fields = self.fields("domain_roles") if o["epnet"] else []
        self.prior_fields = self.fields("prior_roles") if o["ppnet"] else []
        mlp = self.mlp_options()
        with precision_sensitive():
            self.epnet = (GateNU(len(self.field_roles), o["gate_units"], o["gamma"], name="epnet") if o["epnet"]
                          else None)
            self.mlp = (PPNetMLP(**mlp, gate_units=o["gate_units"], gamma=o["gamma"], name="ppnet") if o["ppnet"]
                        else L.Tower(mlp["units"], mlp["activation"], mlp["dropout"], name="mlp"))

    def domain_gate(self, fields: tf.Tensor) -> tf.Tensor:
        """delta_domain = GateNU_ep(E(F_d) ⊕ sg(E)) (Eq. 3), [B, F] float32."""
        x = tf.concat([flat_fields(fields, self.domain_fields, dtype=tf.float32),
                       tf.stop_gradient(flat_fields(fields, dtype=tf.float32))], -1)
        return self.epnet(x)

    def personalized_fields(self, fields: tf.Tensor) -> tf.Tensor:
        """O_ep = delta_domain ⊗ E (Eq. 4), [B, F, d] in the fields' dtype; E without EPNet."""
        if self.epnet is None:
            return fields
        return fields * tf.cast(self.domain_gate(fields), fields.dtype)[:, :, None]

    def gate_input(self, fields: tf.Tensor, personalized: tf.Tensor) -> tf.Tensor:
        """p = E(F_prior) ⊕ sg(O_ep) (Eq. 5), [B, D] float32."""
        return tf.concat([flat_fields(fields, self.prior_fields, dtype=tf.float32),
                          tf.stop_gradient(flat_fields(personalized, dtype=tf.float32))], axis=-1)

    def forward(self, inputs: dict, training=None) -> Forward:
        emb = self.embedding(inputs, training=training)
        personalized = self.personalized_fields(emb.fields)
        x = self.representation(emb._replace(fields=personalized), training=training)
        if self.options["ppnet"]:
            _, logit = self.mlp((x, self.gate_input(emb.fields, personalized)), training=training)
        else:
            _, logit = self.mlp(x, training=training)
        return Forward({self.task: tf.cast(logit, tf.float32)}, {})

    def variable_groups(self):
        """The embedding, the backbone, ``epnet`` (its gate) and ``ppnet`` (the gated MLP)."""
        epnet = self.epnet.trainable_variables if self.epnet is not None else []
        return {**super().variable_groups(), "epnet": epnet, "ppnet": self.mlp.trainable_variables}
