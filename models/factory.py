"""Build a model by name from a schema and a model config.

``framework`` selects the model class: ``none`` is the plain backbone model
(:class:`models.ctr_model.CTRModel`); method frameworks (TF4CTR, ...) register
themselves with :func:`register_framework` and wrap a backbone by name; a framework
class declares its ``framework_options`` as ``option_defaults`` (and ``option_ranges``,
``option_choices``, ``option_types``: see :func:`models.options.check_options`), checked by
:func:`check_model_options`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

from models import embedding
from models.backbones import BACKBONES, backbone_class
from models.ctr_model import CTRModel
from models.options import OptionError, check_options

FRAMEWORKS: Dict[str, Callable[..., tf.keras.Model]] = {"none": CTRModel}


def register_framework(name: str):
    """Class decorator: register a method framework's model class under ``name``; a name
    taken by another class fails (two frameworks would silently replace one another)."""

    def deco(cls):
        if name in FRAMEWORKS:
            raise ValueError(f"framework '{name}' is registered twice ({FRAMEWORKS[name].__name__}, {cls.__name__})")
        FRAMEWORKS[name] = cls
        return cls

    return deco


def build_model(schema_dict: dict, tasks: List[str], backbone: str = "dcnv2",
                backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                embedding_options: Optional[dict] = None, framework: str = "none",
                framework_options: Optional[dict] = None) -> tf.keras.Model:
    check_model_options(backbone, backbone_options or {}, embedding_dim, embedding_options or {}, framework,
                        framework_options or {}, prefix="")
    return FRAMEWORKS[framework](schema_dict=schema_dict, tasks=list(tasks), backbone=backbone,
                                 backbone_options=dict(backbone_options or {}),
                                 embedding_dim=embedding_dim,
                                 embedding_options=dict(embedding_options or {}),
                                 **dict(framework_options or {}))


def check_model_options(backbone: str, backbone_options: dict, embedding_dim: int, embedding_options: dict,
                        framework: str, framework_options: dict, prefix: str = "model.") -> Dict[str, Any]:
    """Names, types and ranges of a model config's options, before anything is built; returns
    the checked option dicts (integral floats of int options made ints). Errors are
    :class:`OptionError` naming ``prefix`` + the key (``model.backbone_options.dnn_units``)."""
    _import_frameworks()
    if framework not in FRAMEWORKS:
        raise OptionError(f"{prefix}framework = {framework!r}: unknown; known: {sorted(FRAMEWORKS)}")
    if str(backbone).lower() not in BACKBONES:
        raise OptionError(f"{prefix}backbone = {backbone!r}: unknown backbone; known: {sorted(BACKBONES)}")
    cls = backbone_class(backbone)
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise OptionError(f"{prefix}embedding_dim = {embedding_dim!r}: expected an integer >= 1")
    fw = FRAMEWORKS[framework]
    return {"backbone_options": cls.check_options(backbone_options, f"{prefix}backbone_options."),
            "embedding_options": check_options(embedding_options, embedding.OPTION_DEFAULTS,
                                               f"{prefix}embedding_options.", "the embedding",
                                               embedding.OPTION_RANGES),
            "framework_options": check_options(framework_options, getattr(fw, "option_defaults", {}),
                                               f"{prefix}framework_options.", f"framework '{framework}'",
                                               getattr(fw, "option_ranges", None),
                                               getattr(fw, "option_choices", None),
                                               getattr(fw, "option_types", None))}


def custom_objects() -> Dict[str, type]:
    """Every registered model class, for ``tf.keras.models.load_model``."""
    _import_frameworks()
    return {cls.__name__: cls for cls in FRAMEWORKS.values()}


def _import_frameworks() -> None:
    """Frameworks register on import; import the ones that exist."""
    import importlib

    for module in ("models.tf4ctr",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
