"""The hook between the embedding and the backbone: field modules and how their output joins.

A field module reads the encoded inputs and the embedded fields and returns ``k`` fields of
its own, [B, k, d] (Tencent's TIM over a behaviour sequence, ``models/tim.py``; the similarity
encoding of pretrained embeddings, ``models/similarity.py``). Its ``join`` option says where
they go:

fields          they join the embedded fields before the backbone, so every backbone interacts
                with them as with any field (the backbone is built for F + k fields).
representation  they are flattened to u [B, k * d] and joined to the backbone's output: heads read
                concat(r_b, u) and the logit gains a linear term, z = z_b + w_u^T u (one weight
                vector w_u over every such module's u, no bias: z_b has one). For backbones whose
                logit is a linear unit on r_b (LR, DNN, IPNN, DualMLP, WideDeep, AutoInt+, DCN,
                DCNv2, GDCN, DIN) this IS Tencent's "concatenate with the feature interaction
                output, then the classifier" (Sec. 3.1, 3.3); FM, FwFM, FFM, DeepFM, xDeepFM
                (first-order terms outside r_b, fixed pair weights) and FinalMLP (bilinear
                fusion) keep their own logit, to which u adds its linear term.

Each module class has its default (the base's ``fields``; TIM's and the similarity encoding's
``representation``, the paper's). A module is one class, registered by name (the built-in ones
register when ``models.factory``, which builds every model, imports them)::

    @register_field_module("my_fields")
    class MyFields(FieldModule):
        option_defaults = {"source": "history"}          # and join, the class's default_join

        @classmethod
        def count_fields(cls, schema_dict, options):
            return 1                                     # k: fields this module outputs

        def _build_module(self):
            self.proj = tf.keras.layers.Dense(self.embedding_dim)

        def _fields(self, inputs, emb, training):
            return self.proj(...)[:, None, :]            # [B, k, width]

and a model config names it: ``field_modules: [{name: my_fields, source: history, join: fields}]``.
Joined as fields, their first-order terms (for LR / FM / WideDeep / DeepFM) are zeros unless the
module overrides ``_linear``. A module with ``uses_sequences`` reads ``EmbeddedFields.sequences``
(the model then builds its embedding with ``sequences=True``); ``check_schema`` checks, before
anything is built, that the features it reads exist with the encodings it needs.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf

from features.registry import registrar
from features.schema import Schema
from models.backbones import BackboneOutput
from models.embedding import EmbeddedFields
from models.layers import plain
from models.options import OptionError, check_options

FIELD_MODULES: Dict[str, type] = {}
JOINS = ("fields", "representation")


_register = registrar(FIELD_MODULES, "field module")


def register_field_module(name: str):
    """Class decorator: register a :class:`FieldModule` under ``name`` (a taken name fails)
    and make it Keras-serializable."""
    return lambda cls: tf.keras.utils.register_keras_serializable("ctrflow")(_register(name)(cls))


def _split(spec: Dict[str, Any], index: int, prefix: str = "") -> Tuple[type, Dict[str, Any]]:
    """(module class, its checked options with the defaults filled in) of ``spec``."""
    where = f"{prefix}field_modules[{index}]."
    if not isinstance(spec, dict):
        raise OptionError(f"{where.rstrip('.')} = {spec!r}: expected a mapping {{name: <module>, <options>}}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in FIELD_MODULES:
        raise OptionError(f"{where}name = {name!r}: unknown; known: {sorted(FIELD_MODULES)}")
    cls = FIELD_MODULES[name]
    defaults = cls.defaults()
    options = {**defaults, **check_options(spec, defaults, where, f"field module '{name}'", cls.option_ranges,
                                           {"join": JOINS, **(cls.option_choices or {})}, cls.option_types)}
    cls.check_values(options, where)
    return cls, options


def check_field_modules(specs: List[dict], prefix: str = "") -> List[dict]:
    """Names and options of ``specs`` checked before anything is built (an :class:`OptionError`
    names ``prefix`` + ``field_modules[i].<key>``); returns them with integral floats of int
    options made ints."""
    if not isinstance(specs, list):
        raise OptionError(f"{prefix}field_modules = {specs!r}: expected a list of {{name: <module>, <options>}}")
    checked = []
    for i, spec in enumerate(specs):
        _, options = _split(spec, i, prefix)
        checked.append({"name": spec["name"], **{k: options[k] for k in spec if k != "name"}})
    return checked


def plan_modules(schema_dict: dict, specs: List[dict]) -> List[Tuple[type, Dict[str, Any]]]:
    """(class, options) of every module of ``specs``, each checked against the schema (the
    features it reads: :meth:`FieldModule.check_schema`)."""
    schema = Schema.from_dict(plain(schema_dict))
    planned = []
    for i, spec in enumerate(specs):
        cls, options = _split(spec, i)
        cls.check_schema(schema, options, f"field_modules[{i}].")
        planned.append((cls, options))
    return planned


def count_added_fields(schema_dict: dict, specs: List[dict]) -> int:
    """How many fields the modules of ``specs`` add before the backbone (those joined as
    ``fields``; known before anything is built)."""
    return sum(int(cls.count_fields(schema_dict, options)) for cls, options in plan_modules(schema_dict, specs)
               if options["join"] == "fields")


def modules_use_sequences(specs: List[dict]) -> bool:
    """Whether a module of ``specs`` reads the behaviour sequences (``EmbeddedFields.sequences``)."""
    return any(_split(spec, i)[0].uses_sequences for i, spec in enumerate(specs))


class FieldModule(tf.keras.layers.Layer):
    """Outputs ``count_fields`` fields of width ``embedding_dim`` (see the module docstring)."""

    registered_name = "field_module"
    default_join = "fields"
    uses_sequences = False  # reads EmbeddedFields.sequences (behaviour rows against their targets)
    option_defaults: Dict[str, Any] = {}
    option_ranges: Optional[Dict[str, str]] = None
    option_choices: Optional[Dict[str, tuple]] = None
    option_types: Optional[Dict[str, type]] = None

    def __init__(self, schema_dict: dict, embedding_dim: int, name=None, trainable=True, dtype=None, **options):
        super().__init__(name=name or self.registered_name, trainable=trainable, dtype=dtype or "float32")
        self.schema_dict, self.embedding_dim = plain(schema_dict), int(embedding_dim)
        self.options = {**self.defaults(), **options}
        self.join = self.options["join"]
        self._build_module()

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """Every option's default: ``join`` (the class's ``default_join``) and ``option_defaults``."""
        return {"join": cls.default_join, **cls.option_defaults}

    @classmethod
    def count_fields(cls, schema_dict: dict, options: Dict[str, Any]) -> int:
        raise NotImplementedError

    @classmethod
    def check_values(cls, options: Dict[str, Any], prefix: str) -> None:
        """Raise an OptionError naming ``prefix`` + the option for what names, types and ranges
        do not catch (e.g. repeated numeral systems)."""

    @classmethod
    def check_schema(cls, schema: Schema, options: Dict[str, Any], prefix: str) -> None:
        """Raise a UserError naming ``prefix`` + the option when a feature the module reads is
        missing or has another encoding than it needs."""

    def _build_module(self) -> None:
        pass

    def _fields(self, inputs: dict, emb: EmbeddedFields, training) -> tf.Tensor:
        raise NotImplementedError

    def _linear(self, inputs: dict, emb: EmbeddedFields, fields: tf.Tensor, training) -> tf.Tensor:
        return tf.zeros(tf.shape(fields)[:2], fields.dtype)

    def call(self, inputs: dict, emb: EmbeddedFields, training=None) -> EmbeddedFields:
        """The module's fields [B, k, d] (float32) and, joined as fields to an embedding with
        first-order terms, theirs [B, k]."""
        fields = tf.cast(self._fields(inputs, emb, training), tf.float32)
        with_linear = self.join == "fields" and emb.linear is not None
        return EmbeddedFields(fields, self._linear(inputs, emb, fields, training) if with_linear else None)

    def get_config(self):
        return {**super().get_config(), "schema_dict": plain(self.schema_dict), "embedding_dim": self.embedding_dim,
                **plain(self.options)}


class FieldModules(tf.keras.layers.Layer):
    """Every module of ``specs``, each joined as its ``join`` says: ``call`` appends the fields
    of the ``fields`` modules to the embedded ones (in ``specs`` order); :meth:`join` joins the
    ``representation`` modules' u to the backbone's output."""

    def __init__(self, schema_dict: dict, specs: List[dict], embedding_dim: int, name="field_modules", **kw):
        super().__init__(name=name, **kw)
        self.schema_dict, self.specs, self.embedding_dim = plain(schema_dict), plain(specs), int(embedding_dim)
        self.modules = [cls(schema_dict, self.embedding_dim, name=f"{cls.registered_name}_{i}", **options)
                        for i, (cls, options) in enumerate(plan_modules(schema_dict, self.specs))]
        self.num_fields = count_added_fields(schema_dict, self.specs)
        self.representation_modules = [m for m in self.modules if m.join == "representation"]
        # w_u of z = z_b + w_u^T u, u the concatenation of every representation module's output
        self.representation_logit = tf.keras.layers.Dense(1, use_bias=False, name="representation_logit") \
            if self.representation_modules else None

    def call(self, inputs: dict, emb: EmbeddedFields, training=None) -> EmbeddedFields:
        added = [m(inputs, emb, training=training) for m in self.modules if m.join == "fields"]
        if not added:
            return emb
        fields = tf.concat([emb.fields] + [tf.cast(a.fields, emb.fields.dtype) for a in added], axis=1)
        linear = None if emb.linear is None else tf.concat(
            [emb.linear] + [tf.cast(a.linear, emb.linear.dtype) for a in added], axis=1)
        return EmbeddedFields(fields, linear, emb.sequences)  # the sequences' field indices still hold

    def representation(self, inputs: dict, emb: EmbeddedFields, training=None) -> Optional[tf.Tensor]:
        """u [B, m] float32: the ``representation`` modules' fields, flattened and concatenated
        (None without such a module)."""
        if not self.representation_modules:
            return None
        parts = [m(inputs, emb, training=training).fields for m in self.representation_modules]
        return tf.concat([tf.reshape(p, [-1, p.shape[1] * p.shape[2]]) for p in parts], axis=1)

    def join(self, out: BackboneOutput, inputs: dict, emb: EmbeddedFields, training=None) -> BackboneOutput:
        """The backbone's output with u joined: (concat(r_b, u), z_b + w_u^T u); unchanged
        without a ``representation`` module."""
        u = self.representation(inputs, emb, training=training)
        if u is None:
            return out
        return BackboneOutput(tf.concat([out.repr, tf.cast(u, out.repr.dtype)], axis=1),
                              out.logit + tf.cast(self.representation_logit(u), out.logit.dtype))

    def get_config(self):
        return {**super().get_config(), "schema_dict": plain(self.schema_dict), "specs": plain(self.specs),
                "embedding_dim": self.embedding_dim}
