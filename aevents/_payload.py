"""Payload and metadata checks: what is accepted must survive an orjson round trip.

The fast path is one ``orjson.dumps`` and one ``orjson.loads``. Only when that
fails, or when the bytes contain ``null`` (which is how orjson silently writes
NaN and infinities), is the payload walked in Python to name the offending
key path, e.g. ``payload['order']['lines'][2]['price']``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

import orjson

from ._exceptions import PayloadError
from ._text import with_article

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_DEPTH",
    "encode_metadata",
    "encode_payload",
    "payload_json",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
"""Default cap on a payload's serialised size (1 MiB); ``EventRuntime(max_payload_bytes=...)``."""

MAX_DEPTH = 254
"""Deepest nesting orjson serialises; deeper (or self-referencing) payloads are refused."""

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_EMPTY = b"{}"
_loads = orjson.loads
_dumps = orjson.dumps


def _default(value: object) -> object:
    """Serialise mappings that are not dicts; refuse everything orjson does not know."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError


def encode_payload(event: str, payload: object, max_bytes: int) -> dict[str, Any]:
    """Return the payload as it comes back from its orjson round trip, or raise ``PayloadError``."""
    return _loads(payload_json(event, payload, max_bytes))  # type: ignore[no-any-return]


def payload_json(event: str, payload: object, max_bytes: int) -> bytes:
    """Return the payload's orjson bytes once it is known to round-trip exactly."""
    if payload is None:
        return _EMPTY
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise PayloadError(
            event, "payload", f"expected a mapping with str keys, got {type(payload).__name__}"
        )
    try:
        data = _dumps(payload, default=_default)
    except (TypeError, orjson.JSONEncodeError) as exc:
        path, problem = _find_problem(payload)
        if problem == _NO_PROBLEM:
            problem = f"orjson cannot serialise it: {exc}"
        raise PayloadError(event, path, problem) from None
    if len(data) > max_bytes:
        raise PayloadError(
            event, "payload", f"serialises to {len(data)} bytes; the limit is {max_bytes}"
        )
    if data.find(b"null") != -1:  # NaN or an infinity, or just None? (find beats `in` here)
        found = _find_problem(payload)
        if found[1] != _NO_PROBLEM:
            raise PayloadError(event, *found)
    return data


def encode_metadata(event: str, metadata: object) -> dict[str, str]:
    """Return a fresh ``dict[str, str]`` copy of ``metadata`` or raise ``PayloadError``."""
    if not isinstance(metadata, Mapping):
        raise PayloadError(
            event, "metadata", f"expected a mapping of str to str, got {type(metadata).__name__}"
        )
    copy: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            kind = with_article(type(key).__name__)
            raise PayloadError(event, "metadata", f"key {key!r} is {kind}, not str")
        if not isinstance(value, str):
            raise PayloadError(
                event, f"metadata[{key!r}]", f"expected str, got {type(value).__name__}"
            )
        copy[key] = value
    try:
        _dumps(copy)
    except orjson.JSONEncodeError:
        path, problem = _find_problem(copy, "metadata")
        raise PayloadError(event, path, problem) from None
    return copy


_NO_PROBLEM = "no problem found"


def _find_problem(payload: object, root: str = "payload") -> tuple[str, str]:
    """Walk a payload and return ``(key path, problem)`` for the first thing orjson refuses."""
    stack: list[tuple[object, str, int, tuple[int, ...]]] = [(payload, root, 0, ())]
    while stack:
        value, path, depth, parents = stack.pop()
        if depth >= MAX_DEPTH and (
            isinstance(value, Mapping | list | tuple) or dataclasses.is_dataclass(value)
        ):  # the payload itself is level 1, so a container at depth MAX_DEPTH is one too many
            return path, f"nesting is deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            if not _is_utf8(value):
                return path, "str contains a lone surrogate, which is not valid UTF-8"
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                return path, f"int {value} does not fit in 64 bits"
        elif isinstance(value, float):
            if type(value) is not float and not isinstance(value, enum.Enum):
                return path, _refused_subclass(value, "float")
            if not math.isfinite(value):
                return path, f"float {value!r} is not JSON (orjson would write null)"
        elif isinstance(value, Mapping | list | tuple):
            if isinstance(value, tuple) and type(value) is not tuple:  # a namedtuple...
                return path, _refused_subclass(value, "tuple")
            if id(value) in parents:
                return path, "refers to itself (a reference cycle)"
            inner = (*parents, id(value))
            children: list[tuple[object, str, int, tuple[int, ...]]] = []
            if isinstance(value, Mapping):
                for key, item in value.items():
                    if type(key) is not str:  # orjson refuses str subclasses as keys
                        return path, f"key {key!r} is {with_article(type(key).__name__)}, not str"
                    if not _is_utf8(key):
                        return path, f"key {key!r} contains a lone surrogate"
                    children.append((item, f"{path}[{key!r}]", depth + 1, inner))
            else:
                children.extend(
                    (item, f"{path}[{index}]", depth + 1, inner) for index, item in enumerate(value)
                )
            stack.extend(reversed(children))
        elif isinstance(value, enum.Enum):
            stack.append((value.value, path, depth, parents))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = [
                (getattr(value, field.name), f"{path}.{field.name}", depth + 1, parents)
                for field in dataclasses.fields(value)
            ]
            stack.extend(reversed(fields))
        elif type(value).__module__ in ("datetime", "uuid"):
            try:  # orjson writes most of these, but not e.g. timedelta or an aware time
                _dumps(value)
            except orjson.JSONEncodeError as exc:
                return path, f"orjson cannot serialise it: {exc}"
        else:
            return path, f"value of type {type(value).__qualname__!r} is not JSON-serialisable"
    return root, _NO_PROBLEM


def _refused_subclass(value: object, base: str) -> str:
    """orjson writes subclasses of str, int, list and dict, but not of float or tuple."""
    return (
        f"value of type {type(value).__qualname__!r} is not JSON-serialisable: orjson takes "
        f"a {base} subclass only as a plain {base}, e.g. {base}(value)"
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
