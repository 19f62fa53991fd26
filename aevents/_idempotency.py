"""Idempotent publishing: the key check, and the bounded window of keys already seen.

``publish(..., idempotency_key=key)`` accepts the first event for a key and
answers any repeat within the window with that first event. The runtime keeps
the window here, in memory; with a store it also records each key durably in
the same transaction as its event (``Store.append``) and seeds the window from
``Store.recent_idempotency_keys`` on start, so a retry after a restart is still
a no-op. An event carries its key in ``metadata["idempotency_key"]``.

Pure and synchronous: no runtime, no store, no clock of its own.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final

from ._event import Event
from ._exceptions import ConfigurationError, PayloadError

__all__ = [
    "IDEMPOTENCY_KEY",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "IdempotencyWindow",
    "claims_key",
    "validate_idempotency_key",
]

IDEMPOTENCY_KEY: Final = "idempotency_key"
"""The metadata entry that carries an event's idempotency key."""
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 200
"""Longest key accepted, in characters: room for a prefix and a UUID or two, not for a payload."""

# C0 and C1 controls (they corrupt logs and terminals) and lone surrogates (not encodable).
_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def claims_key(metadata: object) -> bool:
    """Whether caller-given metadata sets the entry ``idempotency_key=`` owns.

    Anything that is not a mapping is left for ``encode_metadata`` to refuse.
    """
    return (type(metadata) is dict or isinstance(metadata, Mapping)) and IDEMPOTENCY_KEY in metadata


def validate_idempotency_key(name: str, key: object) -> str:
    """Return ``key`` as a plain ``str``, or raise ``PayloadError`` naming event ``name``.

    A key is a non-empty str of at most 200 characters without control
    characters. Anything else printable is fine (compared exactly, no
    normalisation): ``"order-7-paid"``, ``"commande-7-payée"``, ``"注文7"``.
    """
    if not isinstance(key, str):
        raise PayloadError(name, IDEMPOTENCY_KEY, f"expected a str, got {type(key).__name__}")
    if type(key) is not str:  # a str subclass (StrEnum...): keep the characters, not the type
        key = str.__str__(key)
    if not key:
        raise PayloadError(name, IDEMPOTENCY_KEY, "must not be empty")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise PayloadError(
            name,
            IDEMPOTENCY_KEY,
            f"is {len(key)} characters long; the limit is {MAX_IDEMPOTENCY_KEY_LENGTH}",
        )
    found = _FORBIDDEN.search(key)
    if found is not None:
        what = "a lone surrogate" if found.group() >= "\ud800" else "a control character"
        raise PayloadError(
            name,
            IDEMPOTENCY_KEY,
            f"contains {what} ({found.group()!r} at index {found.start()})",
        )
    return key


class IdempotencyWindow:
    """The keys published within the last ``window`` seconds, at most ``max_keys`` of them.

    A key expires ``window`` seconds after its event's ``occurred_at``. Beyond
    ``max_keys`` the oldest key added is forgotten first, so memory stays
    bounded whatever the publish rate; a repeat of a forgotten key is published
    again. Every operation is amortised O(1) (``seed`` is O(1) per event).
    """

    __slots__ = ("_entries", "_window", "max_keys", "window")

    def __init__(self, window: float, max_keys: int) -> None:
        if (
            isinstance(window, bool)
            or not isinstance(window, int | float)
            or not 0 < window < math.inf
        ):
            raise ConfigurationError(
                "idempotency window",
                f"window must be a finite number of seconds > 0, got {window!r}",
            )
        if type(max_keys) is not int or max_keys < 1:
            raise ConfigurationError(
                "idempotency window", f"max_keys must be an int >= 1, got {max_keys!r}"
            )
        self.window = float(window)
        self.max_keys = max_keys
        self._window = timedelta(seconds=self.window)
        # key -> (expires at, event), in the order added: the oldest is evicted first.
        self._entries: OrderedDict[str, tuple[datetime, Event]] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"IdempotencyWindow(window={self.window:g}, max_keys={self.max_keys}, "
            f"keys={len(self._entries)})"
        )

    def __len__(self) -> int:
        """How many keys are held (some may have expired and not been dropped yet)."""
        return len(self._entries)

    def get(self, key: str, now: datetime) -> Event | None:
        """The event first published with ``key``, or None when absent or expired at ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, event = entry
        if now >= expires:
            del self._entries[key]
            return None
        return event

    def add(self, key: str, event: Event) -> None:
        """Remember ``event`` as the answer for ``key`` until ``event.occurred_at + window``.

        Replaces an entry already held for ``key`` (the caller found it expired,
        or is seeding). Drops the keys at the front that have expired by the
        event's time, then the oldest beyond ``max_keys``.
        """
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (event.occurred_at + self._window, event)
        now = event.occurred_at
        while len(entries) > self.max_keys:
            entries.popitem(last=False)
        while True:  # stops at the first key still live: O(1) amortised, each key goes once
            oldest = next(iter(entries))
            if oldest == key or entries[oldest][0] > now:
                break
            del entries[oldest]

    def discard(self, key: str) -> None:
        """Forget ``key`` (a publish that reserved it failed before it was accepted)."""
        self._entries.pop(key, None)

    def seed(self, events: Iterable[Event]) -> None:
        """Add each event that carries a key, oldest first (``Store.recent_idempotency_keys``).

        An event without a str key in its metadata is skipped.
        """
        for event in events:
            key = event.metadata.get(IDEMPOTENCY_KEY)
            if isinstance(key, str):
                self.add(key, event)
