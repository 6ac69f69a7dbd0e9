"""Registries by name: one mechanism for backbones, heads, field modules, frameworks,
encodings and Beam transforms, so a taken name fails the same way everywhere (two
classes silently replacing one another would train the wrong model)."""
from __future__ import annotations

from typing import Callable, Dict


def registrar(registry: Dict[str, type], kind: str, attr: str = "registered_name",
              key: Callable[[str], str] = str) -> Callable[[str], Callable[[type], type]]:
    """``register(name)``: a class decorator putting the class in ``registry`` under
    ``key(name)`` and setting ``cls.<attr>`` to it; a taken name raises ValueError naming
    both classes."""

    def register(name: str):
        name = key(name)

        def deco(cls):
            if name in registry:
                raise ValueError(f"{kind} '{name}' is registered twice ({registry[name].__name__}, {cls.__name__})")
            setattr(cls, attr, name)
            registry[name] = cls
            return cls

        return deco

    return register
