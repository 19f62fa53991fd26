"""The persistence hook: what the runtime asks of a journal.

A store makes delivery at-least-once across a crash. The runtime calls it at
four moments: when ``publish`` accepts an event (``append``), just before a
delivery attempt runs (``start_attempts``), when deliveries finish
(``complete`` or ``dead_letter``), and at start-up (``pending``). Everything
is stored as orjson bytes (``Event.to_json``), never pickle. A receiver id
read back is only ever resolved through the live registry.

Idempotency keys: ``append`` of an event whose ``metadata["idempotency_key"]``
is set also records that key, in the same transaction, unless the key is
already recorded (the first event for a key stays; the append still succeeds).
Key records are independent of deliveries: ``prune`` and ``redeliver`` leave
them alone, and a pruned event's record stays (with a copy of the event) until
``forget_idempotency_keys`` removes it. Keys are any str, compared exactly.

Every method may be called concurrently from many tasks; a store is free to
batch concurrent calls into one transaction (group commit), but each call
returns only once what it recorded is as durable as the store promises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from .._event import Event
from .._policy import DeadLetter

__all__ = ["PendingDelivery", "Store", "StoreStats"]


@attrs.frozen(slots=True)
class PendingDelivery:
    """A delivery the journal holds as not finished: replayed on start."""

    event: Event
    receiver_id: str
    attempts: int
    """Attempts recorded as started before the crash (0: never started)."""


@attrs.frozen(slots=True)
class StoreStats:
    """What a journal holds: events, and deliveries by state."""

    events: int
    pending: int
    done: int
    dead: int
    idempotency_keys: int = 0
    """Key records held (see ``Store.recent_idempotency_keys``)."""


@runtime_checkable
class Store(Protocol):
    """A journal of events and their deliveries. See ``aevents.testing.StoreConformance``."""

    async def open(self) -> None:
        """Create or migrate the journal; raise ``StoreError`` if it is unusable or in use."""

    async def close(self) -> None:
        """Flush and release the journal. Idempotent."""

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        """Durably record ``event`` and one pending delivery per receiver id (may be none)."""

    async def start_attempts(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        """Record ``(event_id, receiver_id, attempt)`` as started, before the receivers run."""

    async def complete(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Mark ``(event_id, receiver_id)`` deliveries done."""

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Mark these deliveries dead, keeping each letter's details."""

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters pending again with no attempts (all when ``None``); return how many."""

    def pending(self) -> AsyncIterator[PendingDelivery]:
        """Stream every pending delivery in publish order, in bounded batches.

        A snapshot taken when iteration begins: events appended after that are
        never yielded, so a runtime can replay while it publishes.
        """

    async def prune(self, *, older_than: datetime | None = None) -> int:
        """Delete finished deliveries (and events with nothing left) published before
        ``older_than`` (all finished ones when ``None``); return how many deliveries went."""

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """Events appended with ``metadata["idempotency_key"]`` whose ``occurred_at >= since``:
        the newest ``limit``, returned oldest first (ties in append order). One per key."""

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``; return how many."""
