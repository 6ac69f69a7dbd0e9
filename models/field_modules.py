"""The hook between the embedding and the backbone: field modules add fields.

A field module reads the encoded inputs and the embedded fields and returns fields of its
own (Tencent's TIM over a behaviour sequence, similarity-encoded pretrained embeddings),
which join the embedded ones before the backbone, so every backbone reads them as it reads
any field. A module is one class, registered by name::

    @register_field_module("my_fields")
    class MyFields(FieldModule):
        option_defaults = {"source": "history"}

        @classmethod
        def count_fields(cls, schema_dict, options):
            return 1                                     # fields this module adds

        def _build_module(self):
            self.proj = tf.keras.layers.Dense(self.embedding_dim)

        def _fields(self, inputs, emb, training):
            return self.proj(...)[:, None, :]            # [B, k, width]

and a model config names it: ``field_modules: [{name: my_fields, source: history}]``.
The added fields' first-order terms (for LR / FM / WideDeep / DeepFM) are zeros unless the
module overrides ``_linear``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import tensorflow as tf

from features.registry import registrar
from models.embedding import EmbeddedFields
from models.layers import plain
from models.options import OptionError, check_options

FIELD_MODULES: Dict[str, type] = {}


_register = registrar(FIELD_MODULES, "field module")


def register_field_module(name: str):
    """Class decorator: register a :class:`FieldModule` under ``name`` (a taken name fails)
    and make it Keras-serializable."""
    return lambda cls: tf.keras.utils.register_keras_serializable("ctrflow")(_register(name)(cls))


def _split(spec: Dict[str, Any], index: int):
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in FIELD_MODULES:
        raise OptionError(f"field_modules[{index}].name = {name!r}: unknown; known: {sorted(FIELD_MODULES)}")
    cls = FIELD_MODULES[name]
    return cls, check_options(spec, cls.option_defaults, f"field_modules[{index}].", f"field module '{name}'",
                              cls.option_ranges)


def count_added_fields(schema_dict: dict, specs: List[dict]) -> int:
    """How many fields the modules of ``specs`` add (known before anything is built)."""
    total = 0
    for i, spec in enumerate(specs):
        cls, options = _split(spec, i)
        total += int(cls.count_fields(schema_dict, {**cls.option_defaults, **options}))
    return total


class FieldModule(tf.keras.layers.Layer):
    """Adds fields of width ``embedding_dim`` (see the module docstring)."""

    registered_name = "field_module"
    option_defaults: Dict[str, Any] = {}
    option_ranges: Optional[Dict[str, str]] = None

    def __init__(self, schema_dict: dict, embedding_dim: int, name=None, trainable=True, dtype=None, **options):
        super().__init__(name=name or self.registered_name, trainable=trainable, dtype=dtype or "float32")
        self.schema_dict, self.embedding_dim = plain(schema_dict), int(embedding_dim)
        self.options = {**self.option_defaults, **options}
        self._build_module()

    @classmethod
    def count_fields(cls, schema_dict: dict, options: Dict[str, Any]) -> int:
        raise NotImplementedError

    def _build_module(self) -> None:
        pass

    def _fields(self, inputs: dict, emb: EmbeddedFields, training) -> tf.Tensor:
        raise NotImplementedError

    def _linear(self, inputs: dict, emb: EmbeddedFields, fields: tf.Tensor, training) -> tf.Tensor:
        return tf.zeros(tf.shape(fields)[:2], fields.dtype)

    def call(self, inputs: dict, emb: EmbeddedFields, training=None) -> EmbeddedFields:
        fields = tf.cast(self._fields(inputs, emb, training), tf.float32)
        return EmbeddedFields(fields, self._linear(inputs, emb, fields, training) if emb.linear is not None else None)

    def get_config(self):
        return {**super().get_config(), "schema_dict": plain(self.schema_dict), "embedding_dim": self.embedding_dim,
                **plain(self.options)}


class FieldModules(tf.keras.layers.Layer):
    """EmbeddedFields -> the same with every module's fields appended (in ``specs`` order)."""

    def __init__(self, schema_dict: dict, specs: List[dict], embedding_dim: int, name="field_modules", **kw):
        super().__init__(name=name, **kw)
        self.schema_dict, self.specs, self.embedding_dim = plain(schema_dict), plain(specs), int(embedding_dim)
        self.modules = []
        for i, spec in enumerate(self.specs):
            cls, options = _split(spec, i)
            self.modules.append(cls(schema_dict, self.embedding_dim, name=f"{cls.registered_name}_{i}", **options))
        self.num_fields = count_added_fields(schema_dict, self.specs)

    def call(self, inputs: dict, emb: EmbeddedFields, training=None) -> EmbeddedFields:
        if not self.modules:
            return emb
        added = [m(inputs, emb, training=training) for m in self.modules]
        fields = tf.concat([emb.fields] + [tf.cast(a.fields, emb.fields.dtype) for a in added], axis=1)
        linear = None if emb.linear is None else tf.concat(
            [emb.linear] + [tf.cast(a.linear, emb.linear.dtype) for a in added], axis=1)
        return EmbeddedFields(fields, linear, emb.sequences)  # the sequences' field indices still hold

    def get_config(self):
        return {**super().get_config(), "schema_dict": plain(self.schema_dict), "specs": plain(self.specs),
                "embedding_dim": self.embedding_dim}
