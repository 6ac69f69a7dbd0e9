"""Strict YAML configs: dataclasses whose unknown keys fail, naming the key and file.

Every job (simulate, preprocess, train, compare) declares its config as a dataclass
and loads it with :func:`load_config`; a misspelt option is an error, never ignored.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Optional, Type, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file that cannot be used as written."""


def read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: '{path}'") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    return data


def from_dict(cls: Type[T], data: Dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields are built too.

    Unknown keys raise :class:`ConfigError` naming the key and ``where``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        ftype = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = from_dict(ftype, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return obj


def load_config(cls: Type[T], path: str, overrides: Optional[Dict[str, Any]] = None) -> T:
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return from_dict(cls, data, where=path)


def to_dict(obj: Any) -> Dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple:
    """``a.b=3`` -> ("a.b", 3) with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _set_dotted(data: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp
