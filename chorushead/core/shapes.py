"""Typed parts of a manifest record: each stage declares its ``Outputs`` and ``Metrics`` as a dataclass
deriving from :class:`Shape`.

On disk a record's ``outputs``/``metrics`` stay plain JSON objects. The runner checks what a stage
returns against its shapes before appending (missing field, unknown field, wrong type -> the stage
fails at once, naming itself), readers get typed fields back with ``crop.Outputs.of(record)``, and
``python -m chorushead.schemas`` turns the same dataclasses into the JSON Schemas in ``manifests/``.

Supported field types (what JSON holds): str, int, float, bool, Any, ``X | None``, ``list[X]``,
``dict[str, X]``. A field with a default may be absent (older records, skipped items).
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, TypeVar

from chorushead.core.manifest import Record

T = TypeVar("T", bound="Shape")


class ShapeError(ValueError):
    """A record part does not match its declared dataclass."""


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def type_error(value: Any, tp: Any, where: str) -> str | None:
    """Why ``value`` (a JSON value) is not of type ``tp``, or None when it is."""
    if tp is Any:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errs = [type_error(value, a, where) for a in args]
        return None if any(e is None for e in errs) else f"{where}: {value!r} is not {_union_name(tp)}"
    if tp is type(None):
        return None if value is None else f"{where}: expected null, got {value!r}"
    if tp is bool:
        return None if isinstance(value, bool) else f"{where}: expected bool, got {value!r}"
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{where}: expected int, got {value!r}"
    if tp is float:     # JSON does not keep 1.0 apart from 1
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{where}: expected float, got {value!r}"
    if tp is str:
        return None if isinstance(value, str) else f"{where}: expected str, got {value!r}"
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return f"{where}: expected a list, got {value!r}"
        for i, v in enumerate(value):
            if (e := type_error(v, args[0] if args else Any, f"{where}[{i}]")) is not None:
                return e
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"{where}: expected an object, got {value!r}"
        for k, v in value.items():
            if (e := type_error(v, args[1] if args else Any, f"{where}.{k}")) is not None:
                return e
        return None
    raise TypeError(f"{where}: unsupported field type {tp!r} in a record shape")


def _union_name(tp: Any) -> str:
    # written out in full: typing's Optional[int] has a __name__, but a bare "Optional" says not of what
    return str(tp).replace("typing.", "")


class _Absent:
    """Stands for a required field a stored record lacks; reading it raises (see Shape.from_dict)."""
    __slots__ = ("stage", "part")

    def __init__(self, stage: str, part: str):
        self.stage, self.part = stage, part


class Shape:
    """Base of every stage's ``Outputs``/``Metrics`` dataclass."""

    part: ClassVar[str] = ""          # "outputs" | "metrics", for messages and schemas

    @classmethod
    def check(cls, d: dict[str, Any], stage: str) -> None:
        """Raise :class:`ShapeError` (naming ``stage``) unless ``d`` has exactly this shape."""
        fields = _fields(cls)
        where = f"stage {stage}: {cls.part or cls.__name__}"
        if not isinstance(d, dict):
            raise ShapeError(f"{where} must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(fields))
        missing = sorted(n for n, f in fields.items() if _required(f) and n not in d)
        if unknown or missing:
            raise ShapeError(f"{where} do not match {cls.__qualname__}: "
                             f"unknown {unknown or 'none'}, missing {missing or 'none'}")
        cls._check_types(d, where)

    @classmethod
    def _check_types(cls, d: dict[str, Any], where: str) -> None:
        hints = _hints(cls)
        for name, value in d.items():
            if (e := type_error(value, hints[name], f"{where}.{name}")) is not None:
                raise ShapeError(e)

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any], stage: str) -> T:
        """Typed view of a stored part. Unknown keys (from newer code) are ignored and wrong types raise
        at once; a required field the record lacks (older code, a hand-made record) raises only when read."""
        fields = _fields(cls)
        known = {k: v for k, v in d.items() if k in fields}
        cls._check_types(known, f"stage {stage}: {cls.part or cls.__name__}")
        absent = {n: _Absent(stage, cls.part) for n, f in fields.items() if _required(f) and n not in known}
        return cls(**known, **absent)

    def __getattribute__(self, name: str) -> Any:
        v = object.__getattribute__(self, name)
        if type(v) is _Absent:
            raise ShapeError(f"stage {v.stage}: the record has no {v.part}.{name} (written by an older "
                             f"version?); rerun stage {v.stage}")
        return v

    def to_dict(self) -> dict[str, Any]:
        """The JSON object; an optional field left at None is omitted (as older records have it)."""
        return {f.name: v for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if (v := object.__getattribute__(self, f.name)) is not None or f.default is not None}


class Outputs(Shape):
    part = "outputs"

    @classmethod
    def of(cls: type[T], record: Record) -> T:
        return cls.from_dict(record.outputs, record.stage)


class Metrics(Shape):
    part = "metrics"

    @classmethod
    def of(cls: type[T], record: Record) -> T:
        return cls.from_dict(record.metrics, record.stage)


# ----------------------------------------------------------------------------- JSON Schema
def json_type(tp: Any) -> dict[str, Any]:
    """JSON Schema of one field type (the inverse of :func:`type_error`)."""
    if tp is Any:
        return {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [json_type(a) for a in args]}
    simple = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    if origin is list:
        return {"type": "array", "items": json_type(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_type(args[1]) if args else {}}
    raise TypeError(f"unsupported field type {tp!r} in a record shape")


def shape_schema(cls: type[Shape]) -> dict[str, Any]:
    fields, hints = _fields(cls), _hints(cls)
    return {"type": "object", "required": [n for n, f in fields.items() if _required(f)],
            "properties": {n: json_type(hints[n]) for n in fields}, "additionalProperties": False}
