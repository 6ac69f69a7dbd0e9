"""HDA (Wang et al., KDD'25, §4): long-tail users via hierarchical distribution alignment, a
staged framework over any backbone, registered as ``hda``; its baselines are presets of it.

Stages (``FrameworkModel.stages``; one ``ctrflow train`` runs them in order, each in its
folder of the run directory, resumable between and within stages):

    1a mapping      (not fit) learn the head user ids of the user feature (:class:`UserGroups`)
                    and fit each mapped field's T_i on I(X_t; Y) - lambda1 I(X_t; G)    (Eq. 2-3)
    1b shared       E_sh(X_t) -> M_sh -> z_sh; D predicts the group from E_sh (Eq. 8's concat,
                    no filtering network); D on L_adv and the model on L_ctr - lambda2 L_adv
                    alternate, D first, each with its optimizer                          (Eq. 5-8)
    2  residual     E_sh, M_sh (and T, D) frozen; z_a = z_sh + M_sp([e_sh, e_sp])         (Eq. 9-10)
    3  calibration  (not fit) group beta calibration of sigma(z_a) fitted on the valid split (Eq. 13-14)

Choices where the paper is silent or loose:

- X_t in training is a draw from T_i[x] (Gumbel-max; T is fixed, so no straight-through
  gradient is needed), so E_sh depends on x only through X_t and I(E_sh; G) <= I(X_t; G)
  (Theorem 4.2); stage 2, validation and serving read ``serving_mapping``: ``expectation``
  (sum_j T[x, j] E_sh[j], the default) or ``most_likely`` (E_sh[argmax_j T[x, j]]).
- Mapped fields: every scalar categorical feature (vocab / hash / bucketize, one id per row;
  ``mapped_features`` names others); multi-valued, numeric (MNSE, identity, dense) features
  enter E_sh unmapped: T is defined over discrete values only. Such a feature can carry the
  group into E_sh past the mapping (a pretrained user vector, behaviour sequences; the paper's
  datasets have none): ``specific_only_features`` keeps it out of E_sh, so only stage 2's E_sp
  reads it (M_sp sees zeros on E_sh's side of its fields).
- Eq. 10 adds logits: y_a = sigma(z_sh + z_sp), so stage 2 learns a correction of the frozen
  shared prediction on the logit scale, and y_a stays a probability.
- Re-balancing (Eq. 11-12, ``rebalancing``): in the stage whose prediction is served
  (``last``: the residual stage, or the shared one without it) by default: the shared stage
  learns what head and tail share from every sample as it comes, and the imbalance the
  re-balancing corrects is that of the final prediction, whose bias stage 3 then removes.
  ``shared`` and ``all`` are the alternatives the ablations test; ``none`` is w/o Rebalancing.
- The group of a row: ``_group`` in training, the user id's learned flag at serving, unknown
  users long-tail (:class:`models.domains.UserGroups`); calibration (stage 3) is the only served
  part that reads it.
- Sizes (§5.1.4): ``embedding_dim`` is each stage's table width (32 = half of the paper's 64);
  M_sp reads the 2d-wide [e_sh, e_sp] fields; the discriminator is an MLP
  ``discriminator_units`` on the flattened E_sh.

Presets (each a registered framework): ``beta_calibration`` (the paper's Calibration: the
backbone and stage 3), ``ipw`` (static equal group weights: Eq. 11 with eta = 0), ``sdro``
(Eq. 12 on streamed group losses). Ablations: ``alignment: mapping | adversarial | none``,
``residual: false``, ``rebalancing: none``, ``calibration: false``, ``freeze_shared: false``.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from features.encodings import encoding_of
from models.backbones import backbone_class, get_backbone
from models.domains import GROUP_INPUT, UserGroups, fill_user_groups, user_feature_of
from models.embedding import EmbeddedFields, FeatureEmbedding, field_info, plan_fields
from models.factory import register_framework
from models.framework import Forward, FrameworkModel, Objective, Phase, Stage, task_value, weighted_mean
from models.frameworks.hda.calibration import GroupBetaCalibration, fit_calibration
from models.frameworks.hda.information import joint_counts
from models.frameworks.hda import mapping as mapping_module
from models.frameworks.hda.mapping import FieldMapping, fit_field_mapping
from models.frameworks.hda.rebalancing import DEFAULT_STEP_SIZE, AdaptiveRebalancing
from models.layers import Tower, precision_sensitive
from models.options import OptionError

ALIGNMENTS = ("both", "mapping", "adversarial", "none")
REBALANCING = ("last", "shared", "all", "none")
DEFAULTS = {
    "lambda1": mapping_module.DEFAULT_LAMBDA1,  # Eq. 3 (the paper tunes it; no value given)
    "lambda2": 0.1,                   # Eq. 7's adversarial weight (tuned in the paper; ours)
    "eta": DEFAULT_STEP_SIZE,         # Eq. 12's step (Group DRO's 0.01)
    "loss_decay": 1.0,                # SDRO's streaming beta; 1 = Eq. 12 on the batch's losses
    "alignment": "both",              # feature mapping and / or adversarial alignment (§5.3, §5.5)
    "residual": True,                 # stage 2 (w/o Residual: false)
    "rebalancing": "last",            # where Eq. 11-12 applies (w/o Rebalancing: none)
    "calibration": True,              # stage 3 (w/o Calibration: false)
    "freeze_shared": True,            # E_sh, M_sh frozen in stage 2 (Appendix B.2: false)
    "serving_mapping": "expectation",  # expectation | most_likely (how X_t is read outside stage 1b)
    "mapped_features": None,          # null: every scalar categorical feature
    "specific_only_features": [],     # features E_sh leaves out (stage 2's E_sp alone reads them); [] = the paper
    "user_feature": None,             # null: the schema's one personal scalar categorical feature
    "top_k": mapping_module.DEFAULT_TOP_K,
    "init_probability": mapping_module.DEFAULT_INIT_PROBABILITY,
    "mapping_steps": mapping_module.DEFAULT_STEPS,
    "mapping_learning_rate": mapping_module.DEFAULT_LEARNING_RATE,
    "discriminator_units": [64, 32],  # D's MLP (ours; the paper's analysis uses DeepFM)
    "activation": "relu",
    "calibration_iterations": 500,    # L-BFGS iterations of stage 3
}
RANGES = {"lambda1": "[0, inf)", "lambda2": "[0, inf)", "eta": "[0, inf)", "loss_decay": "(0, 1]",
          "top_k": "[1, inf)", "init_probability": "(0, 1)", "mapping_steps": "[0, inf)",
          "mapping_learning_rate": "(0, inf)", "discriminator_units": "[1, inf)", "calibration_iterations": "[1, inf)"}
CHOICES = {"alignment": ALIGNMENTS, "rebalancing": REBALANCING, "serving_mapping": ("expectation", "most_likely")}
TYPES = {"discriminator_units": list, "mapped_features": (list, type(None)), "specific_only_features": list,
         "user_feature": (str, type(None))}


@tf.keras.utils.register_keras_serializable("ctrflow")
class MappedEmbedding(tf.keras.layers.Layer):
    """E_sh of the mapped fields: a table [q_i, d] (and a first-order [q_i, 1]) per field over X_t's
    values. Reads ids [B] (a draw or the most likely value: a lookup) or weights [B, q_i]
    (the expectation: weights @ table)."""

    def __init__(self, sizes: Dict[str, int], embedding_dim: int, linear: bool = False,
                 initializer_stddev: float = 0.01, **kw):
        super().__init__(**kw)
        self.sizes, self.embedding_dim, self.linear = dict(sizes), int(embedding_dim), bool(linear)
        self.initializer_stddev = float(initializer_stddev)
        self.tables = {f: self.add_weight(name=f"table_{i}", shape=(q, self.embedding_dim),  # an initializer each:
                                          initializer=tf.keras.initializers.RandomNormal(  # equal draws otherwise
                                              stddev=self.initializer_stddev))
                       for i, (f, q) in enumerate(self.sizes.items())}
        self.first_order = {f: self.add_weight(name=f"linear_{i}", shape=(q, 1), initializer="zeros")
                            for i, (f, q) in enumerate(self.sizes.items())} if self.linear else {}

    @staticmethod
    def _read(table, value):
        table = tf.cast(table, tf.float32)
        return tf.gather(table, value) if value.dtype.is_integer else tf.matmul(tf.cast(value, tf.float32), table)

    def call(self, values: Dict[str, tf.Tensor]):
        """({field: ids [B] or weights [B, q]}) -> (fields [B, n, d], linear [B, n] or None)."""
        fields = tf.stack([self._read(self.tables[f], values[f]) for f in self.sizes], axis=1)
        linear = (tf.concat([self._read(self.first_order[f], values[f]) for f in self.sizes], axis=1)
                  if self.linear else None)
        return tf.cast(fields, self.compute_dtype), linear

    def get_config(self):
        return {**super().get_config(), "sizes": self.sizes, "embedding_dim": self.embedding_dim,
                "linear": self.linear, "initializer_stddev": self.initializer_stddev}


@register_framework("hda")
@tf.keras.utils.register_keras_serializable("ctrflow")
class HDA(FrameworkModel):
    """Encoded feature dict (+ ``_group`` in training) -> {task: probability [B, 1]}; see the module docstring."""

    option_defaults, option_ranges, option_choices, option_types = DEFAULTS, RANGES, CHOICES, TYPES
    single_task = True
    objective_names = ("ctr", "balanced", "adversary", "alignment")
    analyses = ("alignment",)  # §5.5: a fresh DeepFM's AUC of head vs tail from E_sh (pipeline/alignment.py)

    def __init__(self, schema_dict: dict, tasks: List[str], backbone: str = "dnn",
                 backbone_options: Optional[dict] = None, embedding_dim: int = 32,
                 embedding_options: Optional[dict] = None, **options):
        super().__init__(schema_dict, tasks, backbone, backbone_options, embedding_dim, embedding_options, **options)
        o, schema = self.options, self.schema
        self.task = self.tasks[0]
        if GROUP_INPUT not in schema.side_columns():
            raise OptionError(f"{self.framework_name} needs each training row's head / tail group: the data's schema "
                              f"has no group column (preprocess data with a user column)")
        cls = backbone_class(backbone)
        if cls.uses_sequences:
            raise OptionError(f"{self.framework_name}: backbone '{backbone}' reads behaviour sequences, which the "
                              f"feature mapping does not cover; use MLP, WideDeep, DeepFM, DCNv2 or another")
        embedding_options = {k: v for k, v in self.embedding_options.items() if k != "features"}
        features = list(dict.fromkeys(self.embedding_options.get("features") or
                                      [s.feature for s in plan_fields(schema)]))
        self.user_feature = user_feature_of(schema, o["user_feature"])
        specific_only = self._specific_only_features(features)
        shared = [f for f in features if f not in specific_only]
        self.mapped = self._mapped_features(shared) if o["alignment"] in ("both", "mapping") else []
        rest = [f for f in shared if f not in self.mapped]
        order = self.mapped + rest + specific_only  # E_sp's field order; E_sh's is its prefix without specific_only
        shared_info, info = field_info(schema, self.mapped + rest), field_info(schema, order)
        num_shared, num_fields = len(shared_info), len(info)
        d = self.embedding_dim
        for width in (d, 2 * d):
            if cls.input_embedding_dim(num_fields, width, self.backbone_options) != width:
                raise OptionError(f"{self.framework_name}: backbone '{backbone}' wants fields of another width "
                                  f"than the embedding's (FFM); choose another backbone")
        self.shared_field_features = [feature for feature, _ in shared_info]  # E_sh's fields, in order
        self._specific_only_fields = num_fields - num_shared  # E_sp's last fields: zeros on E_sh's side
        with precision_sensitive():
            self.groups = UserGroups(self.user_feature, schema.feature(self.user_feature).num_ids, name="user_groups")
            self.mappings = {f: FieldMapping(schema.feature(f).num_ids, top_k=o["top_k"],
                                             init_probability=o["init_probability"], serving=o["serving_mapping"],
                                             name=f"map_{i}") for i, f in enumerate(self.mapped)}
            self.mapped_embedding = (MappedEmbedding({f: m.num_values for f, m in self.mappings.items()}, d,
                                                     linear=cls.uses_linear, name="shared_mapped_embedding",
                                                     **{k: v for k, v in embedding_options.items()
                                                        if k == "initializer_stddev"})
                                     if self.mapped else None)
            self.shared_embedding = (FeatureEmbedding(schema_dict, embedding_dim=d, linear=cls.uses_linear,
                                                      features=rest, name="shared_embedding", **embedding_options)
                                     if rest else None)
            self.shared_backbone = get_backbone(backbone, num_shared, d, shared_info, layer_name="shared_backbone",
                                                **self.backbone_options)
            self.discriminator = Tower(o["discriminator_units"], o["activation"], name="discriminator")
            self.discriminator.build((None, num_shared * d))
            self.specific_embedding = FeatureEmbedding(schema_dict, embedding_dim=d, linear=cls.uses_linear,
                                                       features=order, name="specific_embedding",
                                                       **embedding_options)
            self.specific_backbone = get_backbone(backbone, num_fields, 2 * d, info, layer_name="specific_backbone",
                                                  **self.backbone_options)
            self.rebalancing = AdaptiveRebalancing(o["eta"], loss_decay=o["loss_decay"], name="rebalancing")
            self.calibrator = GroupBetaCalibration(name="calibration")
        self._updating = False

    def _mapped_features(self, features: List[str]) -> List[str]:
        """The fields T_i maps: ``mapped_features``, else every scalar categorical one of ``features``."""
        scalar = [f for f in features if self.schema.feature(f).is_integer and self.schema.feature(f).width == 1
                  and encoding_of(self.schema.feature(f)).field_kind == "lookup"]
        named = self.options["mapped_features"]
        if named is None:
            return scalar
        wrong = sorted(set(named) - set(scalar))
        if wrong:
            raise OptionError(f"framework_options.mapped_features: {wrong} not scalar categorical features of the "
                              f"model; mappable: {scalar}")
        return [f for f in scalar if f in named]

    def _specific_only_features(self, features: List[str]) -> List[str]:
        """``specific_only_features`` in the model's field order: features that would carry the
        group into E_sh unmapped (e.g. a pretrained user vector, behaviour sequences)."""
        named = self.options["specific_only_features"]
        wrong = sorted(set(named) - set(features))
        if wrong:
            raise OptionError(f"framework_options.specific_only_features: {wrong} not features of the model; "
                              f"its features: {features}")
        if named and not self.options["residual"]:
            raise OptionError("framework_options.specific_only_features needs the residual stage (residual: true): "
                              "without it no model reads them")
        if set(named) >= set(features):
            raise OptionError("framework_options.specific_only_features names every feature: E_sh would be empty")
        return [f for f in features if f in named]

    # ---- stages --------------------------------------------------------------------------------
    @property
    def adversarial(self) -> bool:
        return self.options["alignment"] in ("both", "adversarial")

    def stages(self) -> List[Stage]:
        o = self.options
        fixed = ("mapping", "calibration")
        out = [Stage("mapping", fit=False), Stage("shared", True, fixed + ("specific",))]
        if o["residual"]:
            out.append(Stage("residual", True, fixed + ("discriminator",) + (("shared",) if o["freeze_shared"] else ())))
        if o["calibration"]:
            out.append(Stage("calibration", fit=False))
        return out

    def variable_groups(self):
        shared = [*(self.mapped_embedding.trainable_variables if self.mapped_embedding else []),
                  *(self.shared_embedding.trainable_variables if self.shared_embedding else []),
                  *self.shared_backbone.trainable_variables]
        return {"mapping": [m.logits for m in self.mappings.values()], "shared": shared,
                "specific": self.specific_embedding.trainable_variables + self.specific_backbone.trainable_variables,
                "discriminator": self.discriminator.trainable_variables,
                "calibration": self.calibrator.trainable_variables}

    def phases(self) -> List[Phase]:
        """Stage 1b alternates (Eq. 6 then Eq. 7); every other stage has one update."""
        if self.stage == "shared" and self.adversarial:
            return [Phase("discriminator", ["adversary"], "discriminator", "discriminator"),
                    Phase("model", ["ctr", "balanced", "alignment"], None, None)]
        return [Phase("model", ["ctr", "balanced"], None, None)]

    def run_stage(self, name: str, data) -> dict:
        return self._fit_mapping(data("train")) if name == "mapping" else self._fit_calibration(data("valid"))

    def _fit_mapping(self, dataset) -> dict:
        """Stage 1a: the head user ids, then T_i of each mapped field from its joint counts."""
        users, columns, labels = fill_user_groups(self.groups, dataset, self.mapped)
        groups, y = columns[GROUP_INPUT].astype(np.int64), labels[self.task].astype(np.int64)
        out = {"users": users, "fields": {}}
        o = self.options
        for field, mapping in self.mappings.items():
            ids = columns[field].astype(np.int64)
            label_counts = joint_counts(ids, y, mapping.num_ids)
            mapping.keep_most_frequent(label_counts)
            out["fields"][field] = fit_field_mapping(mapping, label_counts, joint_counts(ids, groups, mapping.num_ids),
                                                     o["lambda1"], o["mapping_steps"], o["mapping_learning_rate"])
        return out

    def _fit_calibration(self, dataset) -> dict:
        """Stage 3: Eq. 13's parameters by L-BFGS on the valid split's uncalibrated scores (Eq. 14)."""
        @tf.function
        def scores(x):
            return tf.sigmoid(self._logit(x, training=False, calibrated=False))[:, 0], self.groups.index(x)

        parts = []
        for batch in dataset:
            x, y, _ = tf.keras.utils.unpack_x_y_sample_weight(batch)
            p, g = scores(x)
            parts.append((p.numpy(), tf.reshape(task_value(y, self.task), [-1]).numpy(), g.numpy()))
        p, y, g = (np.concatenate(column) for column in zip(*parts))
        return fit_calibration(self.calibrator, p, y, g, self.options["calibration_iterations"])

    # ---- forward ---------------------------------------------------------------------------------
    def shared_fields(self, inputs: dict, training=None, draw: bool = False) -> EmbeddedFields:
        """E_sh [B, F, d] (and its first-order terms) of the mapped values X_t (drawn when
        ``draw``, else read as ``serving_mapping``) and of the unmapped features."""
        parts, linear = [], []
        if self.mapped:
            values = {}
            for f, m in self.mappings.items():
                ids = tf.reshape(inputs[f], [-1])
                values[f] = m.draw(ids) if draw else (
                    m.most_likely(ids) if m.serving == "most_likely" else m.expectation(ids))
            fields, first = self.mapped_embedding(values)
            parts.append(fields)
            linear.append(first)
        if self.shared_embedding is not None:
            rest = self.shared_embedding(inputs, training=training)
            parts.append(rest.fields)
            linear.append(rest.linear)
        fields = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        first = None if linear[0] is None else tf.concat([tf.cast(t, tf.float32) for t in linear], axis=1)
        return EmbeddedFields(fields, first)

    def _logit(self, inputs: dict, training=None, calibrated: bool = True, aux: Optional[dict] = None):
        """z of the current stage: z_sh (stage 1b), z_sh + z_sp (later; Eq. 10), calibrated
        (Eq. 13) in the served stage when ``calibrated``. ``aux`` collects E_sh's D logit."""
        in_shared = self.stage == "shared"
        frozen_shared = not in_shared and self.options["freeze_shared"]
        shared_training = training and not frozen_shared  # a frozen model runs as at inference
        sh = self.shared_fields(inputs, training=shared_training, draw=bool(training and in_shared and self.mapped))
        z = self.shared_backbone(sh, training=shared_training).logit
        if aux is not None and in_shared and self.adversarial:
            flat = tf.reshape(tf.cast(sh.fields, tf.float32), [tf.shape(sh.fields)[0], -1])
            aux["group_logit"] = tf.cast(self.discriminator(flat, training=training)[1], tf.float32)
        if self.options["residual"] and not in_shared:
            sp = self.specific_embedding(inputs, training=training)
            sh_fields = sh.fields
            if self._specific_only_fields:  # E_sh has no such fields: zeros beside their e_sp
                zeros = tf.zeros([tf.shape(sh_fields)[0], self._specific_only_fields, self.embedding_dim], sh_fields.dtype)
                sh_fields = tf.concat([sh_fields, zeros], axis=1)
            both = EmbeddedFields(tf.concat([sh_fields, tf.cast(sp.fields, sh_fields.dtype)], axis=-1), sp.linear)
            z = z + self.specific_backbone(both, training=training).logit  # Eq. 10, on logits
        z = tf.cast(z, tf.float32)
        if calibrated and self.options["calibration"] and self.stage == "calibration":
            z = self.calibrator.logits(tf.sigmoid(z), self.groups.index(inputs)[:, None])
        return z

    def forward(self, inputs: dict, training=None) -> Forward:
        aux = {"group": self.groups.index(inputs)}
        return Forward({self.task: self._logit(inputs, training=training, aux=aux)}, aux)

    # ---- objectives ----------------------------------------------------------------------------------
    def _rebalanced(self) -> bool:
        where = self.options["rebalancing"]
        last_fit = "residual" if self.options["residual"] else "shared"
        return where == "all" or where == self.stage or (where == "last" and self.stage == last_fit)

    def train_step(self, data):
        """Eq. 12's weight update runs in training steps only."""
        self._updating = True
        try:
            return super().train_step(data)
        finally:
            self._updating = False

    def objectives(self, x, y, forward: Forward, sample_weight):
        """ctr: L_ctr (the compiled BCE; weight 0 in the re-balanced stage, where it is only logged);
        balanced: Eq. 11's re-balanced BCE in the re-balanced stage (else 0); adversary: L_adv
        (Eq. 6, D's phase); alignment: -lambda2 L_adv (Eq. 7, the model's phase; 0 without D)."""
        sw = None if sample_weight is None else task_value(sample_weight, self.task)
        ctr = self.compiled_objective(x, y, forward, sample_weight)
        balanced = Objective(tf.zeros([], tf.float32), 0.0)
        if self._rebalanced():
            loss = self.rebalancing(task_value(y, self.task), forward.logits[self.task], forward.aux["group"], sw,
                                    update=self._updating)
            if self.losses:  # the regularization losses the compiled objective holds
                loss = loss + tf.add_n([tf.cast(v, tf.float32) for v in self.losses])
            ctr, balanced = Objective(ctr.value, 0.0), Objective(loss, 1.0)
        if "group_logit" in forward.aux:
            g = tf.cast(forward.aux["group"], tf.float32)
            adv = weighted_mean(tf.nn.sigmoid_cross_entropy_with_logits(g, forward.aux["group_logit"][:, 0]), sw)
        else:
            adv = tf.zeros([], tf.float32)
        return {"ctr": ctr, "balanced": balanced, "adversary": Objective(adv, 1.0),
                "alignment": Objective(adv, -float(self.options["lambda2"]))}


def _preset(class_name: str, framework: str, doc: str, **defaults):
    """A registered HDA preset: the same model with other defaults (a paper baseline)."""
    cls = type(class_name, (HDA,), {"__doc__": doc, "option_defaults": {**DEFAULTS, **defaults},
                                    "analyses": ()})  # no E_sh alignment to check (HDA with alignment none has it)
    return register_framework(framework)(tf.keras.utils.register_keras_serializable("ctrflow")(cls))


_BACKBONE_ONLY = {"alignment": "none", "residual": False}
BetaCalibration = _preset("BetaCalibration", "beta_calibration", "The paper's Calibration baseline ([13]): the backbone, then stage 3.",
                          **_BACKBONE_ONLY, rebalancing="none")
IPW = _preset("IPW", "ipw", "The paper's IPW baseline ([19]): static equal group weights (Eq. 11, eta = 0).",
              **_BACKBONE_ONLY, eta=0.0, calibration=False)
SDRO = _preset("SDRO", "sdro", "The paper's SDRO baseline ([27]): Eq. 12 on streamed group losses (beta = 0.1).",
               **_BACKBONE_ONLY, loss_decay=0.1, calibration=False)
