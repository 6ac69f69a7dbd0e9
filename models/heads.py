"""Task heads: the backbone's output -> one logit per task, a registry of variants.

A heads variant is a Keras layer mapping ``(BackboneOutput(repr, logit), training)`` to
``{task: logit [B, 1] float32}``. It is registered by name with :func:`register_heads` (a
taken name fails), declares its options' defaults (and ranges, choices, types: see
:func:`models.options.check_options`) as class attributes, builds its layers in
``_build_heads`` and computes the logits in ``_logits``. Models build one with
:func:`get_heads`; training configs check a name and options with :func:`check_head_options`.

Registered variants:

additive  (default) one task: the backbone logit itself. Several tasks: task t adds its own
          linear head on the representation to the backbone logit,
          z_t = z_b + w_t^T r_b + b_t; the heads start at zero, so every backbone weight keeps
          a gradient and the tasks separate as they train.
towers    per-task towers, as in shared-bottom multi-task models: task t's logit is that of
          its own MLP on r_b (``units``, ``activation``, ``dropout``), with no shared backbone
          logit.

Gated experts over embedding tables (Shared-Bottom, MMoE, PLE, STEM, AME, ...) are the experts
framework (``models/frameworks/experts/``), whose towers are its own.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import tensorflow as tf

from features.registry import registrar
from models import layers as L
from models.backbones import BackboneOutput
from models.options import OptionError, check_activations, check_options

HEADS: Dict[str, type] = {}


_register = registrar(HEADS, "heads", key=str.lower)


def register_heads(name: str):
    """Class decorator: register a :class:`Heads` subclass under ``name`` (lower case; a taken
    name fails: two variants would silently replace one another) and make it Keras-serializable."""
    return lambda cls: tf.keras.utils.register_keras_serializable("ctrflow")(_register(name)(cls))


def heads_class(name: str, prefix: str = "") -> type:
    """The class registered as ``name``; an unknown name is an OptionError naming ``prefix`` + heads."""
    key = str(name).lower()
    if key not in HEADS:
        raise OptionError(f"{prefix}heads = {name!r}: unknown heads; known: {sorted(HEADS)}")
    return HEADS[key]


def check_head_options(name: str, options: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Heads ``name`` and its ``options`` checked before anything is built; returns the checked
    options. ``prefix`` is where the model's keys live (``model.`` in a training config), so
    errors name ``model.heads`` or ``model.head_options.<key>``."""
    return heads_class(name, prefix).check_options(options, f"{prefix}head_options.")


def get_heads(name: str, tasks: List[str], **options) -> "Heads":
    """The heads registered as ``name`` for ``tasks``, built with ``options`` (checked)."""
    return heads_class(name)(tasks=list(tasks), **options)


class Heads(tf.keras.layers.Layer):
    """The protocol (see the module docstring). Subclasses set ``option_defaults`` (and
    ``option_ranges``, ``option_choices``, ``option_types``), build their layers in
    ``_build_heads`` and implement ``_logits``."""

    registered_name = "heads"
    option_defaults: Dict[str, Any] = {}
    option_ranges: Optional[Dict[str, str]] = None
    option_choices: Optional[Dict[str, tuple]] = None
    option_types: Optional[Dict[str, type]] = None

    def __init__(self, tasks: List[str], name: Optional[str] = "heads", trainable=True, dtype=None, **options):
        options = self.check_options(options)
        # float32 under mixed precision but for MLP hidden layers (models.layers.precision_sensitive)
        super().__init__(name=name, trainable=trainable, dtype=dtype or "float32")
        self.tasks = list(tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"heads '{self.registered_name}': tasks must be distinct labels, got {self.tasks}")
        self.options = {**self.option_defaults, **options}
        with L.precision_sensitive():
            self._build_heads()

    @classmethod
    def check_options(cls, options: Dict[str, Any], prefix: str = "head_options.") -> Dict[str, Any]:
        """``options`` checked against :attr:`option_defaults` (names, types, ranges, choices,
        activation names); raises :class:`OptionError` naming ``prefix`` + the key."""
        owner = f"heads '{cls.registered_name}'"
        options = check_options(options, cls.option_defaults, prefix, owner, cls.option_ranges,
                                cls.option_choices, cls.option_types)
        return check_activations(options, prefix, owner)

    def call(self, inputs: BackboneOutput, training=None) -> Dict[str, tf.Tensor]:
        """{task: logit [B, 1] float32} from the backbone's output."""
        logits = self._logits(BackboneOutput(*inputs), training)
        return {t: tf.cast(logits[t], tf.float32) for t in self.tasks}

    # ---- subclass hooks ----------------------------------------------------------------
    def _build_heads(self) -> None:
        raise NotImplementedError

    def _logits(self, out: BackboneOutput, training) -> Dict[str, tf.Tensor]:
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "tasks": list(self.tasks), **L.plain(self.options)}


@register_heads("additive")
class AdditiveHeads(Heads):
    """z_t = z_b + w_t^T r_b + b_t with zero-initialised heads; one task: z_b itself."""

    def _build_heads(self):
        self.task_heads = {}
        if len(self.tasks) > 1:
            self.task_heads = {t: tf.keras.layers.Dense(1, kernel_initializer="zeros", name="head_" + L.safe_name(t))
                               for t in self.tasks}

    def _logits(self, out, training):
        if not self.task_heads:
            return {self.tasks[0]: out.logit}
        return {t: out.logit + self.task_heads[t](out.repr) for t in self.tasks}


@register_heads("towers")
class TowerHeads(Heads):
    """Task t's logit is its own tower's: an MLP on r_b and a 1-unit logit (``models.layers.Tower``)."""

    option_defaults = {"units": [64], "activation": "relu", "dropout": 0.0}
    option_ranges = {"units": "[1, inf)", "dropout": "[0, 1)"}

    def _build_heads(self):
        o = self.options
        self.towers = {t: L.Tower(o["units"], o["activation"], o["dropout"], name="tower_" + L.safe_name(t))
                       for t in self.tasks}

    def _logits(self, out, training):
        return {t: self.towers[t](out.repr, training=training)[1] for t in self.tasks}
