"""A dataclass built from a YAML mapping, field by field by its type hints: unknown keys and
values of the wrong type are refused with an error naming the dotted key (`where(key, what)`
makes it). The config's sections are built with it."""

from __future__ import annotations

import dataclasses
import types
import typing


def build(cls, raw, prefix, where):
    if not isinstance(raw, dict):
        raise where(prefix.rstrip(".") or "<top>", "expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            known = ", ".join(sorted(names))
            raise where(f"{prefix}{key}", f"unknown key (expected one of: {known})")
    kwargs = {}
    for name in names & raw.keys():
        kwargs[name] = coerce(raw[name], hints[name], f"{prefix}{name}", where)
    return cls(**kwargs)


def coerce(value, hint, key, where):
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key + ".", where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key, where)
    if origin is list:
        if not isinstance(value, list):
            raise where(key, f"expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise where(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 and inf as strings
            try:
                return float(value)
            except ValueError:
                raise where(key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise where(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint}")  # a bug in this module, not user input
