"""Build a model by name from a schema and a model config.

``framework`` selects the model class: ``none`` is the plain backbone model
(:class:`models.ctr_model.CTRModel`); method frameworks (TF4CTR, ...) live in
``models/frameworks/`` (one module or folder each), subclass
:class:`models.framework.FrameworkModel` and register themselves on import with
:func:`register_framework`; a framework class declares its ``framework_options`` as
``option_defaults`` (and ``option_ranges``, ``option_choices``, ``option_types``: see
:func:`models.options.check_options`), checked by :func:`check_model_options` through the
class's ``check_framework_options`` (which a framework with nested options extends).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Dict, List, Optional

from features.registry import registrar
from models import embedding, similarity, tim  # noqa: F401  (tim, similarity: field modules register on import)
from models.backbones import BACKBONES, backbone_class
from models.ctr_model import CTRModel
from models.field_modules import check_field_modules
from models.heads import check_head_options
from models.options import OptionError, check_options

FRAMEWORKS: Dict[str, type] = {"none": CTRModel}


# class decorator: register a method framework's model class under a name (a taken name fails)
register_framework = registrar(FRAMEWORKS, "framework", attr="framework_name")


def build_model(schema_dict: dict, tasks: List[str], backbone: str = "dcnv2",
                backbone_options: Optional[dict] = None, embedding_dim: int = 16,
                embedding_options: Optional[dict] = None, framework: str = "none",
                framework_options: Optional[dict] = None, heads: str = "additive",
                head_options: Optional[dict] = None, field_modules: Optional[List[dict]] = None):
    """The framework's model class built from a model config (checked first)."""
    check_model_options(backbone, backbone_options or {}, embedding_dim, embedding_options or {}, framework,
                        framework_options or {}, prefix="", heads=heads, head_options=head_options or {},
                        field_modules=field_modules or [])
    return FRAMEWORKS[framework](schema_dict=schema_dict, tasks=list(tasks), backbone=backbone,
                                 backbone_options=dict(backbone_options or {}),
                                 embedding_dim=embedding_dim,
                                 embedding_options=dict(embedding_options or {}),
                                 **_structure_options(heads, head_options or {}, field_modules or []),
                                 **dict(framework_options or {}))


def _structure_options(heads: str, head_options: dict, field_modules: List[dict]) -> Dict[str, Any]:
    """The task-head and field-module arguments that differ from the defaults (a framework
    that has no task heads, such as single-task TF4CTR, is built without them)."""
    out: Dict[str, Any] = {}
    if heads != "additive" or head_options:
        out.update(heads=heads, head_options=dict(head_options))
    if field_modules:
        out["field_modules"] = [dict(m) for m in field_modules]
    return out


def check_model_options(backbone: str, backbone_options: dict, embedding_dim: int, embedding_options: dict,
                        framework: str, framework_options: dict, prefix: str = "model.", heads: str = "additive",
                        head_options: Optional[dict] = None,
                        field_modules: Optional[List[dict]] = None) -> Dict[str, Any]:
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
    accepted = inspect.signature(fw.__init__).parameters
    for key in _structure_options(heads, head_options or {}, field_modules or []):
        if key not in accepted:
            raise OptionError(f"{prefix}{key}: framework '{framework}' has no {key.replace('_', ' ')} "
                              f"(it is single-task or builds its own fields); leave it unset")
    return {"head_options": check_head_options(heads, head_options or {}, prefix),
            "field_modules": check_field_modules(field_modules or [], prefix),
            "backbone_options": cls.check_options(backbone_options, f"{prefix}backbone_options."),
            "embedding_options": check_options(embedding_options, embedding.OPTION_DEFAULTS,
                                               f"{prefix}embedding_options.", "the embedding",
                                               embedding.OPTION_RANGES),
            "framework_options": fw.check_framework_options(framework_options, f"{prefix}framework_options.")}


def framework_class(name: str) -> type:
    """The model class registered as framework ``name``."""
    _import_frameworks()
    if name not in FRAMEWORKS:
        raise OptionError(f"model.framework = {name!r}: unknown; known: {sorted(FRAMEWORKS)}")
    return FRAMEWORKS[name]


def custom_objects() -> Dict[str, type]:
    """Every registered model class, for ``tf.keras.models.load_model``."""
    _import_frameworks()
    return {cls.__name__: cls for cls in FRAMEWORKS.values()}


def _import_frameworks() -> None:
    """Frameworks register on import: import every module and folder of ``models.frameworks``."""
    import models.frameworks as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
