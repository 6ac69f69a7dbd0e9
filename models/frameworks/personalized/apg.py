"""APG (Yan et al., "APG: Adaptive Parameter Generation Network for Click-Through Rate
Prediction", NeurIPS 2022), registered as framework ``apg`` over any backbone.

APG replaces a deep CTR model's static MLP layers by layers whose parameters are generated per
sample from a condition z (Sec. 3.1-3.2), kept affordable by the low-rank parameterisation
W(z) = U S(z) V computed as a decomposed feed-forward, by sharing U and V over the samples
(common characteristics; only S(z) is specific) and by over-parameterising U = U_l U_r,
V = V_l V_r during training (Sec. 3.3): :class:`~models.frameworks.personalized.layers.GeneratedMLP`.

    E = embedding(x);  z = flatten(E_u)                  E_u: the user-side fields (``user_roles``)
    h_L, logit = GeneratedMLP(flatten(E) or r_b, z)      every hidden layer generated (Eq. above)

Where it attaches (``models/frameworks/personalized/base.py``): with backbone ``dnn`` the
generated MLP *is* the deep network (dnn's units, activation, dropout), as the paper turns a
model's MLP into APG layers; over any other backbone it is the prediction MLP on r_b
(``prediction_units``), the backbone's own layers stay static.

Condition (``condition``): ``user`` (the default, as GPRec's comparison uses it for individual
user modeling: the paper's group- / mix-wise conditions on user features; here the user id and
profile fields, roles ``personal`` + ``user``, flattened) or ``self`` (self-wise: each layer's
own input).

Defaults: rank K = 8, over-parameterisation P = 64, a generator MLP [512, 256] (ReLU) per
layer, generated biases: the values of FuxiCTR's APG template, the library GPRec's authors ran
their baselines with (Sec. IV-A4). The paper's own text was not available to check them.
Choices the paper leaves open: each layer has its own generator (its hypernetwork), the logit
unit is static, and APG's objective is the plain compiled loss.
"""
from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from models.factory import register_framework
from models.framework import Forward
from models.embedding import flat_fields
from models.frameworks.personalized.base import BASE_DEFAULTS, BASE_RANGES, PersonalizedModel
from models.frameworks.personalized.layers import GeneratedMLP
from models.layers import precision_sensitive
from models.options import OptionError

CONDITIONS = ("user", "self")
DEFAULTS = {
    **BASE_DEFAULTS,
    "prediction_dropout": 0.0,
    "condition": "user",                  # user (z = the user-side fields) | self (self-wise)
    "user_roles": ["personal", "user"],   # the fields z reads with condition user
    "rank": 8,                            # K of W = U S(z) V
    "overparam": 64,                      # P of U = U_l U_r, V = V_l V_r (0: no over-parameterisation)
    "generator_units": [512, 256],        # each layer's generator MLP (hypernetwork) hidden units
    "generator_activation": "relu",
}
RANGES = {**BASE_RANGES, "prediction_dropout": "[0, 1)", "rank": "[1, inf)", "overparam": "[0, inf)",
          "generator_units": "[1, inf)"}


@register_framework("apg")
@tf.keras.utils.register_keras_serializable("ctrflow")
class APG(PersonalizedModel):
    """Encoded feature dict -> {task: probability [B, 1]} (module docstring)."""

    option_defaults, option_ranges = DEFAULTS, RANGES
    option_choices = {"condition": CONDITIONS}
    role_options = ("user_roles",)

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o = self.options
        self.user_fields = self.fields("user_roles") if o["condition"] == "user" else []
        with precision_sensitive():
            self.mlp = GeneratedMLP(**self.mlp_options(), rank=o["rank"], overparam=o["overparam"] or None,
                                    generator_units=o["generator_units"],
                                    generator_activation=o["generator_activation"],
                                    self_wise=o["condition"] == "self", name="apg_mlp")

    @classmethod
    def check_framework_options(cls, options, prefix="framework_options."):
        options = super().check_framework_options(options, prefix)
        rank, overparam = (options.get(k, DEFAULTS[k]) for k in ("rank", "overparam"))
        if 0 < overparam < rank:
            raise OptionError(f"{prefix}overparam = {overparam}: the over-parameterised inner width must be at "
                              f"least the rank ({prefix}rank = {rank}); 0 turns it off (framework 'apg')")
        return options

    def condition(self, emb) -> tf.Tensor:
        """z: the user-side fields, flattened (an empty [B, 0] with the self-wise condition)."""
        return flat_fields(emb.fields, self.user_fields, dtype=tf.float32)

    def forward(self, inputs: dict, training=None) -> Forward:
        emb = self.embedding(inputs, training=training)
        _, logit = self.mlp((self.representation(emb, training=training), self.condition(emb)), training=training)
        return Forward({self.task: logit}, {})

    def variable_groups(self):
        """The embedding, the backbone and ``apg``: the generated MLP (generators, U, V, logit)."""
        return {**super().variable_groups(), "apg": self.mlp.trainable_variables}
