"""Strict YAML configs: dataclasses whose every option is checked when the config is loaded.

Every job (simulate, preprocess, train, compare) declares its config as a dataclass
and loads it with :func:`load_config`. :func:`from_dict` checks each value against the
field's type hint (``int``, ``float``, ``bool``, ``str``, ``Optional[...]``,
``List[...]``, ``Dict[str, ...]``, ``Literal[...]``, nested dataclasses) and against the
range / choices declared with :func:`option`; a misspelt option, a value of the wrong
type or out of range fails with one :class:`ConfigError` naming the file, the dotted
key, the value and what is expected. Type rules: an ``int`` option takes an integer
(``1e5`` too: an integral float), never ``2.5`` or ``true``; a ``float`` option takes
any finite number; a ``bool`` option takes only ``true`` / ``false``; a ``str`` option
only a string. ``Dict[str, Any]`` options are free-form: the code that consumes them
checks them.

YAML is read with YAML 1.2's number and boolean rules (:class:`ConfigLoader`), in files and
in ``--set``: ``1e-4`` is the float 0.0001 (YAML 1.1, PyYAML's default, reads it as a
string) and only ``true`` / ``false`` are booleans (1.1 also reads ``yes`` / ``no`` / ``on`` /
``off`` as booleans: here they are strings).
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

import yaml

from features.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config file that cannot be used as written."""


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats and booleans: ``1e-4``, ``5E3``, ``.5``
    are numbers; only ``true`` / ``false`` are booleans (``yes``, ``no``, ``on``, ``off`` are
    strings, so ``cache: yes`` fails as "expected true or false" instead of guessing)."""


_FLOAT, _BOOL = "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                           |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
_BOOL_12 = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
# YAML 1.1's float and bool rules are dropped (ints keep theirs and are tried first)
ConfigLoader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] not in (_FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver(_FLOAT, _FLOAT_12, list("-+.0123456789"))
ConfigLoader.add_implicit_resolver(_BOOL, _BOOL_12, list("tTfF"))


def parse_yaml(text: str) -> Any:
    """YAML text -> Python values, numbers by YAML 1.2 (``1e-4`` is a float)."""
    return yaml.load(text, Loader=ConfigLoader)


def option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, min: Any = None,
           max: Any = None, gt: Any = None, lt: Any = None, choices: Optional[tuple] = None,
           length: Optional[int] = None) -> Any:
    """A dataclass field with a declared range, checked by :func:`from_dict`.

    ``min`` / ``max`` are inclusive bounds, ``gt`` / ``lt`` exclusive ones, ``choices`` the
    allowed values, ``length`` the exact length of a list. On a list or dict option the
    bounds and choices apply to each element / value.
    """
    meta = {k: v for k, v in dict(min=min, max=max, gt=gt, lt=lt, choices=choices, length=length).items()
            if v is not None}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as fh:
            data = parse_yaml(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: '{path}'") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{path}' is a directory, expected a YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    return data


def from_dict(cls: Type[T], data: Dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, checking every value (see the module docstring).

    ``where`` names the source (the file) in error messages.
    """
    return _build(cls, data, where, "")


def load_config(cls: Type[T], path: str, overrides: Optional[Dict[str, Any]] = None) -> T:
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, path)
    return from_dict(cls, data, where=path)


def to_dict(obj: Any) -> Dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple:
    """``a.b=3`` -> ("a.b", 3) with the value parsed as YAML (1.2 numbers)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), parse_yaml(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML: {exc}") from None


def _set_dotted(data: Dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: --set {dotted}: '{'.'.join(parts[:i + 1])}' is not a mapping")
    node[parts[-1]] = value


# ---- checking -------------------------------------------------------------------------------
def _fail(where: str, path: str, value: Any, expected: str) -> ConfigError:
    hint = " (a quoted number is a string: write it unquoted)" if _numeric_string(value) else ""
    return ConfigError(f"{where}: {path} = {value!r}: expected {expected}{hint}")


def _numeric_string(value: Any) -> bool:
    return isinstance(value, str) and bool(_FLOAT_12.match(value.strip()))


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def _build(cls: type, data: Any, where: str, path: str) -> Any:
    """One dataclass from a mapping: unknown / missing keys, then each field, then ``__post_init__``."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(where, path or "config", data, f"a mapping of {cls.__name__} options")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise ConfigError(f"{where}: {path + ': ' if path else ''}unknown option(s) {unknown}; "
                          f"known: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: {path + ': ' if path else ''}missing required option(s) "
                          f"{[_join(path, n) for n in missing]}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _check(hints[name], dict(fields[name].metadata), value, where, _join(path, name))
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except UserError as exc:  # a check across fields in __post_init__
        raise ConfigError(f"{where}: {path + ': ' if path else ''}{exc}") from None


def _check(tp: Any, meta: Dict[str, Any], value: Any, where: str, path: str) -> Any:
    """``value`` checked against type ``tp`` and ``meta`` (ranges / choices / length); returns it
    converted (an integral float for an int option becomes an int)."""
    origin, args = typing.get_origin(tp) or (tp if tp in (list, dict) else None), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"config option {path}: only Optional[X] unions are supported, got {tp}")
        return _check(rest[0], meta, value, where, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, path)
    if origin in (list, tuple, typing.List):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, path, value, f"a list{_describe(meta, ' (each', ')')}")
        if "length" in meta and len(value) != meta["length"]:
            raise _fail(where, path, value, f"a list of {meta['length']} values")
        item = args[0] if args else Any
        return [_check(item, meta, v, where, _join(path, i)) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise _fail(where, path, value, "a mapping")
        key_tp, val_tp = args if args else (Any, Any)
        return {_check(key_tp, {}, k, where, _join(path, k)): _check(val_tp, meta, v, where, _join(path, k))
                for k, v in value.items()}
    if origin is typing.Literal:
        meta = {**meta, "choices": args}
        tp = type(args[0])
    return _check_scalar(tp, meta, value, where, path)


def _check_scalar(tp: type, meta: Dict[str, Any], value: Any, where: str, path: str) -> Any:
    noun = _NOUNS.get(tp, "a value")
    if tp is int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, float) and math.isfinite(v),
          str: lambda v: isinstance(v, str)}.get(tp, lambda v: True)(value)
    if not ok or not _in_range(value, meta):
        raise _fail(where, path, value, "one of " + str(list(meta["choices"])) if "choices" in meta
                    else noun + _describe(meta))
    return value


_NOUNS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def _in_range(value: Any, meta: Dict[str, Any]) -> bool:
    if "choices" in meta and value not in meta["choices"]:
        return False
    return all(bound not in meta or test(value, meta[bound]) for bound, test in _BOUNDS)


_BOUNDS: Tuple[tuple, ...] = (("min", lambda v, b: v >= b), ("max", lambda v, b: v <= b),
                              ("gt", lambda v, b: v > b), ("lt", lambda v, b: v < b))
_SYMBOLS = {"min": ">=", "max": "<=", "gt": ">", "lt": "<"}


def _describe(meta: Dict[str, Any], lead: str = "", tail: str = "") -> str:
    """`` >= 1 and < 10`` / `` one of ['min', 'max']`` (empty without a range)."""
    if "choices" in meta:
        return f"{lead} one of {list(meta['choices'])}{tail}"
    bounds = [f"{_SYMBOLS[b]} {meta[b]}" for b, _ in _BOUNDS if b in meta]
    return f"{lead} {' and '.join(bounds)}{tail}" if bounds else ""
