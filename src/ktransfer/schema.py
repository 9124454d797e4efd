"""Validation of config dataclasses: unknown keys, Literal choices and basic types, with paths.

Errors name the dotted key (`train.mixed_precision`) and the valid keys or choices, so that a
typo in a YAML file or a `--set` override is fixed from the message alone.
"""

from __future__ import annotations

import dataclasses
import types
from collections import abc
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from ktransfer.errors import ConfigError, suggest, unknown_key

D = TypeVar("D")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return `value` (ints widened to float where a float is expected) or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = suggest(str(value), [str(c) for c in choices])
            raise ConfigError(
                f"{where}: invalid value {value!r}{hint}; valid choices: {', '.join(map(str, choices))}"
            )
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):  # before a dataclass member, which would take None as {}
            return None
        errors: list[ConfigError] = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return check_value(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where}: invalid value {value!r}; expected {' or '.join(_type_name(a) for a in get_args(tp))}"
        )
    if origin in (list, tuple, abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept what Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[D], data: Any, where: str) -> D:
    """Build dataclass `cls` from a mapping, checking every key and value."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key(where, str(key), list(fields))
        kwargs[key] = check_value(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from e


def validate(obj: Any, where: str) -> None:
    """Check the fields of a dataclass instance built directly in Python (no dict involved)."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_value(getattr(obj, f.name), hints[f.name], f"{where}.{f.name}")


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists, for YAML and JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
