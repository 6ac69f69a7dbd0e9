"""GPRec (Wang et al., "GPRec: Bi-level User Modeling for Deep Recommenders", Sec. II-III),
registered as framework ``gprec``: group and personal user representations plugged into any
backbone.

    E = [E_p, E_o, E_v]                          one FeatureEmbedding for every field       (Eq. 1)
    r_b = backbone(E).repr                       the backbone's representation (its logit: see ``backbone``)
    log S = g(flatten(E_u)),  E_u = [E_p, E_o]   G per-group classifiers                    (Eq. 2)
    M = GumbelSoftmax(log S, tau)                m^1, m^0 = 1 - m^1; noise in training only  (Eq. 3-4)
    r_G = M (.) E_G                              dual group embeddings p_i, n_i             (Eq. 5-6)
    L_G = BCE(f_1([r_G, E_v]), y)                                                           (Eq. 7-8)
    L_G^Con = BCE(f_1([(1 - M) (.) E_G, E_v]; theta_1 fixed), y)   maximised                (Eq. 9-11)
    r_P = f_2(E_p)                               as wide as r_G                             (Eq. 12)
    L_O = mean cos(r_G, r_P)                                                                (Eq. 13)
    y^ = input | dp | ensemble strategy                                                     (Eq. 14-18)
    L = L_major + l1 L_G - l2 L_G^Con + l3 L_O                                              (Eq. 19-20)

Features by schema role: E_p = role ``personal`` (ID-like: the user id), E_o = role ``user``
(the profile), E_v = roles ``item`` and ``ad``. Fields of role ``context`` (position, hour, ...)
and ``sequence`` (behaviour histories) feed the backbone only: context describes the impression,
not the user or the item, so it has no place in the user's group (a user's groups would change
with the hour of the day) nor in f_1's item side (f_1 asks how the group likes the item,
Eq. 7); the paper's datasets have only user and item features (Sec. IV-A1).

Objectives, one tracker each (``<name>_loss``): ``ctr`` (the compiled L_major), ``group``
(L_G, weight ``lambda1``), ``group_contrast`` (L_G^Con, weight ``-lambda2``), ``orthogonal``
(L_O, weight ``lambda3``) and ``backbone``: BCE on the backbone's own prediction y^_b (its
logit on r_b), weight ``backbone_loss_weight``, 0 by default (Eq. 20). The authors' training
script adds that term unweighted (``criterion(y_main, target)``: the backbone model's output
beside the GPRec prediction ``y``, L_G's ``y_g[0]`` and L_G^Con's ``y_g[1]``); 1.0 reproduces it.
Each is a weighted mean over the batch as Keras reduces L_major (sample weights included). An
objective whose weight is 0 is not computed (its value is logged as 0): GPRec-3/4/5 of Fig. 2.

theta_1 fixed in Eq. 10 means f_1's weights get no gradient from L_G^Con (they are read through
``stop_gradient``, :class:`~models.frameworks.gprec.layers.GroupPredictor`); E_G and g get
theirs. ``contrast_item_gradient`` (default false) decides whether it also reaches the item
embeddings E_v. The paper fixes only theta_1, but maximising a BCE w.r.t. the item embeddings,
which the backbone and f_y read too, trains them to make predictions worse, which is not what
Eq. 11 is for (separating p_i from n_i): by default E_v enters Eq. 10 through ``stop_gradient``,
so L_G^Con moves only E_G, g and E_u (through g); ``true`` is the literal reading.

E_G starts N(0, 1) (``group_embedding_stddev``; the paper gives no initialisation; N(0, 1) is
PyTorch's default for ``nn.Embedding`` and ``torch.randn``, which the authors' code builds on).
From the tables' N(0, 0.01^2), p_i and n_i move along the same gradients (dL/dp_i = m^1_i g,
dL/dn_i = m^0_i g) and end nearly parallel: on the simulator (MLP backbone, 4 epochs) cos(p_i, n_i)
was 0.77 on average, the masks then hardly change r_G and g learns no division; from N(0, 1) it was
-0.04 (the paper reports 0.03, Sec. IV-E) and the validation AUC 0.645 against 0.619.

L_O: ``orthogonal_loss: signed`` is Eq. 13 as printed: minimising the signed cosine pushes
r_P towards -r_G, not towards orthogonality; ``squared`` minimises cos^2 (orthogonal r_G, r_P).

Ablations (Fig. 2): GPRec-1 ``group_embedding: single`` (one embedding e_i per group, a softmax
over the G classifier scores, r_G = sum_i w_i e_i as DGPM: no masks, no Gumbel noise and no
contrast branch, there being no 1 - M; ``group_pooling: concat`` keeps r_G G * d wide instead);
GPRec-2 ``personal: false`` (no r_P, no L_O; no personal feature needed); GPRec-3/4/5
``lambda1`` / ``lambda2`` / ``lambda3`` = 0 (with ``lambda1: 0`` f_1 is never trained and L_G^Con
reads it as initialised).

Served call (no ``return_forward``, not training): the prediction alone; no Gumbel noise, no
f_1, no contrast branch, so an export reads none of f_1's weights. ``test_step`` (``evaluate``)
computes the auxiliary losses too, at the inference masks.
"""
from __future__ import annotations

import collections
from typing import List, Optional, Sequence

import tensorflow as tf

from models.backbones import backbone_class, get_backbone
from models.embedding import FeatureEmbedding, field_info, fields_with_roles, flat_fields
from models.factory import register_framework
from models.framework import COMPILED, Forward, FrameworkModel, Objective, task_value, weighted_mean
from models.frameworks.gprec.layers import (CLASSIFIERS, POOLINGS, GroupClassifier, GroupEmbedding,
                                            GroupPredictor, GumbelMasks, PersonalRepresentation)
from models.layers import ConditionedMLP, Tower, precision_sensitive
from models.options import OptionError

STRATEGIES = ("input", "dp", "ensemble")
GROUP_EMBEDDINGS = ("dual", "single")
ORTHOGONAL_LOSSES = ("signed", "squared")
ITEM_ROLES = ("item", "ad")

# framework_options and their defaults: the paper's (Sec. IV-A4) where it gives them
DEFAULTS = {
    "num_groups": 60,                 # G (Sec. IV-A4, Fig. 3a)
    "temperature": 0.5,               # tau of Eq. 3 (Sec. IV-A4, Fig. 3b)
    "classifier": "per_group",        # g: per_group ("[64, 32, 2] for each group") | shared_trunk (G heads)
    "classifier_units": [64, 32],     # g's hidden units (Sec. IV-A4)
    "group_embedding": "dual",        # dual (Eq. 5) | single (GPRec-1)
    "group_pooling": None,            # concat (Eq. 6) | sum (Sec. III-B: large G); None: concat (dual), sum (single)
    "group_embedding_stddev": 1.0,    # p_i, n_i start N(0, s^2): PyTorch's default (module docstring)
    "personal": True,                 # r_P (Eq. 12); false: GPRec-2
    "personal_units": [64],           # f_2's hidden units before its r_G-wide output (ours: the paper gives none)
    "strategy": "input",              # input (Eq. 14) | dp (Eq. 15-16) | ensemble (Eq. 17-18)
    "prediction_units": [64, 32, 16],  # f_1, f_y, f_b, f_G, f_P hidden units, then a 1-unit logit (Sec. IV-A4)
    "dp_units": [32],                 # f_DP's hidden units: the H coefficients of W_DP (ours)
    "activation": "relu",
    "lambda1": 1.0,                   # weight of L_G (Eq. 20); 0: GPRec-3
    "lambda2": 0.001,                 # L_G^Con enters with -lambda2 (Eq. 20); 0: GPRec-4
    "lambda3": 0.0001,                # weight of L_O (Eq. 20); 0: GPRec-5
    "orthogonal_loss": "signed",      # signed (Eq. 13 as printed) | squared (cos^2)
    "contrast_item_gradient": False,  # L_G^Con's gradient reaches E_v (module docstring)
    "backbone_loss_weight": 0.0,      # BCE on the backbone's own prediction; the authors' script: 1.0
}
RANGES = {"num_groups": "[1, inf)", "temperature": "(0, inf)", "group_embedding_stddev": "(0, inf)",
          **{k: "[1, inf)" for k in ("classifier_units", "personal_units", "prediction_units", "dp_units")},
          **{k: "[0, inf)" for k in ("lambda1", "lambda2", "lambda3", "backbone_loss_weight")}}
CHOICES = {"classifier": CLASSIFIERS, "group_embedding": GROUP_EMBEDDINGS, "group_pooling": (*POOLINGS, None),
           "strategy": STRATEGIES, "orthogonal_loss": ORTHOGONAL_LOSSES}
TYPES = {"group_pooling": str}

Representations = collections.namedtuple("Representations", ["r_b", "z_b", "masks", "r_G", "r_P", "e_v"])
Representations.__doc__ = ("r_b [B, h] and the backbone's own logit z_b [B, 1]; the masks M [B, G, 2] (single: "
                           "the weights w [B, G]); r_G; r_P (None without it); flatten(E_v).")


def mean_probability_logit(logits: Sequence[tf.Tensor]) -> tf.Tensor:
    """logit(y) of y = the mean of sigma(z_k) (Eq. 18), computed stably:
    log y - log(1 - y) = logsumexp_k log sigma(z_k) - logsumexp_k log sigma(-z_k) (the 1/K
    cancels), exact where sigma(z) rounds to 0 or 1."""
    z = tf.stack([tf.cast(t, tf.float32) for t in logits], axis=0)
    return tf.reduce_logsumexp(tf.math.log_sigmoid(z), axis=0) - tf.reduce_logsumexp(tf.math.log_sigmoid(-z), axis=0)


@register_framework("gprec")
@tf.keras.utils.register_keras_serializable("ctrflow")
class GPRec(FrameworkModel):
    """Encoded feature dict -> {task: probability [B, 1]} (see the module docstring).

    Model API for the run-report analysis: :meth:`group_assignment`, :meth:`group_embeddings`,
    :meth:`user_features`.
    """

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES
    single_task = True
    objective_names = (COMPILED, "group", "group_contrast", "orthogonal", "backbone")
    analyses = ("gprec_groups",)  # group usage, cos(p_i, n_i), diversity (Sec. IV-E, Fig. 4; pipeline/gprec_groups.py)

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o = self.options
        self.task = self.tasks[0]
        self.dual = o["group_embedding"] == "dual"
        self.use_personal = bool(o["personal"])
        self.pooling = o["group_pooling"] or ("concat" if self.dual else "sum")
        info = field_info(self.schema, self.embedding_options.get("features"))
        self._select_fields(info)
        cls = backbone_class(backbone)
        width = cls.input_embedding_dim(len(info), self.embedding_dim, self.backbone_options)  # FFM: F * k
        with precision_sensitive():  # float32 but for MLP hidden layers under mixed precision (models.layers)
            self.embedding = FeatureEmbedding(schema_dict, embedding_dim=width, linear=cls.uses_linear,
                                              sequences=cls.uses_sequences, name="embedding", **self.embedding_options)
            self.backbone = get_backbone(backbone, len(info), self.embedding_dim, info, **self.backbone_options)
            self._build_gprec(o)

    def _select_fields(self, info: List[List[str]]) -> None:
        """Field indices of E_p, E_u = [E_p, E_o] and E_v, by schema role; errors name what is missing."""
        roles = [role for _, role in info]
        by_role = {name: fields_with_roles(roles, wanted, f"gprec's {name} fields", required=False)
                   for name, wanted in (("personal", ("personal",)), ("user", ("user",)), ("item", ITEM_ROLES))}
        self.personal_fields, other, self.item_fields = by_role["personal"], by_role["user"], by_role["item"]
        embedded = sorted({f"{f} ({r})" for f, r in info})
        if not other:
            raise OptionError(f"gprec divides users into groups by their features E_u = [E_p, E_o] (Eq. 2): the "
                              f"embedded features have no field of role 'user' (the profile); they are {embedded}")
        if self.use_personal and not self.personal_fields:
            raise OptionError(f"gprec's individual representation r_P = f_2(E_p) (Eq. 12) reads the features of role "
                              f"'personal' (ID-like, e.g. the user id): the embedded features have none ({embedded}); "
                              f"give one that role or set framework_options.personal: false (GPRec-2)")
        if not self.item_fields:
            raise OptionError(f"gprec's group predictor f_1(r_G, E_v) (Eq. 7) reads the item features (roles "
                              f"{list(ITEM_ROLES)}): the embedded features have none ({embedded})")
        self.user_fields = self.personal_fields + other
        self._user_feature_names = list(dict.fromkeys(info[i][0] for i in self.user_fields))

    def _build_gprec(self, o: dict) -> None:
        g, d, act = int(o["num_groups"]), self.embedding_dim, o["activation"]
        units = o["prediction_units"]
        self.classifier = GroupClassifier(g, o["classifier_units"], 2 if self.dual else 1, o["classifier"], act,
                                          name="group_classifier")
        self.masks = GumbelMasks(o["temperature"], name="gumbel_masks") if self.dual else None
        self.group_embedding = GroupEmbedding(g, d, self.dual, self.pooling, o["group_embedding_stddev"],
                                              name="group_embedding")
        needs_f1 = o["lambda1"] > 0 or (self.dual and o["lambda2"] > 0)
        self.f1 = GroupPredictor(units, act, name="group_predictor") if needs_f1 else None
        self.f2 = (PersonalRepresentation(self.group_embedding.width, o["personal_units"], act, name="personal")
                   if self.use_personal else None)
        strategy = o["strategy"]
        self.f_y = self.f_b = self.f_G = self.f_P = None
        if strategy == "input":  # Eq. 14
            self.f_y = Tower(units, act, name="f_y")
        elif strategy == "dp":  # Eq. 15-16: theta_y + ReShape(f_DP(r_G, r_P))
            self.f_y = ConditionedMLP(units, act, generator_units=o["dp_units"], generator_activation=act,
                                      name="f_y")
        else:  # Eq. 17
            self.f_b, self.f_G = Tower(units, act, name="f_b"), Tower(units, act, name="f_G")
            self.f_P = Tower(units, act, name="f_P") if self.use_personal else None

    # ---- the forward pass ------------------------------------------------------------------
    def division(self, fields: tf.Tensor, training=None) -> tf.Tensor:
        """The group division of the field embeddings [B, F, d']: M [B, G, 2] (Eq. 2-4; Gumbel
        noise when ``training``), or for ``single`` the softmax weights over the groups [B, G]."""
        e_u = flat_fields(fields, self.user_fields, dtype=tf.float32)
        log_s = self.classifier(e_u, training=training)
        return self.masks(log_s, training=training) if self.dual else tf.exp(log_s[..., 0])

    def representations(self, inputs: dict, training=None) -> Representations:
        """r_b, r_G and r_P of a batch (Eq. 1-6, 12)."""
        emb = self.embedding(inputs, training=training)
        out = self.backbone(emb, training=training)
        fields = tf.cast(emb.fields, tf.float32)
        masks = self.division(fields, training=training)
        r_g = self.group_embedding(masks)
        r_p = self.f2(flat_fields(fields, self.personal_fields), training=training) if self.f2 else None
        e_v = flat_fields(fields, self.item_fields)
        return Representations(out.repr, out.logit, masks, r_g, r_p, e_v)

    def _with_personal(self, rep: Representations) -> tf.Tensor:
        return rep.r_G if rep.r_P is None else tf.concat([rep.r_G, rep.r_P], axis=1)

    def prediction_logit(self, rep: Representations, training=None) -> tf.Tensor:
        """z with y^ = sigma(z), by the chosen strategy (Eq. 14, 15-16 or 17-18), [B, 1] float32."""
        strategy = self.options["strategy"]
        if strategy == "input":
            z = self.f_y(tf.concat([rep.r_b, self._with_personal(rep)], axis=1), training=training)[1]
        elif strategy == "dp":
            z = self.f_y((rep.r_b, self._with_personal(rep)), training=training)[1]
        else:
            parts = [(self.f_b, rep.r_b), (self.f_G, rep.r_G), (self.f_P, rep.r_P)]
            z = mean_probability_logit([f(r, training=training)[1] for f, r in parts if f is not None])
        return tf.cast(z, tf.float32)

    def forward(self, inputs: dict, training=None) -> Forward:
        """The prediction and what the auxiliary objectives read: f_1's logits on r_G (Eq. 7) and,
        theta_1 fixed, on r_G^Con (Eq. 9-10), r_G and r_P (Eq. 13), the backbone's own logit."""
        o = self.options
        rep = self.representations(inputs, training=training)
        aux = {}
        if o["lambda1"] > 0:
            aux["group_logit"] = self.f1(tf.concat([rep.r_G, rep.e_v], axis=1))
        if self.dual and o["lambda2"] > 0:
            r_con = self.group_embedding(tf.reverse(rep.masks, axis=[-1]))  # (1 - M) (.) E_G: m^1 <-> m^0
            e_v = rep.e_v if o["contrast_item_gradient"] else tf.stop_gradient(rep.e_v)
            aux["contrast_logit"] = self.f1(tf.concat([r_con, e_v], axis=1), frozen=True)
        if self.use_personal and o["lambda3"] > 0:
            aux.update(r_G=rep.r_G, r_P=rep.r_P)
        if o["backbone_loss_weight"] > 0:
            aux["backbone_logit"] = rep.z_b
        return Forward({self.task: self.prediction_logit(rep, training=training)}, aux)

    def call(self, inputs, training=None, return_forward=False):
        """The served call (no ``return_forward``, not training) computes the prediction alone."""
        if return_forward or training:
            return super().call(inputs, training=training, return_forward=return_forward)
        if self.f1 is not None and not self.f1.built:  # a first call that serves still creates every weight
            self.forward(inputs, training=False)
        rep = self.representations(inputs, training=False)
        return {self.task: tf.sigmoid(self.prediction_logit(rep, training=False))}

    # ---- objectives --------------------------------------------------------------------------
    def objectives(self, x, y, forward: Forward, sample_weight):
        """L_major (compiled), L_G, L_G^Con, L_O (Eq. 8, 11, 13, 20) and the script's backbone BCE."""
        o, aux = self.options, forward.aux
        sw = None if sample_weight is None else task_value(sample_weight, self.task)
        label = tf.cast(task_value(y, self.task), tf.float32)

        def bce(key):
            if key not in aux:
                return tf.constant(0.0)
            return weighted_mean(tf.nn.sigmoid_cross_entropy_with_logits(label, tf.cast(aux[key], tf.float32)), sw)

        orthogonal = tf.constant(0.0)
        if "r_P" in aux:  # Eq. 13 per sample
            cos = tf.reduce_sum(tf.math.l2_normalize(aux["r_G"], axis=1) * tf.math.l2_normalize(aux["r_P"], axis=1),
                                axis=1)
            orthogonal = weighted_mean(cos if o["orthogonal_loss"] == "signed" else tf.square(cos), sw)
        return {**super().objectives(x, y, forward, sample_weight),
                "group": Objective(bce("group_logit"), float(o["lambda1"])),
                "group_contrast": Objective(bce("contrast_logit"), -float(o["lambda2"])),
                "orthogonal": Objective(orthogonal, float(o["lambda3"])),
                "backbone": Objective(bce("backbone_logit"), float(o["backbone_loss_weight"]))}

    def variable_groups(self):
        """The backbone's and GPRec's parts: ``groups`` is g and E_G, ``group_predictor`` f_1,
        ``personal`` f_2, ``prediction`` f_y (f_DP inside it) or f_b, f_G, f_P."""
        variables = lambda *layers: [v for layer in layers if layer is not None  # noqa: E731
                                     for v in layer.trainable_variables]
        return {"embedding": variables(self.embedding), "backbone": variables(self.backbone),
                "groups": variables(self.classifier, self.group_embedding), "group_predictor": variables(self.f1),
                "personal": variables(self.f2), "prediction": variables(self.f_y, self.f_b, self.f_G, self.f_P)}

    # ---- the analysis API ---------------------------------------------------------------------
    def group_assignment(self, inputs: dict) -> tf.Tensor:
        """m^1 at inference (no noise) per user and group, [B, G] float32: the weight of p_i in
        group i's pattern (for ``single``: the softmax weight of e_i)."""
        masks = self.division(self.embedding(inputs, training=False).fields, training=False)
        return masks[..., 0] if self.dual else masks

    def group_embeddings(self):
        """(p [G, d], n [G, d]) as numpy arrays; for ``single`` (e [G, d], None)."""
        if not self.group_embedding.built:
            raise RuntimeError("gprec: call the model once before reading its group embeddings")
        negative = self.group_embedding.negative
        return self.group_embedding.positive.numpy(), None if negative is None else negative.numpy()

    def user_features(self) -> List[str]:
        """The features of E_u = [E_p, E_o] that the group classifier reads, in field order."""
        return list(self._user_feature_names)
