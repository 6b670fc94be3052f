"""How a batch of messages and its answers cross between a caller and a host.

A batch of `(entity_id, message)` is one `EntityHost.call` argument, and the answer
one `(ok, result|error)` per message, each pickled whole with the standard pickler:
Ray's cloudpickle, with its per-object hook, cost more CPU than the rest of a bet's
path in a host.

Messages and answers registered with `wire_type` go as their type's name and a bare tuple
of their fields. Pickling a NamedTuple as such runs Python code per object on both
sides (`__getnewargs__`, then the generated `__new__`), several times the cost of the
bare tuple, and a bet crosses processes six times. The types register as their
modules are imported, which importing `actors` does.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_PLAIN: dict[str, type] = {}

T = TypeVar("T", bound=type)


def wire_type(cls: T) -> T:
    """Class decorator for a NamedTuple whose fields are plain values: it crosses as
    its name and its fields, and is rebuilt without calling its constructor."""
    name = f"{cls.__module__}:{cls.__qualname__}"
    cls.wire_name = name  # type: ignore[attr-defined]
    _PLAIN[name] = cls
    return cls


def _flat(value: Any) -> tuple[Any, str | None]:
    name = getattr(type(value), "wire_name", None)
    return (value, None) if name is None else (tuple(value), name)


def _built(fields: Any, name: str | None) -> Any:
    if name is None:
        return fields
    cls: Any = _PLAIN[name]
    if len(fields) < len(cls._fields):  # from a sender older than a field: its default
        fields = (*fields, *(cls._field_defaults[f] for f in cls._fields[len(fields):]))
    return tuple.__new__(cls, fields)


def encode_batch(batch: list[tuple[str, Any]], dumps: Callable[..., bytes] = pickle.dumps) -> bytes:
    """`dumps` may be another pickler's (tests send types of their own by value)."""
    return dumps([(entity_id, *_flat(message)) for entity_id, message in batch], _PROTOCOL)


def decode_batch(payload: bytes) -> list[tuple[str, Any]]:
    return [(entity_id, _built(fields, name)) for entity_id, fields, name in pickle.loads(payload)]


def encode_outcomes(outcomes: list[tuple[bool, Any]]) -> bytes:
    return pickle.dumps([(ok, *_flat(value)) for ok, value in outcomes], _PROTOCOL)


def decode_outcomes(payload: bytes) -> list[tuple[bool, Any]]:
    return [(ok, _built(fields, name)) for ok, fields, name in pickle.loads(payload)]
