"""MemoryStore: the reference store, plain dicts that live as long as the object.

It is the verified fake of both store protocols: ``aevents.testing.StoreConformance``
runs the same tests on it as on ``SQLiteStore``, and ``LeasedStoreConformance``
the same as on every shared store, so a test that passes with it means the same
thing with a real one. Events are kept as ``Event.to_json`` bytes and decoded
on the way out, exactly as a persistent store would. Both protocols work on one
set of events and deliveries: what ``append`` records can be claimed, and a
leased delivery is ``pending``.

One lock guards everything and is never held across an ``await``, so runtimes
on several event loops and threads of one process can share a store.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import attrs
from anyio.lowlevel import checkpoint

from .._event import Event
from .._exceptions import StoreError
from .._idempotency import IDEMPOTENCY_KEY
from .._policy import DeadLetter
from ._protocol import (
    Backlog,
    Claim,
    Clock,
    Completed,
    Consumer,
    ConsumerId,
    DeadLettered,
    EventPage,
    Lease,
    Outcome,
    PendingDelivery,
    Released,
    Rescheduled,
    Route,
    StoreStats,
    system_clock,
)

__all__ = ["MemoryStore"]

_PENDING, _DONE, _DEAD = 0, 1, 2
_BATCH = 256  # pending() yields to the scheduler once per this many events
_ALWAYS = datetime.min.replace(tzinfo=UTC)


@attrs.define(slots=True, eq=False)
class _Delivery:
    state: int = _PENDING
    attempts: int = 0
    due: datetime = _ALWAYS  # not claimable before this: a retry's time
    holder: ConsumerId | None = None  # the consumer leasing it, until lease_until
    lease_until: datetime = _ALWAYS
    holds_key: bool = False  # dead, and the later deliveries of its key wait for it
    started: bool = False  # the holder started its attempt: it counts in ``attempts``

    @property
    def attempt(self) -> int:
        """The number of the held claim's attempt (started or not)."""
        return self.attempts if self.started else self.attempts + 1


@attrs.define(slots=True, eq=False)
class _Entry:
    body: bytes
    name: str
    key: str | None
    occurred_at: datetime
    position: int  # in publish order, from 1 (``LeasedStore.events_after``)
    deliveries: dict[str, _Delivery] = attrs.Factory(dict)


@attrs.frozen(slots=True)
class _KeyRecord:
    body: bytes
    occurred_at: datetime


@attrs.define(slots=True, eq=False)
class _Registration:
    routes: tuple[Route, ...]
    receiver_ids: frozenset[str]
    registered_at: datetime
    last_seen: datetime
    expires_at: datetime


class MemoryStore:
    """A store held in memory: nothing survives the process, everything else is real.

    Useful in tests and wherever at-least-once across a crash is not needed but
    the store's bookkeeping (attempts, leases, dead letters, redelivery) is.
    Data stays with the object across ``close`` and ``open``. Several runtimes,
    on one event loop or on several threads, may share one: each ``open`` is
    matched by a ``close``, and the store is usable while any of them has it open.

    Args:
        clock: Where leases, retries and registrations read the time
            (``system_clock``, the UTC wall clock, by default).
    """

    path = ":memory:"

    def __init__(self, *, clock: Clock = system_clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[str, _Entry] = {}  # insertion order is publish order
        self._letters: dict[str, DeadLetter] = {}  # insertion order breaks failed_at ties
        self._keys: dict[str, _KeyRecord] = {}  # insertion order breaks occurred_at ties
        self._consumers: dict[ConsumerId, _Registration] = {}  # in registration order
        self._head = 0  # the position of the newest event added
        self._log: dict[int, _Entry] = {}  # the events held, by position
        self._positions: list[int] = []  # the keys of _log, ascending (for events_after)
        self._opened = 0

    def __repr__(self) -> str:
        return f"MemoryStore(events={len(self._events)}, open={self._opened > 0})"

    async def open(self) -> None:
        """Make the store usable (once more, when it is shared); a checkpoint, nothing else."""
        await checkpoint()
        with self._lock:
            self._opened += 1

    async def close(self) -> None:
        """Match one ``open``; the data stays with the object. Idempotent once closed."""
        await checkpoint()
        with self._lock:
            self._opened = max(self._opened - 1, 0)

    @contextmanager
    def _using(self) -> Iterator[None]:
        """Hold the lock, in a store that is open."""
        with self._lock:
            if not self._opened:
                raise StoreError(self.path, "is not open; call `await store.open()` first")
            yield

    def _each(self) -> Iterator[tuple[str, _Entry, str, _Delivery]]:
        """Every delivery, as ``(event id, entry, receiver id, delivery)``, in publish order."""
        for event_id, entry in self._events.items():
            for receiver_id, delivery in entry.deliveries.items():
                yield event_id, entry, receiver_id, delivery

    def _entry(self, event: Event) -> _Entry:
        """A new event's record, at the next position."""
        self._head += 1
        self._positions.append(self._head)
        entry = _Entry(event.to_json(), event.name, event.key, event.occurred_at, self._head)
        self._log[self._head] = entry
        return entry

    def _add(self, event: Event, receiver_ids: Sequence[str]) -> _Entry:
        entry = self._entry(event)
        for receiver_id in receiver_ids:
            entry.deliveries.setdefault(receiver_id, _Delivery())
        self._events[event.id] = entry
        key = event.metadata.get(IDEMPOTENCY_KEY)
        if key is not None and key not in self._keys:
            self._keys[key] = _KeyRecord(entry.body, event.occurred_at)
        return entry

    def _find(self, event_id: str, receiver_id: str) -> _Delivery | None:
        entry = self._events.get(event_id)
        return None if entry is None else entry.deliveries.get(receiver_id)

    def _record_letter(self, entry: _Entry, letter: DeadLetter) -> None:
        for letter_id, old in list(self._letters.items()):  # one letter per delivery
            if old.event.id == letter.event.id and old.receiver_id == letter.receiver_id:
                del self._letters[letter_id]
        self._letters.pop(letter.id, None)
        self._letters[letter.id] = attrs.evolve(letter, event=Event.from_json(entry.body))

    # -------------------------------------------------------------- the journal (Store)

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        """Record ``event`` with one pending delivery per distinct receiver id, and its
        idempotency key unless that key is already recorded."""
        await checkpoint()
        with self._using():
            if event.id in self._events:
                raise StoreError(self.path, f"event {event.id!r} is already in the journal")
            self._add(event, receiver_ids)

    async def start_attempts(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        """Raise each pending delivery's attempt count to the given attempt number."""
        await checkpoint()
        with self._using():
            for event_id, receiver_id, attempt in attempts:
                delivery = self._find(event_id, receiver_id)
                if delivery is not None and delivery.state == _PENDING:
                    delivery.attempts = max(delivery.attempts, attempt)

    async def complete(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Mark pending deliveries done; unknown or finished ones are ignored."""
        await checkpoint()
        with self._using():
            for event_id, receiver_id in deliveries:
                delivery = self._find(event_id, receiver_id)
                if delivery is not None and delivery.state == _PENDING:
                    delivery.state, delivery.holder = _DONE, None

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Mark deliveries dead (recording the event if it is unknown) and keep the letters."""
        await checkpoint()
        with self._using():
            for letter in letters:
                entry = self._events.get(letter.event.id)
                if entry is None:
                    entry = self._events[letter.event.id] = self._entry(letter.event)
                delivery = entry.deliveries.setdefault(letter.receiver_id, _Delivery())
                delivery.state, delivery.attempts = _DEAD, letter.attempts
                delivery.holder, delivery.holds_key = None, False
                self._record_letter(entry, letter)

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters ordered by ``failed_at``, then by when they were recorded."""
        await checkpoint()
        with self._using():
            letters = sorted(self._letters.values(), key=lambda letter: letter.failed_at)
        return letters if limit is None else letters[: max(limit, 0)]

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Turn dead letters back into ready deliveries with no attempts."""
        await checkpoint()
        with self._using():
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

    async def discard(self, letter_ids: Sequence[str]) -> int:
        """Delete dead letters; their deliveries count as done and hold no key."""
        await checkpoint()
        with self._using():
            count = 0
            for letter_id in dict.fromkeys(letter_ids):
                letter = self._letters.pop(letter_id, None)
                if letter is None:
                    continue
                delivery = self._events[letter.event.id].deliveries[letter.receiver_id]
                delivery.state, delivery.holds_key = _DONE, False
                count += 1
            return count

    async def pending(self) -> AsyncIterator[PendingDelivery]:
        """Pending deliveries (leased ones too) in publish order, then receiver id order.

        A snapshot taken when iteration begins (before its first checkpoint):
        events appended later are not yielded.
        """
        with self._using():
            snapshot = list(self._events.items())
        await checkpoint()
        for start in range(0, len(snapshot), _BATCH):
            if start:
                await checkpoint()
            with self._lock:
                page = self._pending_page(snapshot[start : start + _BATCH])
            for delivery in page:
                yield delivery

    def _pending_page(self, entries: list[tuple[str, _Entry]]) -> list[PendingDelivery]:
        page = []
        for event_id, entry in entries:
            if self._events.get(event_id) is not entry:
                continue
            event: Event | None = None
            for receiver_id in sorted(entry.deliveries):
                delivery = entry.deliveries[receiver_id]
                if delivery.state != _PENDING:
                    continue
                if event is None:
                    event = Event.from_json(entry.body)
                page.append(PendingDelivery(event, receiver_id, delivery.attempts))
        return page

    async def prune(self, *, older_than: datetime | None = None, limit: int | None = None) -> int:
        """Drop at most ``limit`` done deliveries of events that occurred before
        ``older_than``, oldest events first, then the events left with none."""
        await checkpoint()
        with self._using():
            room = -1 if limit is None else max(limit, 0)
            removed = 0
            for event_id, entry in list(self._events.items()):
                if removed == room:
                    break
                if older_than is not None and not entry.occurred_at < older_than:
                    continue
                for receiver_id, delivery in list(entry.deliveries.items()):
                    if delivery.state == _DONE and removed != room:
                        del entry.deliveries[receiver_id]
                        removed += 1
                if not entry.deliveries:
                    del self._events[event_id]
                    del self._log[entry.position]
            if len(self._positions) != len(self._log):
                self._positions = list(self._log)
            return removed

    async def stats(self) -> StoreStats:
        """Counts of events and of deliveries by state."""
        await checkpoint()
        with self._using():
            counts = [0, 0, 0]
            for _, _, _, delivery in self._each():
                counts[delivery.state] += 1
            return StoreStats(
                events=len(self._events),
                pending=counts[_PENDING],
                done=counts[_DONE],
                dead=counts[_DEAD],
                idempotency_keys=len(self._keys),
            )

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """The newest ``limit`` key records at or after ``since``, oldest first."""
        await checkpoint()
        with self._using():
            if limit <= 0:
                return []
            records = [record for record in self._keys.values() if record.occurred_at >= since]
        records.sort(key=lambda record: record.occurred_at)  # stable: ties stay in append order
        return [Event.from_json(record.body) for record in records[-limit:]]

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Drop the key records of events that occurred before ``before``."""
        await checkpoint()
        with self._using():
            old = [key for key, record in self._keys.items() if record.occurred_at < before]
            for key in old:
                del self._keys[key]
            return len(old)

    # ------------------------------------------------------- the shared queue (LeasedStore)

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        """Add each event with its ready deliveries, or the first event of its idempotency
        key in its place; a duplicate event id refuses the whole batch."""
        await checkpoint()
        with self._using():
            return self._publish(events)

    def _publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        """``publish`` under the lock: the events that stand."""
        standing: list[Event | None] = []  # None: this entry's event is added
        first_of: dict[str, Event] = {}  # keys first seen in this batch
        adding: set[str] = set()
        for event, _ in events:
            key = event.metadata.get(IDEMPOTENCY_KEY)
            record = None if key is None else self._keys.get(key)
            if record is not None:
                standing.append(Event.from_json(record.body))
            elif key is not None and key in first_of:
                standing.append(first_of[key])
            elif event.id in self._events or event.id in adding:
                raise StoreError(self.path, f"event {event.id!r} is already in the journal")
            else:
                standing.append(None)
                adding.add(event.id)
                if key is not None:
                    first_of[key] = event
        for (event, receiver_ids), first in zip(events, standing, strict=True):
            if first is None:
                self._add(event, receiver_ids)
        return [
            event if first is None else first
            for (event, _), first in zip(events, standing, strict=True)
        ]

    async def publish_and_claim(
        self,
        events: Sequence[tuple[Event, Sequence[str]]],
        consumer: ConsumerId,
        *,
        limit: int,
        lease: float,
        start: int,
    ) -> tuple[list[Event], list[Claim], list[Claim]]:
        """``publish``, then lease to ``consumer`` at once (if it is live) at most ``limit``
        of the deliveries added to its receivers that a claim would take, in publish order,
        starting the first ``start`` of them: ``(events, claims, claims started)``."""
        standing = await self.publish(events)
        with self._using():
            claims: list[Claim] = []
            started: list[Claim] = []
            now = self._clock()
            registration = self._live(consumer, now)
            if registration is None or limit <= 0:
                return standing, claims, started
            mine = registration.receiver_ids
            added = [
                (event, sorted(mine.intersection(receiver_ids)))
                for (event, receiver_ids), first in zip(events, standing, strict=True)
                if first is event
            ]
            lanes = {
                (receiver_id, event.key)
                for event, receiver_ids in added
                if event.key is not None
                for receiver_id in receiver_ids
            }
            busy = self._busy(lanes, {event.id for event, _ in added}) if lanes else set()
            until = now + timedelta(seconds=lease)
            for event, receiver_ids in added:
                entry = self._events.get(event.id)
                for receiver_id in receiver_ids:
                    if event.key is not None:
                        lane = (receiver_id, event.key)
                        if lane in busy:
                            continue
                        busy.add(lane)
                    delivery = None if entry is None else entry.deliveries.get(receiver_id)
                    if delivery is None or delivery.state != _PENDING or delivery.holder:
                        continue  # claimed (or settled) since it was added
                    if len(claims) == limit:
                        return standing, claims, started
                    delivery.holder, delivery.lease_until = consumer, until
                    claim = Claim(event, receiver_id, delivery.attempts + 1, False)
                    claims.append(claim)
                    if len(started) < start:
                        delivery.started = True
                        delivery.attempts += 1
                        started.append(claim)
            return standing, claims, started

    def _busy(self, lanes: set[tuple[str, str]], skip: set[str]) -> set[tuple[str, str]]:
        """Of ``lanes``, the (receiver id, key) with an unfinished delivery (pending, or dead
        and holding the key) of an event not in ``skip``."""
        busy = set()
        for event_id, entry in self._events.items():
            if entry.key is None or event_id in skip:
                continue
            for receiver_id, delivery in entry.deliveries.items():
                lane = (receiver_id, entry.key)
                if lane in lanes and (
                    delivery.state == _PENDING or (delivery.state == _DEAD and delivery.holds_key)
                ):
                    busy.add(lane)
        return busy

    async def event_position(self) -> int:
        """The position of the newest event added (0 before any)."""
        await checkpoint()
        with self._using():
            return self._head

    async def events_after(self, position: int, limit: int) -> EventPage:
        """At most ``limit`` events after ``position``; the pruned ones skipped, counted."""
        await checkpoint()
        with self._using():
            if limit <= 0:
                return EventPage((), position, 0)
            positions = self._positions
            start = bisect_right(positions, position)
            taken = positions[start : start + max(limit, 0)]
            # Read to the newest: the pruned positions up to it are skipped too.
            end = max(self._head, position) if len(taken) < limit else taken[-1]
            events = tuple(Event.from_json(self._log[each].body) for each in taken)
            return EventPage(events, end, end - position - len(taken))

    def _live(self, consumer: ConsumerId, now: datetime) -> _Registration | None:
        registration = self._consumers.get(consumer)
        if registration is not None and registration.expires_at <= now:
            del self._consumers[consumer]
            return None
        return registration

    async def register(self, consumer: ConsumerId, routes: Sequence[Route], *, ttl: float) -> None:
        """Record ``consumer`` and its routes, live for ``ttl`` seconds from now."""
        await checkpoint()
        with self._using():
            now = self._clock()
            known = self._live(consumer, now)
            self._consumers[consumer] = _Registration(
                routes=tuple(routes),
                receiver_ids=frozenset(route.receiver_id for route in routes),
                registered_at=now if known is None else known.registered_at,
                last_seen=now,
                expires_at=now + timedelta(seconds=ttl),
            )

    async def heartbeat(self, consumer: ConsumerId, *, ttl: float) -> bool:
        """Keep a live ``consumer`` live ``ttl`` seconds from now; False if it is not live."""
        await checkpoint()
        with self._using():
            now = self._clock()
            registration = self._live(consumer, now)
            if registration is None:
                return False
            registration.last_seen, registration.expires_at = now, now + timedelta(seconds=ttl)
            return True

    async def unregister(self, consumer: ConsumerId) -> int:
        """Forget ``consumer``; what it holds is ready again with that attempt uncounted."""
        await checkpoint()
        with self._using():
            self._consumers.pop(consumer, None)
            released = 0
            for _, _, _, delivery in self._each():
                if delivery.state == _PENDING and delivery.holder == consumer:
                    _uncount(delivery)
                    released += 1
            return released

    async def claim(self, consumer: ConsumerId, limit: int, *, lease: float) -> list[Claim]:
        """Lease up to ``limit`` claimable deliveries of ``consumer``'s receivers, oldest first."""
        await checkpoint()
        with self._using():
            now = self._clock()
            registration = self._live(consumer, now)
            if registration is None:
                raise StoreError(
                    self.path,
                    f"consumer {str(consumer)!r} is not registered, or its registration "
                    "expired; register it again before claiming",
                )
            claims: list[Claim] = []
            if limit <= 0:
                return claims
            until = now + timedelta(seconds=lease)
            mine = registration.receiver_ids
            busy: set[tuple[str, str]] = set()  # (receiver id, key) with an earlier delivery
            for entry in self._events.values():
                event: Event | None = None
                for receiver_id in sorted(entry.deliveries):
                    delivery = entry.deliveries[receiver_id]
                    if delivery.state == _DONE or (
                        delivery.state == _DEAD and not delivery.holds_key
                    ):
                        continue
                    if entry.key is not None:
                        lane = (receiver_id, entry.key)
                        if lane in busy:
                            continue
                        busy.add(lane)
                    if (
                        delivery.state != _PENDING
                        or receiver_id not in mine
                        or delivery.due > now
                        or (delivery.holder is not None and delivery.lease_until > now)
                    ):
                        continue
                    expired = delivery.holder is not None and delivery.started
                    delivery.holder, delivery.lease_until = consumer, until
                    delivery.started = False
                    if event is None:
                        event = Event.from_json(entry.body)
                    claims.append(Claim(event, receiver_id, delivery.attempts + 1, expired))
                    if len(claims) == limit:
                        return claims
            return claims

    def _held(self, consumer: ConsumerId, claim: Claim) -> _Delivery | None:
        delivery = self._find(claim.event.id, claim.receiver_id)
        if (
            delivery is None
            or delivery.state != _PENDING
            or delivery.holder != consumer
            or delivery.attempt != claim.attempt
        ):
            return None
        return delivery

    async def start(self, consumer: ConsumerId, claims: Sequence[Claim]) -> list[Claim]:
        """Count the attempts of the claims ``consumer`` still holds; return the others."""
        await checkpoint()
        with self._using():
            lost = []
            for claim in claims:
                delivery = self._held(consumer, claim)
                if delivery is None:
                    lost.append(claim)
                elif not delivery.started:
                    delivery.started = True
                    delivery.attempts += 1
            return lost

    async def renew(
        self, consumer: ConsumerId, claims: Sequence[Claim], *, lease: float
    ) -> list[Claim]:
        """Extend the leases ``consumer`` still holds; return the others."""
        await checkpoint()
        with self._using():
            until = self._clock() + timedelta(seconds=lease)
            lost = []
            for claim in claims:
                delivery = self._held(consumer, claim)
                if delivery is None:
                    lost.append(claim)
                else:
                    delivery.lease_until = until
            return lost

    async def settle(self, consumer: ConsumerId, outcomes: Sequence[Outcome]) -> list[Claim]:
        """Complete, reschedule, dead-letter or release what ``consumer`` still holds."""
        await checkpoint()
        with self._using():
            now = self._clock()
            lost = []
            for outcome in outcomes:
                claim = outcome.claim
                delivery = self._held(consumer, claim)
                if delivery is None:
                    lost.append(claim)
                    continue
                if isinstance(outcome, Released):
                    _uncount(delivery)
                    continue
                delivery.holder, delivery.started = None, False
                if isinstance(outcome, Completed):
                    delivery.state = _DONE
                elif isinstance(outcome, Rescheduled):
                    delivery.due = now + timedelta(seconds=outcome.delay)
                else:
                    self._bury(claim, delivery, outcome)
            return lost

    def _bury(self, claim: Claim, delivery: _Delivery, outcome: DeadLettered) -> None:
        entry = self._events[claim.event.id]
        delivery.state = _DEAD
        delivery.holds_key = outcome.holds_key and entry.key is not None
        self._record_letter(entry, outcome.letter)

    async def consumers(self) -> list[Consumer]:
        """Live consumers in registration order, with how many deliveries each holds."""
        await checkpoint()
        with self._using():
            now = self._clock()
            for consumer in list(self._consumers):
                self._live(consumer, now)
            held = dict.fromkeys(self._consumers, 0)
            for _, _, _, delivery in self._each():
                if delivery.holder in held and delivery.state == _PENDING:
                    held[delivery.holder] += 1
            return [
                Consumer(
                    id=consumer,
                    routes=registration.routes,
                    registered_at=registration.registered_at,
                    last_seen=registration.last_seen,
                    expires_at=registration.expires_at,
                    leases=held[consumer],
                )
                for consumer, registration in self._consumers.items()
            ]

    async def leases(self) -> list[Lease]:
        """Held deliveries by expiry (then publish order), expired ones not yet taken too."""
        await checkpoint()
        with self._using():
            found = []
            for event_id, entry, receiver_id, delivery in self._each():
                if delivery.state == _PENDING and delivery.holder is not None:
                    found.append(
                        Lease(
                            event_id,
                            entry.name,
                            receiver_id,
                            entry.key,
                            delivery.attempt,
                            delivery.holder,
                            delivery.lease_until,
                        )
                    )
        found.sort(key=lambda lease: lease.expires_at)  # stable: ties stay in publish order
        return found

    async def backlog(self) -> list[Backlog]:
        """Per receiver id: ready, scheduled, leased and dead deliveries, and the oldest."""
        await checkpoint()
        with self._using():
            now = self._clock()
            counts: dict[str, list[int]] = {}  # receiver id -> [ready, scheduled, leased, dead]
            oldest: dict[str, datetime] = {}
            for _, entry, receiver_id, delivery in self._each():
                if delivery.state == _DONE:
                    continue
                row = counts.setdefault(receiver_id, [0, 0, 0, 0])
                if delivery.state == _DEAD:
                    row[3] += 1
                    continue
                row[2 if delivery.holder is not None else 1 if delivery.due > now else 0] += 1
                if receiver_id not in oldest or entry.occurred_at < oldest[receiver_id]:
                    oldest[receiver_id] = entry.occurred_at
        return [
            Backlog(receiver_id, ready, scheduled, leased, dead, oldest.get(receiver_id))
            for receiver_id, (ready, scheduled, leased, dead) in sorted(counts.items())
        ]

    async def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}``, the earliest per key."""
        await checkpoint()
        with self._using():
            held: dict[tuple[str, str], str] = {}
            for event_id, entry, receiver_id, delivery in self._each():
                if entry.key is not None and delivery.state == _DEAD and delivery.holds_key:
                    held.setdefault((receiver_id, entry.key), event_id)
            return held

    async def release_key(self, receiver_id: str, key: str) -> bool:
        """Stop the dead letters of ``(receiver_id, key)`` from holding it; they stay listed."""
        await checkpoint()
        with self._using():
            released = False
            for _, entry, receiver, delivery in self._each():
                if receiver == receiver_id and entry.key == key and delivery.holds_key:
                    delivery.holds_key, released = False, True
            return released


def _uncount(delivery: _Delivery) -> None:
    """Ready again, as if its holder had never claimed it (its attempt uncounted)."""
    if delivery.started:
        delivery.attempts -= 1
    delivery.holder, delivery.started = None, False
