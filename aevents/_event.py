"""The event: a frozen value shared by every receiver, and its orjson form."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs
import orjson

from ._exceptions import PayloadError

__all__ = ["NO_METADATA", "Event", "new_event_id"]

NO_METADATA: Mapping[str, str] = MappingProxyType({})
"""The metadata of events published without any: shared, read-only, one allocation less."""

_counter = itertools.count()
_node = int.from_bytes(os.urandom(3), "big")


def _reseed_node() -> None:  # a forked child must not mint its parent's ids
    global _node
    _node = int.from_bytes(os.urandom(3), "big")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_node)


def new_event_id() -> str:
    """A unique id that sorts by creation time: 28 hex digits.

    The nanosecond wall clock, then a per-process counter, then 24 random bits
    drawn once per process. About 0.2 µs, against 2 µs for ``uuid4()``.
    """
    value = (time.time_ns() << 48) | ((next(_counter) & 0xFFFFFF) << 24) | _node
    return value.to_bytes(14, "big").hex()


@attrs.frozen(slots=True, weakref_slot=False)
class Event:
    """One published event, as every receiver sees it.

    ``payload`` is what came back from an orjson round trip of what was
    published, so a receiver sees the same values on first delivery and on a
    replay from a journal. It is shared by every receiver of the event: treat
    it as read-only. Events hash and compare by value; the hash uses ``id`` and
    ``name`` only.
    """

    id: str
    name: str
    payload: Mapping[str, Any] = attrs.field(hash=False)
    occurred_at: datetime = attrs.field(hash=False)
    metadata: Mapping[str, str] = attrs.field(hash=False, factory=dict)
    key: str | None = attrs.field(default=None, hash=False)
    """The ordering key it was published with: for each receiver, events with the
    same key are delivered one at a time, in publish order. None: no ordering."""

    @property
    def correlation_id(self) -> str:
        """The id shared by a whole chain of events: the root's id unless one was given."""
        return self.metadata.get("correlation_id", self.id)

    @property
    def causation_id(self) -> str | None:
        """The id of the event whose receiver published this one, if any."""
        return self.metadata.get("causation_id")

    def to_json(self) -> bytes:
        """The event as orjson bytes; ``Event.from_json`` reads it back unchanged."""
        raw = {
            "id": self.id,
            "name": self.name,
            "payload": self.payload,
            "occurred_at": self.occurred_at,
            "metadata": dict(self.metadata),
        }
        if self.key is not None:
            raw["key"] = self.key
        return orjson.dumps(raw)

    @classmethod
    def from_json(cls, data: bytes | str) -> Event:
        """Read an event written by ``to_json``; raise ``PayloadError`` if it is not one."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise PayloadError("?", "event", f"not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise PayloadError("?", "event", f"expected a JSON object, got {type(raw).__name__}")
        name = raw.get("name")
        label = name if isinstance(name, str) else "?"
        expected = {"id": str, "name": str, "payload": dict, "occurred_at": str, "metadata": dict}
        for key, kind in expected.items():
            if not isinstance(raw.get(key), kind):
                raise PayloadError(label, f"event[{key!r}]", f"expected {kind.__name__}")
        metadata = raw["metadata"]
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise PayloadError(label, f"metadata[{key!r}]", "expected str")
        ordering_key = raw.get("key")
        if ordering_key is not None and not isinstance(ordering_key, str):
            raise PayloadError(label, "event['key']", "expected str")
        try:
            occurred_at = datetime.fromisoformat(raw["occurred_at"])
        except ValueError:
            raise PayloadError(label, "event['occurred_at']", "not an ISO 8601 time") from None
        if occurred_at.tzinfo is None:
            raise PayloadError(label, "event['occurred_at']", "has no time zone")
        return _make_event(
            raw["id"],
            raw["name"],
            raw["payload"],
            occurred_at.astimezone(UTC),
            metadata,
            ordering_key,
        )


# The hot path builds events through slot descriptors: the same result as
# ``Event(...)`` without attrs' frozen ``__setattr__`` dance (about 30% faster).
_new = object.__new__
_set_id = Event.__dict__["id"].__set__
_set_name = Event.__dict__["name"].__set__
_set_payload = Event.__dict__["payload"].__set__
_set_occurred_at = Event.__dict__["occurred_at"].__set__
_set_metadata = Event.__dict__["metadata"].__set__
_set_key = Event.__dict__["key"].__set__


def _make_event(
    id: str,
    name: str,
    payload: Mapping[str, Any],
    occurred_at: datetime,
    metadata: Mapping[str, str],
    key: str | None = None,
) -> Event:
    event: Event = _new(Event)
    _set_id(event, id)
    _set_name(event, name)
    _set_payload(event, payload)
    _set_occurred_at(event, occurred_at)
    _set_metadata(event, metadata)
    _set_key(event, key)
    return event


_time_ns = time.time_ns
_now = datetime.now


def make_event(
    name: str, payload: Mapping[str, Any], metadata: Mapping[str, str], key: str | None = None
) -> Event:
    """Stamp a validated name, payload and metadata with a fresh id and time (the hot path)."""
    event: Event = _new(Event)
    _set_id(
        event,
        ((_time_ns() << 48) | ((next(_counter) & 0xFFFFFF) << 24) | _node)
        .to_bytes(14, "big")
        .hex(),
    )
    _set_name(event, name)
    _set_payload(event, payload)
    _set_occurred_at(event, _now(UTC))
    _set_metadata(event, metadata)
    _set_key(event, key)
    return event
