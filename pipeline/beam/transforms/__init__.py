"""Transforms of the preprocess job's transform stage (protocol and registry: ``base``).

Every module of this package is imported with it, so its transforms register by name: a new
transform is one new file here (``negative_downsampling.py`` is an example).
"""
import importlib
import pkgutil

from pipeline.beam.transforms.base import (TRANSFORMS, Batch, Column, Output, Transform, build_transforms,
                                           register_transform)

__all__ = ["TRANSFORMS", "Batch", "Column", "Output", "Transform", "build_transforms", "register_transform"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
