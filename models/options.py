"""Checks of the free-form option dicts that models consume (backbone, embedding,
framework and loss options): each key must be known and each value must have the type of
its default, within a declared range, or one :class:`OptionError` names the key.

A default of ``None`` takes any value (the consumer checks it) unless a type is given; a
list default takes a list whose items have the type of the default's first item (integers
for an empty default with a range).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from features.errors import UserError

# An interval in the usual notation, "[1, inf)", "[0, 1)", "(0, inf)"; on a list, per item.
Range = str


class OptionError(UserError):
    """A model / loss / optimizer option that is unknown, of the wrong type or out of range."""


def check_options(options: Dict[str, Any], defaults: Dict[str, Any], prefix: str, owner: str,
                  ranges: Optional[Dict[str, Range]] = None, choices: Optional[Dict[str, tuple]] = None,
                  types: Optional[Dict[str, type]] = None) -> Dict[str, Any]:
    """``options`` checked against ``defaults`` (names, types), ``ranges`` and ``choices``
    (key -> allowed values); returns them with integral floats for int options made ints.
    ``prefix`` + key names the option in errors (e.g. ``model.backbone_options.``), ``owner``
    what takes it (e.g. ``backbone 'dnn'``). A key whose default is None takes None or a value
    of its type in ``types`` (``int`` / ``float``); without one, any value."""
    if not isinstance(options, dict):
        raise OptionError(f"{prefix.rstrip('.')} = {options!r}: expected a mapping of {owner}'s options")
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = f"known: {sorted(defaults)}" if defaults else "it takes none"
        raise OptionError(f"{', '.join(prefix + str(k) for k in unknown)}: unknown option of {owner}; {known}")
    ranges, choices, types = ranges or {}, choices or {}, types or {}
    for k, v in options.items():
        if k in choices and v not in choices[k]:
            raise _error(prefix + k, v, f"one of {list(choices[k])}", owner)
    return {k: v if v is None and defaults[k] is None
            else _check_value(v, _typed_default(defaults[k], types.get(k)), ranges.get(k), f"{prefix}{k}", owner)
            for k, v in options.items()}


def _typed_default(default: Any, tp: Optional[type]) -> Any:
    """A value of the type an option must have (a None default stands for ``tp``, if given)."""
    return tp() if default is None and tp is not None else default


def _check_value(value: Any, default: Any, rng: Optional[Range], key: str, owner: str) -> Any:
    if default is None:
        return value
    if isinstance(default, (list, tuple)):
        item = default[0] if default else (0 if rng else None)  # an empty default with a range: integers
        if not isinstance(value, (list, tuple)):
            each = f" (each {_kind(item)}{_range_text(rng)})" if item is not None else ""
            raise _error(key, value, f"a list{each}", owner)
        return [_check_value(v, item, rng, f"{key}[{i}]", owner) for i, v in enumerate(value)]
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        if isinstance(default, int) and isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (isinstance(value, int) or isinstance(default, float)) and _in_range(value, rng))
        value = float(value) if ok and isinstance(default, float) else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise _error(key, value, f"{_kind(default)}{_range_text(rng)}", owner)
    return value


def _in_range(value: float, rng: Optional[Range]) -> bool:
    if rng is None:
        return True
    lo, hi = (float(x) for x in rng[1:-1].split(","))
    return ((value >= lo if rng[0] == "[" else value > lo) and (value <= hi if rng[-1] == "]" else value < hi))


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    return {int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(type(default), "a list")


def _range_text(rng: Optional[Range]) -> str:
    return f" in {rng}" if rng else ""


def _error(key: str, value: Any, expected: str, owner: str) -> OptionError:
    return OptionError(f"{key} = {value!r}: expected {expected} ({owner})")


def check_activations(options: Dict[str, Any], prefix: str, owner: str) -> Dict[str, Any]:
    """``options`` unchanged once every ``*activation`` option names a Keras activation (None:
    linear); else an :class:`OptionError` naming ``prefix`` + the key."""
    import tensorflow as tf  # here: the option checks of configs must not load TensorFlow

    for key, value in options.items():
        if key.endswith("activation") and value is not None:
            try:
                tf.keras.activations.get(value)
            except ValueError:
                raise OptionError(f"{prefix}{key} = {value!r}: expected a Keras activation name, e.g. "
                                  f"relu, gelu, tanh ({owner})") from None
    return options
