"""MemoryStore: the reference journal, plain dicts that live as long as the object.

It is the verified fake of the store protocol: ``aevents.testing.StoreConformance``
runs the same tests on it as on ``SQLiteStore``, so a test that passes with it
means the same thing with a real journal. Events are kept as ``Event.to_json``
bytes and decoded on the way out, exactly as a persistent store would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import attrs
from anyio.lowlevel import checkpoint

from .._event import Event
from .._exceptions import StoreError
from .._idempotency import IDEMPOTENCY_KEY
from .._policy import DeadLetter
from ._protocol import PendingDelivery, StoreStats

__all__ = ["MemoryStore"]

_PENDING, _DONE, _DEAD = 0, 1, 2
_BATCH = 256  # pending() yields to the scheduler once per this many events


@attrs.define(slots=True, eq=False)
class _Delivery:
    state: int = _PENDING
    attempts: int = 0


@attrs.define(slots=True, eq=False)
class _Entry:
    body: bytes
    occurred_at: datetime
    deliveries: dict[str, _Delivery] = attrs.Factory(dict)


@attrs.frozen(slots=True)
class _KeyRecord:
    body: bytes
    occurred_at: datetime


class MemoryStore:
    """A journal held in memory: nothing survives the process, everything else is real.

    Useful in tests and wherever at-least-once across a crash is not needed but
    the store's bookkeeping (attempts, dead letters, redelivery) is. Data stays
    with the object across ``close`` and ``open``. Use it from one event loop.
    """

    path = ":memory:"

    def __init__(self) -> None:
        self._events: dict[str, _Entry] = {}  # insertion order is publish order
        self._letters: dict[str, DeadLetter] = {}  # insertion order breaks failed_at ties
        self._keys: dict[str, _KeyRecord] = {}  # insertion order breaks occurred_at ties
        self._open = False

    def __repr__(self) -> str:
        return f"MemoryStore(events={len(self._events)}, open={self._open})"

    async def open(self) -> None:
        """Make the store usable; a checkpoint, nothing else."""
        await checkpoint()
        self._open = True

    async def close(self) -> None:
        """Stop accepting calls; the data stays with the object. Idempotent."""
        await checkpoint()
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(self.path, "is not open; call `await store.open()` first")

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        """Record ``event`` with one pending delivery per distinct receiver id, and its
        idempotency key unless that key is already recorded."""
        await checkpoint()
        self._check_open()
        if event.id in self._events:
            raise StoreError(self.path, f"event {event.id!r} is already in the journal")
        entry = _Entry(event.to_json(), event.occurred_at)
        for receiver_id in receiver_ids:
            entry.deliveries.setdefault(receiver_id, _Delivery())
        self._events[event.id] = entry
        key = event.metadata.get(IDEMPOTENCY_KEY)
        if key is not None and key not in self._keys:
            self._keys[key] = _KeyRecord(entry.body, event.occurred_at)

    def _find(self, event_id: str, receiver_id: str) -> _Delivery | None:
        entry = self._events.get(event_id)
        return None if entry is None else entry.deliveries.get(receiver_id)

    async def start_attempts(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        """Raise each pending delivery's attempt count to the given attempt number."""
        await checkpoint()
        self._check_open()
        for event_id, receiver_id, attempt in attempts:
            delivery = self._find(event_id, receiver_id)
            if delivery is not None and delivery.state == _PENDING:
                delivery.attempts = max(delivery.attempts, attempt)

    async def complete(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Mark pending deliveries done; unknown or finished ones are ignored."""
        await checkpoint()
        self._check_open()
        for event_id, receiver_id in deliveries:
            delivery = self._find(event_id, receiver_id)
            if delivery is not None and delivery.state == _PENDING:
                delivery.state = _DONE

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Mark deliveries dead (recording the event if it is unknown) and keep the letters."""
        await checkpoint()
        self._check_open()
        for letter in letters:
            entry = self._events.get(letter.event.id)
            if entry is None:
                entry = self._events[letter.event.id] = _Entry(
                    letter.event.to_json(), letter.event.occurred_at
                )
            delivery = entry.deliveries.setdefault(letter.receiver_id, _Delivery())
            delivery.state, delivery.attempts = _DEAD, letter.attempts
            for letter_id, old in list(self._letters.items()):  # one letter per delivery
                if old.event.id == letter.event.id and old.receiver_id == letter.receiver_id:
                    del self._letters[letter_id]
            self._letters.pop(letter.id, None)
            self._letters[letter.id] = attrs.evolve(letter, event=Event.from_json(entry.body))

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters ordered by ``failed_at``, then by when they were recorded."""
        await checkpoint()
        self._check_open()
        letters = sorted(self._letters.values(), key=lambda letter: letter.failed_at)
        return letters if limit is None else letters[: max(limit, 0)]

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Turn dead letters back into pending deliveries with no attempts."""
        await checkpoint()
        self._check_open()
        chosen = list(self._letters) if letter_ids is None else list(dict.fromkeys(letter_ids))
        count = 0
        for letter_id in chosen:
            letter = self._letters.pop(letter_id, None)
            if letter is None:
                continue
            entry = self._events[letter.event.id]
            entry.deliveries[letter.receiver_id] = _Delivery()
            count += 1
        return count

    async def pending(self) -> AsyncIterator[PendingDelivery]:
        """Pending deliveries in publish order, then receiver id order.

        A snapshot taken when iteration begins (before its first checkpoint):
        events appended later are not yielded.
        """
        self._check_open()
        snapshot = list(self._events.items())
        await checkpoint()
        for index, (event_id, entry) in enumerate(snapshot):
            if index % _BATCH == _BATCH - 1:
                await checkpoint()
            if self._events.get(event_id) is not entry:
                continue
            event: Event | None = None
            for receiver_id in sorted(entry.deliveries):
                delivery = entry.deliveries.get(receiver_id)
                if delivery is None or delivery.state != _PENDING:
                    continue
                if event is None:
                    event = Event.from_json(entry.body)
                yield PendingDelivery(event, receiver_id, delivery.attempts)

    async def prune(self, *, older_than: datetime | None = None) -> int:
        """Drop done deliveries of events that occurred before ``older_than``, then empty events."""
        await checkpoint()
        self._check_open()
        removed = 0
        for event_id, entry in list(self._events.items()):
            if older_than is not None and not entry.occurred_at < older_than:
                continue
            for receiver_id, delivery in list(entry.deliveries.items()):
                if delivery.state == _DONE:
                    del entry.deliveries[receiver_id]
                    removed += 1
            if not entry.deliveries:
                del self._events[event_id]
        return removed

    async def stats(self) -> StoreStats:
        """Counts of events and of deliveries by state."""
        await checkpoint()
        self._check_open()
        counts = [0, 0, 0]
        for entry in self._events.values():
            for delivery in entry.deliveries.values():
                counts[delivery.state] += 1
        return StoreStats(
            events=len(self._events),
            pending=counts[0],
            done=counts[1],
            dead=counts[2],
            idempotency_keys=len(self._keys),
        )

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """The newest ``limit`` key records at or after ``since``, oldest first."""
        await checkpoint()
        self._check_open()
        if limit <= 0:
            return []
        records = [record for record in self._keys.values() if record.occurred_at >= since]
        records.sort(key=lambda record: record.occurred_at)  # stable: ties stay in append order
        return [Event.from_json(record.body) for record in records[-limit:]]

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Drop the key records of events that occurred before ``before``."""
        await checkpoint()
        self._check_open()
        old = [key for key, record in self._keys.items() if record.occurred_at < before]
        for key in old:
            del self._keys[key]
        return len(old)
