"""Build a model by name from a schema and a model config.

``framework`` selects the model class: ``none`` is the plain backbone model
(:class:`models.ctr_model.CTRModel`); method frameworks (TF4CTR, ...) register
themselves with :func:`register_framework` and wrap a backbone by name.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import tensorflow as tf

from models.ctr_model import CTRModel

FRAMEWORKS: Dict[str, Callable[..., tf.keras.Model]] = {"none": CTRModel}


def register_framework(name: str):
    def deco(cls):
        FRAMEWORKS[name] = cls
        return cls

    return deco


def build_model(schema_dict: dict, tasks: List[str], backbone: str = "dcnv2",
                backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                embedding_options: Optional[dict] = None, framework: str = "none",
                framework_options: Optional[dict] = None) -> tf.keras.Model:
    _import_frameworks()
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown model.framework '{framework}'; known: {sorted(FRAMEWORKS)}")
    return FRAMEWORKS[framework](schema_dict=schema_dict, tasks=list(tasks), backbone=backbone,
                                 backbone_options=dict(backbone_options or {}),
                                 embedding_dim=embedding_dim,
                                 embedding_options=dict(embedding_options or {}),
                                 **dict(framework_options or {}))


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
