"""The backbone protocol, the registry and the backbones.

A backbone maps :class:`~models.embedding.EmbeddedFields` (fields [B, F, d], first-order
terms [B, F]) to a :data:`BackboneOutput`: a representation ``repr`` (r_b, [B, h]) and
a ``logit`` [B, 1], both float32 whatever the compute dtype. Two-branch backbones
have a *simple* branch (the explicit interactions: cross network, FM, CIN, attention,
a shallow MLP) and a *complex* one (the deep MLP); ``backbone(emb, branches=True)``
gives each branch's own output (TF4CTR's simple and complex encoders, Sec. III-D/F),
and plain ``backbone(emb)`` fuses the branches as the original paper does: the logits are summed (for DCN / DCN-V2 /
AutoInt+ "concatenate then one linear unit" is the same sum of per-branch linear
units) and ``repr`` is the concatenation of the branch representations. FinalMLP
adds its bilinear term to the sum.

Options: every backbone has a ``defaults`` dict (the papers' values; MLPs
[400, 400, 400] ReLU, TF4CTR's setup); an option not in it, of another type than its
default or outside :data:`OPTION_RANGES` is an :class:`~models.options.OptionError` naming it.
``get_config`` holds ``num_fields``, ``embedding_dim`` and the options.

A backbone with ``uses_field_info`` is built with each field's [feature, role]
(:func:`models.embedding.field_info`; GwPFM's field parts and groups).
A backbone with ``uses_linear`` reads the first-order terms (``EmbeddedFields.linear``), one
with ``uses_sequences`` the behaviour sequences against their targets
(``EmbeddedFields.sequences``, DIN); models build their embedding with exactly what the
backbone reads (``linear=`` / ``sequences=`` of :class:`~models.embedding.FeatureEmbedding`).

The FM family (fm, fwfm, ffm, gwpfm) shares one pairwise mechanism
(:class:`~models.layers.PairwiseInteraction`) and its ``projection`` option (Tencent KDD'24,
Eq. 5). Tencent's FlatDNN (an MLP over the flattened field embeddings, Sec. 4.2) is ``dnn`` and
its IPNN expert is ``ipnn``.

Registered names: lr, fm, ffm, fwfm, gwpfm, dnn, ipnn, widedeep, deepfm, dcn, dcnv2,
xdeepfm, autoint+, destine, gdcn, dualmlp, finalmlp, din (case-insensitive).
"""
from __future__ import annotations

import collections
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf

from features.registry import registrar
from models import layers as L
from models.embedding import EmbeddedFields, flat_fields
from models.options import OptionError, check_activations, check_options

BackboneOutput = collections.namedtuple("BackboneOutput", ["repr", "logit"])
BackboneOutput.__doc__ = "repr: r_b [B, h]; logit: [B, 1] (float32 from a backbone)."

BACKBONES: Dict[str, type] = {}

DNN_DEFAULTS = {"dnn_units": (400, 400, 400), "dnn_activation": "relu", "dnn_dropout": 0.0,
                "dnn_batch_norm": False, "dnn_l2": 0.0}
STRUCTURES = ("stacked", "parallel")
# ranges of the options of every backbone that has them (per item on lists; models.options)
OPTION_RANGES = {**{k: "[1, inf)" for k in ("dnn_units", "mlp1_units", "mlp2_units", "fs_units", "cin_layer_sizes",
                                            "att_units", "simple_units",
                                            "num_heads", "att_dim", "attention_layers", "num_cross_layers",
                                            "projection_dim")},
                 "fs1_context": "[0, inf)", "fs2_context": "[0, inf)",
                 "dnn_dropout": "[0, 1)", "att_dropout": "[0, 1)", "dnn_l2": "[0, inf)", "diag_scale": "[0, inf)"}
RESIDUAL_MODES = ("each_layer", "last_layer", "none")  # DESTINE's residual connections
OPTION_CHOICES = {"structure": STRUCTURES, "residual_mode": RESIDUAL_MODES, "unary": L.UNARY_TERMS}
OPTION_TYPES = {"projection_dim": int, "att_dim": int}  # options whose default is None


_register = registrar(BACKBONES, "backbone", key=str.lower)


def register_backbone(name: str):
    """Class decorator: register a :class:`Backbone` subclass under ``name`` (lower case; a
    taken name fails) and make it Keras-serializable."""
    return lambda cls: tf.keras.utils.register_keras_serializable("ctrflow")(_register(name)(cls))


def backbone_class(name: str) -> type:
    key = str(name).lower()
    if key not in BACKBONES:
        raise OptionError(f"unknown backbone '{name}'; known: {sorted(BACKBONES)}")
    return BACKBONES[key]


def get_backbone(name: str, num_fields: int, embedding_dim: int, field_info=None, layer_name: Optional[str] = None,
                 **options) -> "Backbone":
    """Build the backbone registered as ``name`` (as a layer named ``layer_name``: Keras' default
    if None); unknown options fail naming the known ones. ``field_info`` ([feature, role] per
    field, :func:`models.embedding.field_info`) reaches only backbones that declare ``uses_field_info``."""
    cls = backbone_class(name)
    extra = {"field_info": field_info} if cls.uses_field_info else {}
    return cls(num_fields=num_fields, embedding_dim=embedding_dim, name=layer_name, **extra, **options)


def _float32(out: BackboneOutput) -> BackboneOutput:
    return BackboneOutput(tf.cast(out.repr, tf.float32), tf.cast(out.logit, tf.float32))


class Backbone(tf.keras.layers.Layer):
    """The protocol (see the module docstring). Subclasses set ``defaults``, build their
    layers in ``_build_layers`` and implement ``_forward`` (one branch) or ``_simple`` /
    ``_complex`` (two branches, named by ``branch_names``)."""

    registered_name = "backbone"
    defaults: Dict[str, Any] = {}
    branch_names: Optional[Tuple[str, str]] = None
    uses_linear = False  # reads EmbeddedFields.linear (the first-order terms)
    uses_sequences = False  # reads EmbeddedFields.sequences (behaviour rows against their targets)
    uses_field_info = False  # reads each field's [feature, role] (``field_info``), e.g. GwPFM's parts and groups

    def __init__(self, num_fields: int, embedding_dim: int, name=None, trainable=True, dtype=None,
                 field_info=None, **options):
        options = self.check_options(options)
        # float32 under mixed precision but for MLP hidden layers (models.layers.precision_sensitive)
        super().__init__(name=name, trainable=trainable, dtype=dtype or "float32")
        self.num_fields, self.embedding_dim = int(num_fields), int(embedding_dim)
        if self.num_fields < 1 or self.embedding_dim < 1:
            raise ValueError(f"backbone '{self.registered_name}': num_fields and embedding_dim must be >= 1")
        self.field_info = None if field_info is None else [[str(f), str(r)] for f, r in field_info]
        if self.uses_field_info and (self.field_info is None or len(self.field_info) != self.num_fields):
            raise ValueError(f"backbone '{self.registered_name}' reads each field's feature and role: build it with "
                             f"field_info ([feature, role] per field, models.embedding.field_info) for "
                             f"{self.num_fields} fields, got {field_info!r}")
        self.options = {**self.defaults, **options}
        with L.precision_sensitive():
            self._build_layers()

    @classmethod
    def check_options(cls, options: Dict[str, Any], prefix: str = "backbone_options.") -> Dict[str, Any]:
        """``options`` checked against :attr:`defaults` (names, types, :data:`OPTION_RANGES`, choices,
        activation names); raises :class:`OptionError` naming ``prefix`` + the key."""
        owner = f"backbone '{cls.registered_name}'"
        options = check_options(options, cls.defaults, prefix, owner, OPTION_RANGES, OPTION_CHOICES, OPTION_TYPES)
        check_activations({k: v for k, v in options.items() if v not in L.LAYER_ACTIVATIONS}, prefix, owner)
        return options

    @classmethod
    def input_embedding_dim(cls, num_fields: int, embedding_dim: int, options: Optional[Dict[str, Any]] = None) -> int:
        """Width of the field embeddings this backbone reads with ``options`` (its backbone
        options; FFM needs F * k, GwPFM P * k)."""
        return embedding_dim

    @property
    def branches(self) -> Optional[Tuple[str, str]]:
        """(simple, complex) branch names, or None for a one-branch backbone."""
        return self.branch_names

    # ---- subclass hooks ----------------------------------------------------------------
    def _build_layers(self) -> None:
        raise NotImplementedError

    def _forward(self, emb: EmbeddedFields, training) -> BackboneOutput:
        raise NotImplementedError

    def _simple(self, emb: EmbeddedFields, training) -> BackboneOutput:
        raise NotImplementedError

    def _complex(self, emb: EmbeddedFields, training) -> BackboneOutput:
        raise NotImplementedError

    def _fuse(self, simple: BackboneOutput, complex_: BackboneOutput, training) -> BackboneOutput:
        return BackboneOutput(tf.concat([simple.repr, complex_.repr], axis=1), simple.logit + complex_.logit)

    def _tower(self, units, name: str) -> L.Tower:
        o = self.options
        return L.Tower(units, o["dnn_activation"], o["dnn_dropout"], o["dnn_batch_norm"], o["dnn_l2"], name=name)

    # ---- protocol ----------------------------------------------------------------------
    def call(self, emb: EmbeddedFields, training=None, branches=False, complex_emb: Optional[EmbeddedFields] = None):
        """The fused :data:`BackboneOutput`; with ``branches`` the (simple, complex) pair of a
        two-branch backbone, each with its own repr and logit. ``complex_emb`` feeds the
        complex branch other embeddings than ``emb`` (TF4CTR's SSEM: separate tables, gating
        or MoE per branch); the default shares ``emb``."""
        if not (branches or self.branches):
            return _float32(self._forward(self._prepare(emb), training))
        if not self.branches:
            raise TypeError(f"backbone '{self.registered_name}' has a single branch (options: {self.options})")
        emb = self._prepare(emb)
        complex_emb = emb if complex_emb is None else self._prepare(complex_emb)
        simple, complex_ = _float32(self._simple(emb, training)), _float32(self._complex(complex_emb, training))
        return (simple, complex_) if branches else self._fuse(simple, complex_, training)

    def _prepare(self, emb: EmbeddedFields) -> EmbeddedFields:
        if emb.fields.shape[1] != self.num_fields:
            raise ValueError(f"backbone '{self.registered_name}' was built for {self.num_fields} fields, "
                             f"got field embeddings of shape {emb.fields.shape}")
        if self.uses_linear and emb.linear is None:
            raise ValueError(f"backbone '{self.registered_name}' needs first-order terms: build the "
                             f"FeatureEmbedding with linear=True")
        if self.uses_sequences and not emb.sequences:
            raise ValueError(f"backbone '{self.registered_name}' attends over behaviour sequences: build the "
                             f"FeatureEmbedding with sequences=True")
        dt = self.compute_dtype
        sequences = tuple(s._replace(rows=tf.cast(s.rows, dt), target=tf.cast(s.target, dt))
                          for s in emb.sequences) if self.uses_sequences else None
        return EmbeddedFields(tf.cast(emb.fields, dt), tf.cast(emb.linear, dt) if self.uses_linear else None,
                              sequences)

    def get_config(self):
        info = {"field_info": self.field_info} if self.field_info is not None else {}
        return {**super().get_config(), "num_fields": self.num_fields, "embedding_dim": self.embedding_dim,
                **info, **L.plain(self.options)}


# ---- first- and second-order models ---------------------------------------------------------
@register_backbone("lr")
class LR(Backbone):
    """Logistic regression on the first-order terms: logit = b + sum_i w_i; repr = the terms."""

    uses_linear = True

    def _build_layers(self):
        self.first_order = L.FirstOrder(name="first_order")

    def _forward(self, emb, training):
        return BackboneOutput(emb.linear, self.first_order(emb.linear))


class _PairwiseBackbone(Backbone):
    """logit = b + sum_i w_i + sum over d of a pairwise interaction vector (the repr);
    ``projection`` makes the interaction the projection interaction (Tencent KDD'24 Eq. 5,
    :class:`~models.layers.PairwiseInteraction`)."""

    uses_linear = True
    defaults = {"projection": False}

    def _interaction(self) -> tf.keras.layers.Layer:
        raise NotImplementedError

    def _build_layers(self):
        self.first_order = L.FirstOrder(name="first_order")
        self.interaction = self._interaction()

    def _forward(self, emb, training):
        pairs = self.interaction(emb.fields)
        return BackboneOutput(pairs, self.first_order(emb.linear) + tf.reduce_sum(pairs, axis=1, keepdims=True))


@register_backbone("fm")
class FM(_PairwiseBackbone):
    """Factorization Machine (Rendle, ICDM'10, Eq. 1)."""

    def _interaction(self):
        return L.FMInteraction(self.options["projection"], name="fm")


@register_backbone("fwfm")
class FwFM(_PairwiseBackbone):
    """Field-weighted FM (Pan et al., WWW'18, Eq. 4): one learned weight per field pair."""

    def _interaction(self):
        return L.FieldWeightedInteraction(self.options["projection"], name="fwfm")


@register_backbone("ffm")
class FFM(_PairwiseBackbone):
    """Field-aware FM (Juan et al., RecSys'16, Eq. 3).

    Each feature needs one latent vector of width k = ``embedding_dim`` per field, so
    it reads field embeddings of width F * k (``input_embedding_dim``): CTRModel
    builds its FeatureEmbedding that wide; the j-th k-slice of field i is used
    against field j.
    """

    @classmethod
    def input_embedding_dim(cls, num_fields, embedding_dim, options=None):
        return num_fields * embedding_dim

    def _interaction(self):
        return L.FieldAwareInteraction(self.num_fields, projection=self.options["projection"], name="ffm")


AD_ROLES = ("item", "ad")  # the fields "regarding the target ad" (GwPFM's ad part and ad group)


def _name_lists(value, key: str) -> list:
    """``value`` as a list of non-empty lists of feature names, else an OptionError naming ``key``."""
    if (not isinstance(value, (list, tuple)) or not value
            or any(not isinstance(names, (list, tuple)) or not names for names in value)
            or any(not isinstance(n, str) for names in value for n in names)):
        raise OptionError(f"{key} = {value!r}: expected a non-empty list of non-empty lists of feature names "
                          f"(backbone 'gwpfm')")
    return [list(names) for names in value]


def _index_of_listed(field_info, lists: list, key: str) -> Dict[str, int]:
    """feature -> the index of the list naming it; a name listed twice or naming no embedded
    feature fails naming it."""
    embedded = list(dict.fromkeys(f for f, _ in field_info if f))
    index: Dict[str, int] = {}
    for i, names in enumerate(lists):
        for name in names:
            if name in index:
                raise OptionError(f"{key}: feature '{name}' is listed twice (lists {index[name]} and {i})")
            if name not in embedded:
                raise OptionError(f"{key}: '{name}' is not an embedded feature of this model; "
                                  f"embedded: {embedded}")
            index[name] = i
    return index


def field_parts(field_info, parts, key: str = "backbone_options.parts") -> List[int]:
    """GwPFM's P(i) per field from ``field_info`` ([feature, role] per field).

    ``"ad"``: the paper's two parts (Sec. 4.3, deployment): 0 = every field unrelated to the
    target ad (user, context, sequence fields and field modules' fields), 1 = the fields of
    roles item / ad; both must hold a field. A list of lists of feature names: part p holds the
    features of list p; every embedded feature is in exactly one, field-module fields (they have
    no feature) are in part 0."""
    if parts == "ad":
        out = [int(role in AD_ROLES) for _, role in field_info]
        if len(set(out)) < 2:
            side = "item / ad" if not any(out) else "other (user, context, ...)"
            raise OptionError(f"{key} = 'ad' splits the fields into the ad part (roles item / ad) and the rest, but "
                              f"no field has an {side} role (fields: {field_info}); list the parts explicitly")
        return out
    index = _index_of_listed(field_info, _name_lists(parts, key), key)
    missing = list(dict.fromkeys(f for f, _ in field_info if f and f not in index))
    if missing:
        raise OptionError(f"{key}: features {missing} are in no part; every embedded feature must be in exactly one")
    return [index[f] if f else 0 for f, _ in field_info]


def field_groups(field_info, groups, key: str = "backbone_options.groups") -> List[int]:
    """GwPFM's G(i) per field from ``field_info`` ([feature, role] per field).

    The listed groups (lists of feature names) come first; every field not listed is grouped
    by its role, the roles item / ad together (the paper puts all ad fields in one group):
    ``None`` (the default) is one group per role (user, personal, context, sequence, field
    modules) and one for the ad fields."""
    index = _index_of_listed(field_info, _name_lists(groups, key), key) if groups is not None else {}
    listed = len(groups or ())
    by_role: Dict[str, int] = {}
    out = []
    for feature, role in field_info:
        if feature in index:
            out.append(index[feature])
            continue
        role = "ad" if role in AD_ROLES else role
        out.append(by_role.setdefault(role, listed + len(by_role)))
    return out


@register_backbone("gwpfm")
class GwPFM(_PairwiseBackbone):
    """Group-weighted Part-aware FM (Tencent, KDD'24, Sec. 4.3, Eq. 4): first-order terms +
    Phi = sum_{i<j} <e_{i,P(j)}, e_{j,P(i)}> r_{G(i),G(j)}.

    P field parts (``parts``, :func:`field_parts`: ``"ad"``, the paper's two, by default) give
    each feature P embeddings of width k, so it reads field embeddings of width P * k
    (``input_embedding_dim``, as FFM reads F * k); G field groups (``groups``,
    :func:`field_groups`: one per role and all ad fields in one by default; the paper groups the
    non-ad fields by expert knowledge, G < 50) weigh each group pair by a learnable r,
    initialised to 1 (:class:`~models.layers.GwPFMInteraction`). ``projection``: Eq. 5.

    repr is the K-vector sum_{i<j} (e_{i,P(j)} * e_{j,P(i)}) r_{G(i),G(j)} and the logit adds
    its sum, the scalar Phi: as a standalone model GwPFM gives the scalar; as an expert of the
    multi-embedding paradigm (Sec. 4.2) it gives the K-vector, which a gate or an MLP reads.
    """

    uses_field_info = True
    defaults = {"projection": False, "parts": "ad", "groups": None}

    @classmethod
    def check_options(cls, options, prefix="backbone_options."):
        """``parts`` is ``"ad"`` or lists of feature names, ``groups`` None or such lists (the
        names are checked against the fields when the backbone is built)."""
        options = dict(options)
        parts = options.pop("parts", None)
        if parts is not None and parts != "ad":
            parts = _name_lists(parts, f"{prefix}parts")
        if options.get("groups") is not None:
            options["groups"] = _name_lists(options["groups"], f"{prefix}groups")
        options = super().check_options(options, prefix)
        return {**options, "parts": parts} if parts is not None else options

    @classmethod
    def input_embedding_dim(cls, num_fields, embedding_dim, options=None):
        parts = cls.check_options(dict(options or {})).get("parts", cls.defaults["parts"])
        return (2 if parts == "ad" else len(parts)) * embedding_dim

    def _interaction(self):
        o = self.options
        return L.GwPFMInteraction(field_parts(self.field_info, o["parts"]), field_groups(self.field_info, o["groups"]),
                                  projection=o["projection"], name="gwpfm")


# ---- MLP models ------------------------------------------------------------------------------
@register_backbone("dnn")
class DNN(Backbone):
    """An MLP on the concatenated field embeddings (the "MLP" backbone of HDA / GPRec)."""

    defaults = dict(DNN_DEFAULTS)

    def _build_layers(self):
        self.tower = self._tower(self.options["dnn_units"], "dnn")

    def _forward(self, emb, training):
        return BackboneOutput(*self.tower(flat_fields(emb.fields), training=training))


@register_backbone("ipnn")
class IPNN(Backbone):
    """Inner-product PNN (Qu et al., ICDM'16): MLP over [flat embeddings (l_z), <v_i, v_j> (l_p)]."""

    defaults = dict(DNN_DEFAULTS)

    def _build_layers(self):
        self.inner = L.InnerProduct(name="inner_product")
        self.tower = self._tower(self.options["dnn_units"], "dnn")

    def _forward(self, emb, training):
        x = tf.concat([flat_fields(emb.fields), self.inner(emb.fields)], axis=1)
        return BackboneOutput(*self.tower(x, training=training))


@register_backbone("dualmlp")
class DualMLP(Backbone):
    """Two MLPs of different depth on the same input, logits summed (FinalMLP paper's
    baseline; TF4CTR's MLP_s [400] and MLP_c [400, 400, 400], Eq. 6)."""

    defaults = {**{k: v for k, v in DNN_DEFAULTS.items() if k != "dnn_units"},
                "mlp1_units": (400,), "mlp2_units": (400, 400, 400)}
    branch_names = ("mlp1", "mlp2")

    def _build_layers(self):
        self.tower1 = self._tower(self.options["mlp1_units"], "mlp1")
        self.tower2 = self._tower(self.options["mlp2_units"], "mlp2")

    def _simple(self, emb, training):
        return BackboneOutput(*self.tower1(flat_fields(emb.fields), training=training))

    def _complex(self, emb, training):
        return BackboneOutput(*self.tower2(flat_fields(emb.fields), training=training))


@register_backbone("finalmlp")
class FinalMLP(DualMLP):
    """FinalMLP (Mao et al., AAAI'23): two MLP streams, each on its own feature-gated
    input (Eq. 3-4), fused by b + w1^T o1 + w2^T o2 + sum_h o1_h^T W_h o2_h (Eq. 7-8).

    Defaults are the authors' released template: streams [1024, 512] and
    [1024, 512, 256], gate MLP [1024, 512], 2 fusion heads, learnable gate contexts
    (``fs1_context`` / ``fs2_context`` take field indices to condition on instead).
    """

    defaults = {**{k: v for k, v in DNN_DEFAULTS.items() if k != "dnn_units"},
                "mlp1_units": (1024, 512), "mlp2_units": (1024, 512, 256), "use_fs": True,
                "fs_units": (1024, 512), "fs1_context": (), "fs2_context": (), "num_heads": 2}
    branch_names = ("stream1", "stream2")

    def _build_layers(self):
        super()._build_layers()
        o = self.options
        self.gate1 = self.gate2 = None
        if o["use_fs"]:
            self.gate1 = L.FeatureSelection(o["fs_units"], o["fs1_context"], name="fs1")
            self.gate2 = L.FeatureSelection(o["fs_units"], o["fs2_context"], name="fs2")
        self.bilinear = L.MultiHeadBilinear(o["num_heads"], name="fusion")

    def _stream_input(self, gate, emb, training):
        return flat_fields(emb.fields) if gate is None else gate(emb.fields, training=training)

    def _simple(self, emb, training):
        return BackboneOutput(*self.tower1(self._stream_input(self.gate1, emb, training), training=training))

    def _complex(self, emb, training):
        return BackboneOutput(*self.tower2(self._stream_input(self.gate2, emb, training), training=training))

    def _fuse(self, simple, complex_, training):
        fused = super()._fuse(simple, complex_, training)
        return BackboneOutput(fused.repr, fused.logit + self.bilinear([simple.repr, complex_.repr]))


# ---- explicit interaction + DNN ----------------------------------------------------------------
class _WithDNN(Backbone):
    """Two-branch base: an explicit (simple) branch beside an MLP (complex) over the flat embeddings."""

    defaults = dict(DNN_DEFAULTS)

    def _build_layers(self):
        self.tower = self._tower(self.options["dnn_units"], "dnn")
        self._build_explicit()

    def _build_explicit(self):
        raise NotImplementedError

    def _complex(self, emb, training):
        return BackboneOutput(*self.tower(flat_fields(emb.fields), training=training))


@register_backbone("widedeep")
class WideDeep(_WithDNN):
    """Wide & Deep (Cheng et al., DLRS'16, Eq. 3): LR on the first-order terms + DNN, logits summed.
    (The wide part has no hand-made cross-product features: the schema carries none.)"""

    uses_linear = True

    branch_names = ("wide", "dnn")

    def _build_explicit(self):
        self.first_order = L.FirstOrder(name="wide")

    def _simple(self, emb, training):
        return BackboneOutput(emb.linear, self.first_order(emb.linear))


@register_backbone("deepfm")
class DeepFM(_WithDNN):
    """DeepFM (Guo et al., IJCAI'17, Eq. 1-3): FM (first order + pairwise) + DNN, logits summed."""

    uses_linear = True

    branch_names = ("fm", "dnn")

    def _build_explicit(self):
        self.first_order = L.FirstOrder(name="first_order")
        self.fm = L.FMInteraction(name="fm")

    def _simple(self, emb, training):
        pairs = self.fm(emb.fields)
        return BackboneOutput(pairs, self.first_order(emb.linear) + tf.reduce_sum(pairs, axis=1, keepdims=True))


@register_backbone("xdeepfm")
class XDeepFM(_WithDNN):
    """xDeepFM (Lian et al., KDD'18, Eq. 9): linear + CIN + DNN, logits summed."""

    uses_linear = True

    defaults = {**DNN_DEFAULTS, "cin_layer_sizes": (200, 200, 200), "cin_split_half": True,
                "cin_activation": None}
    branch_names = ("cin", "dnn")

    def _build_explicit(self):
        o = self.options
        self.first_order = L.FirstOrder(name="first_order")
        self.cin = L.CIN(o["cin_layer_sizes"], o["cin_split_half"], o["cin_activation"], name="cin")
        self.cin_logit = tf.keras.layers.Dense(1, use_bias=False, name="cin_logit")

    def _simple(self, emb, training):
        p = self.cin(emb.fields)
        return BackboneOutput(p, self.first_order(emb.linear) + self.cin_logit(p))


@register_backbone("autoint+")
class AutoIntPlus(_WithDNN):
    """AutoInt+ (Song et al., CIKM'19, Eq. 5-9): interacting layers (3 layers, 2 heads,
    d' = 32, residual) -> flatten -> linear unit, beside a DNN; logits summed."""

    defaults = {**DNN_DEFAULTS, "attention_layers": 3, "num_heads": 2, "att_dim": 32,
                "use_residual": True, "use_scale": False, "layer_norm": False}
    branch_names = ("attention", "dnn")

    def _build_explicit(self):
        o = self.options
        self.attention = [L.InteractingLayer(o["att_dim"], o["num_heads"], o["use_residual"], o["use_scale"],
                                             o["layer_norm"], name=f"interacting_{i}")
                          for i in range(int(o["attention_layers"]))]
        self.attention_logit = tf.keras.layers.Dense(1, name="attention_logit")

    def _simple(self, emb, training):
        x = emb.fields
        for layer in self.attention:
            x = layer(x)
        h = flat_fields(x)
        return BackboneOutput(h, self.attention_logit(h))


@register_backbone("destine")
class DESTINE(_WithDNN):
    """DESTINE (Xu et al., CIKM'21): stacked disentangled self-attention layers over the fields
    (whitened pairwise + unary weights, :class:`~models.layers.DisentangledSelfAttention`),
    ReLU, flatten, one linear unit; beside a DNN on the flat embeddings, logits summed.

    The attention follows the authors' code (github.com/CRIPAC-DIG/DESTINE): 3 layers, 2 heads
    each as wide as the embedding (``att_dim`` None: d), scaled scores, dropout 0.2 on the
    attention weights, the linear unary term, one ReLU after the stack (``residual_mode``
    last_layer: after the residual W_R e added there). ``residual_mode`` each_layer (the default,
    as FuxiCTR's DESTINE, the implementation GPRec ran) gives every layer its own W_R e^(l-1);
    none drops it. The DNN branch is FuxiCTR's (the authors' ``deep`` option), with this file's
    DNN defaults; ``dnn_units: []`` is the paper's attention-only DESTINE, one branch. The
    first-order (LR) term the authors add is left out, as in FuxiCTR's DESTINE template.
    """

    defaults = {**DNN_DEFAULTS, "attention_layers": 3, "num_heads": 2, "att_dim": None, "unary": "linear",
                "use_scale": True, "att_dropout": 0.2, "residual_mode": "each_layer"}
    branch_names = ("attention", "dnn")

    @property
    def branches(self):
        return self.branch_names if self.options["dnn_units"] else None

    def _build_layers(self):
        o = self.options
        self.tower = self._tower(o["dnn_units"], "dnn") if o["dnn_units"] else None
        att_dim = o["att_dim"] or self.embedding_dim
        self.attention = [L.DisentangledSelfAttention(att_dim, o["num_heads"], o["unary"], o["use_scale"],
                                                      o["att_dropout"], o["residual_mode"] == "each_layer",
                                                      name=f"disentangled_{i}")
                          for i in range(int(o["attention_layers"]))]
        self.residual = (tf.keras.layers.Dense(att_dim * o["num_heads"], name="residual")
                         if o["residual_mode"] == "last_layer" else None)
        self.attention_logit = tf.keras.layers.Dense(1, name="attention_logit")

    def _simple(self, emb, training):
        x = emb.fields
        for layer in self.attention:
            x = layer(x, training=training)
        if self.residual is not None:
            x = x + self.residual(emb.fields)
        h = flat_fields(tf.nn.relu(x))
        return BackboneOutput(h, self.attention_logit(h))

    _forward = _simple


class _CrossBackbone(_WithDNN):
    """Cross network + DNN, ``structure`` parallel (two branches, logits summed =
    concatenation + one linear unit) or stacked (cross -> DNN, one branch)."""

    cross_kind = "matrix"
    branch_names = ("cross", "dnn")

    @property
    def branches(self):
        return self.branch_names if self.options["structure"] == "parallel" else None

    def _build_explicit(self):
        o = self.options
        extra = {k: o[k] for k in ("projection_dim", "diag_scale") if k in o}
        self.cross = L.CrossNetwork(self.cross_kind, o["num_cross_layers"], name="cross", **extra)
        if o["structure"] == "parallel":
            self.cross_logit = tf.keras.layers.Dense(1, name="cross_logit")

    def _simple(self, emb, training):
        h = self.cross(flat_fields(emb.fields))
        return BackboneOutput(h, self.cross_logit(h))

    def _forward(self, emb, training):  # stacked
        return BackboneOutput(*self.tower(self.cross(flat_fields(emb.fields)), training=training))


@register_backbone("dcn")
class DCN(_CrossBackbone):
    """Deep & Cross Network (Wang et al., ADKDD'17, Eq. 3): vector cross layers, 3 by default."""

    defaults = {**DNN_DEFAULTS, "num_cross_layers": 3, "structure": "parallel"}
    cross_kind = "vector"


@register_backbone("dcnv2")
class DCNv2(_CrossBackbone):
    """DCN-V2 (Wang et al., WWW'21, Eq. 1-2) with ``tfrs.layers.dcn.Cross``: 3 layers,
    full rank unless ``projection_dim`` (low rank U V^T), ``structure`` stacked|parallel
    (the paper evaluates both; parallel is the default so TF4CTR can split it)."""

    defaults = {**DNN_DEFAULTS, "num_cross_layers": 3, "structure": "parallel", "projection_dim": None,
                "diag_scale": 0.0}
    cross_kind = "matrix"


@register_backbone("gdcn")
class GDCN(_CrossBackbone):
    """Gated DCN (Wang et al., CIKM'23, Eq. 1): gated cross layers, GDCN-P (parallel) by
    default, GDCN-S with ``structure: stacked``."""

    defaults = {**DNN_DEFAULTS, "num_cross_layers": 3, "structure": "parallel"}
    cross_kind = "gated"


# ---- behaviour sequences ---------------------------------------------------------------------
@register_backbone("din")
class DIN(Backbone):
    """Deep Interest Network (Zhou et al., KDD'18; Rec4Ad's Base, Sec. 4.1).

    Per behaviour sequence of the embedding (``EmbeddedFields.sequences``: hist_item against
    item_id, hist_category against category, ...) the local activation unit weighs each
    behaviour against the candidate (Eq. 3, Fig. 2, :class:`~models.layers.ActivationUnit`, no
    softmax, padding 0); the weighted sum, the user's interest in this candidate, replaces the
    sequence's mean-pooled field; the MLP reads all fields, r_b is its last hidden layer.
    One unit per sequence (the paper concatenates a behaviour's ids into one key; the schema does
    not promise that two sequences are aligned), made on the first call, which says how many.

    Defaults: the paper's MLP [200, 80] with Dice (Eq. 8-9) and an activation unit [80, 40]
    with Dice as in its Fig. 2 (the authors' released code uses sigmoid there:
    ``att_activation: sigmoid``; ``prelu`` for PReLU). ``simple_units`` (e.g. [400]) adds a
    simple branch, a second DIN with its own activation units and that shallow MLP, logits
    summed as DualMLP's, so that TF4CTR can split DIN into its two encoders (each branch may
    read its own embeddings, of their own width); empty (the default) is one branch.
    """

    uses_sequences = True
    defaults = {**DNN_DEFAULTS, "dnn_units": (200, 80), "dnn_activation": "dice", "att_units": (80, 40),
                "att_activation": "dice", "att_dropout": 0.0, "simple_units": ()}
    branch_names = ("simple", "din")

    @property
    def branches(self):
        return self.branch_names if self.options["simple_units"] else None

    def _build_layers(self):
        self.towers = {"din": self._tower(self.options["dnn_units"], "dnn")}
        if self.branches:
            self.towers["simple"] = self._tower(self.options["simple_units"], "simple")
        self.attention = {}  # branch -> an ActivationUnit per sequence, made on the first call

    def _units(self, branch: str, count: int):
        if branch not in self.attention:
            o = self.options
            with L.precision_sensitive():
                self.attention[branch] = [L.ActivationUnit(o["att_units"], o["att_activation"], o["att_dropout"],
                                                           name=f"{branch}_activation_unit_{i}")
                                          for i in range(count)]
        if len(self.attention[branch]) != count:
            raise ValueError(f"backbone 'din' was built for {len(self.attention[branch])} behaviour "
                             f"sequence(s), got {count}")
        return self.attention[branch]

    def _branch(self, branch: str, emb, training) -> BackboneOutput:
        """Eq. 3 per sequence, its interest in place of the sequence's pooled field, then the MLP."""
        fields = emb.fields
        for unit, seq in zip(self._units(branch, len(emb.sequences)), emb.sequences):
            interest, _ = unit(seq.rows, seq.target, seq.mask, training=training)
            at = tf.one_hot(seq.field, fields.shape[1], dtype=fields.dtype)[None, :, None]  # [1, F, 1]
            fields = fields * (1.0 - at) + interest[:, None, :] * at
        return BackboneOutput(*self.towers[branch](flat_fields(fields), training=training))

    def _forward(self, emb, training):
        return self._branch("din", emb, training)

    _complex = _forward

    def _simple(self, emb, training):
        return self._branch("simple", emb, training)
