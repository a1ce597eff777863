"""Typed records and their saved form: dataclasses in memory, plain data (YAML, JSON) on disk.

`to_plain` turns a record into dicts, lists and scalars; `from_plain` builds it back, checking every key and type
against the dataclass's fields, so data that does not fit the schema is refused with the dotted key that does not
fit. The run config (`distill.config`), `metrics.json` (`distillery.metrics`) and `specialists/subsets.json` are
all written and read this way: one schema per record, defined once, as its dataclass.

Allowed values are `Literal` types on the fields: the config validation and the modules that use the values read
them from the same alias (`typing.get_args`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal

from distill.errors import DistilleryError

_ASCII_INTEGER = re.compile(r"-?[0-9]+")  # str.isdigit() also accepts superscripts and other digits int() refuses


def to_plain(record: Any) -> Any:
    """The record as plain data (nested dicts, lists and scalars), ready for JSON or YAML."""
    return dataclasses.asdict(record)


def from_plain(cls: type, data: Any, *, label: str = "key", error: type[DistilleryError] = DistilleryError,
               where: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking every key and type; `error(message)` names the dotted key
    as `{label} 'a.b.c'` (label: "config key", "metrics.json key"...)."""
    return _Reader(label, error).record(cls, data, where)


def check_value(hint: Any, value: Any, name: str, *, label: str = "key",
                error: type[DistilleryError] = DistilleryError) -> Any:
    """`value` checked against the type `hint` as `from_plain` checks a field (error names `{label} 'name'`)."""
    return _Reader(label, error).value(hint, value, name)


def describe_choices(choices: tuple) -> str:
    """'a or b', 'a, b or c': how messages list the allowed values of a Literal."""
    names = [str(choice) for choice in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_choice(value: Any, choices: Any, name: str) -> None:
    """Refuse (ValueError) a `value` outside the Literal alias `choices`: for functions called without a config."""
    allowed = typing.get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be {describe_choices(allowed)}, got {value!r}")


class _Reader:
    def __init__(self, label: str, error: type[DistilleryError]):
        self.label, self.error = label, error

    def record(self, cls: type, data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            raise self.error(f"{where or 'the top level'} must be a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            key = f"{where}.{unknown[0]}" if where else str(unknown[0])
            raise self.error(f"unknown {self.label} '{key}' (known: {', '.join(sorted(names))})")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise self.error(f"{self.label} '{f'{where}.{missing[0]}' if where else missing[0]}' is missing")
        return cls(**{name: self.value(hints[name], value, f"{where}.{name}" if where else name)
                      for name, value in data.items()})

    def value(self, hint: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint):
            return self.record(hint, value, key)
        if origin in (typing.Union, types.UnionType):
            options = typing.get_args(hint)
            if value is None and type(None) in options:
                return None
            (inner,) = [option for option in options if option is not type(None)]
            return self.value(inner, value, key)
        if origin is Literal:
            choices = typing.get_args(hint)
            if value not in choices:
                raise self.error(f"{key} must be {describe_choices(choices)}, got {value!r}")
            return value
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise self.error(f"{self.label} '{key}' must be a list, got {value!r}")
            (item,) = typing.get_args(hint)
            return [self.value(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise self.error(f"{self.label} '{key}' must be a mapping, got {value!r}")
            key_type, value_type = typing.get_args(hint)
            return {self.value(key_type, k, f"{key}.{k}"): self.value(value_type, v, f"{key}.{k}")
                    for k, v in value.items()}
        return self.scalar(hint, value, key)

    def scalar(self, hint: Any, value: Any, key: str) -> Any:
        if hint is Any:
            return value
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is int and isinstance(value, str) and _ASCII_INTEGER.fullmatch(value):
            return int(value)  # mapping keys such as class ids arrive as strings from --set and from JSON
        if hint is float and isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; users mean a number
            except ValueError:
                pass
        if (hint in (int, float) and isinstance(value, bool)) or not isinstance(value, hint):  # bool is an int
            raise self.error(f"{self.label} '{key}' must be {hint.__name__}, got {value!r}")
        return value
