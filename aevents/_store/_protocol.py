"""The persistence hooks: what the runtime asks of a journal, and of a shared queue.

``Store`` is the journal one runtime owns. ``LeasedStore`` (below it) is the
queue of (event, receiver) deliveries that any number of runtimes, in any
number of processes, share through leases.

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

import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeAlias, TypeGuard, runtime_checkable

import attrs

from .._event import Event
from .._names import compile_pattern
from .._policy import DeadLetter

__all__ = [
    "Backlog",
    "Claim",
    "Clock",
    "Completed",
    "Consumer",
    "ConsumerId",
    "DeadLettered",
    "EventPage",
    "Lease",
    "LeasedStore",
    "Outcome",
    "PendingDelivery",
    "Released",
    "Rescheduled",
    "Route",
    "Store",
    "StoreStats",
    "new_consumer_id",
    "shared",
    "system_clock",
]


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


# ------------------------------------------------------------ the shared, leased queue

Clock: TypeAlias = Callable[[], datetime]
"""What a ``LeasedStore`` reads the time from: a timezone-aware UTC ``datetime``."""


def system_clock() -> datetime:
    """The wall clock, in UTC: the clock a store uses unless it is given another."""
    return datetime.now(UTC)


@attrs.frozen(slots=True)
class ConsumerId:
    """Who claims deliveries: a host, a process id, and a random part for this start."""

    host: str
    pid: int
    token: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"


def new_consumer_id() -> ConsumerId:
    """This process's identity as a consumer: a new random part on every call."""
    return ConsumerId(socket.gethostname(), os.getpid(), secrets.token_hex(4))


@attrs.frozen(slots=True)
class Route:
    """One subscription a consumer runs: its pattern, and the receiver id it delivers to."""

    pattern: str
    receiver_id: str


@attrs.frozen(slots=True)
class Consumer:
    """A live consumer as the store knows it: what it runs, when it was last heard of."""

    id: ConsumerId
    routes: tuple[Route, ...]
    registered_at: datetime
    last_seen: datetime
    expires_at: datetime
    """Without a heartbeat before this time, the registration is gone."""
    leases: int
    """Deliveries it holds, including leases that ran out and were not taken yet."""

    def receivers_of(self, name: str) -> frozenset[str]:
        """The receiver ids this consumer's routes deliver an event called ``name`` to."""
        return frozenset(r.receiver_id for r in self.routes if compile_pattern(r.pattern)(name))


@attrs.frozen(slots=True)
class Claim:
    """A delivery leased to one consumer, for one attempt; it is also the handle to settle it."""

    event: Event
    receiver_id: str
    attempt: int
    """This attempt's number, from 1: one more than the attempts started before it, by
    every consumer that claimed it (``LeasedStore.start``)."""
    lease_expired: bool
    """The last attempt started ended with its lease running out: its process died, hung
    or lost the store while the receiver ran."""


@attrs.frozen(slots=True)
class Lease:
    """A delivery held by a consumer, for listing (``LeasedStore.leases``)."""

    event_id: str
    name: str
    receiver_id: str
    key: str | None
    attempt: int
    consumer: ConsumerId
    expires_at: datetime


@attrs.frozen(slots=True)
class Backlog:
    """One receiver's deliveries that are not done, by state, and the age of the oldest."""

    receiver_id: str
    ready: int
    """Due now and not leased; keyed ones may be waiting behind an earlier one of their key."""
    scheduled: int
    """Waiting for a retry time that has not come."""
    leased: int
    dead: int
    oldest: datetime | None
    """``occurred_at`` of the oldest event with a ready, scheduled or leased delivery."""


@attrs.frozen(slots=True)
class Completed:
    """The receiver returned: the delivery is done."""

    claim: Claim


@attrs.frozen(slots=True)
class Rescheduled:
    """Try again ``delay`` seconds from the store's now; the attempt stays counted if it
    was started."""

    claim: Claim
    delay: float


@attrs.frozen(slots=True)
class DeadLettered:
    """No attempts left: keep ``letter`` (its event and receiver id are the claim's).

    ``holds_key``: a keyed letter holds its key, so the later deliveries of its
    receiver and key wait until it is redelivered or the key is released
    (``keyed_dead_letters="hold"``). False lets the next one go (``"skip"``).
    """

    claim: Claim
    letter: DeadLetter
    holds_key: bool = False


@attrs.frozen(slots=True)
class Released:
    """Never run: ready again now, as if this claim had not been made (uncounted even if
    it was started)."""

    claim: Claim


Outcome: TypeAlias = Completed | Rescheduled | DeadLettered | Released


@attrs.frozen(slots=True)
class EventPage:
    """Events read in publish order after a position (``LeasedStore.events_after``)."""

    events: tuple[Event, ...]
    position: int
    """Where the next read starts: past the last event read and the pruned ones before it."""
    missed: int
    """Events published after the position read from that were pruned before this read."""


@runtime_checkable
class LeasedStore(Protocol):
    """A queue of (event, receiver) deliveries that many consumers share through leases.

    See ``aevents._conformance_leases.LeasedStoreConformance``. Time is read from
    the clock the store was given (``system_clock`` by default). A delivery is
    claimable when it is ready (published, due for its retry, redelivered) or
    its lease ran out, its receiver id is one the claiming consumer registered,
    and it comes first of its (receiver id, key) among the deliveries not
    finished: ready, scheduled, leased, or dead and holding its key. Deliveries
    of events without a key are claimable in any order.

    A consumer holds a claim until it settles it or another consumer claims the
    delivery again (a lease that ran out stays held until then). Settling or
    renewing a claim not held changes nothing and returns it, so a consumer that
    lost a lease never finishes work another one now runs.

    An attempt counts once it is started: the claimer calls ``start`` with a
    claim, and waits for it, just before the receiver runs. A claim alone counts
    nothing, so a process that dies holding claims it never started (prefetched
    into its buffer) costs them no attempt, while a receiver that kills its
    process on every attempt uses one each time. Attempts add up across
    processes and crashes. The store knows no retry policy; the claimer does: a
    claim whose ``attempt`` is past its policy's ``attempts`` follows started
    attempts whose leases all ran out (their processes died), and the claimer
    settles it as ``DeadLettered`` without starting it.

    Every method may be called concurrently from many tasks, threads and
    processes, and returns once what it recorded is durable. A call cancelled
    midway either took effect or did not; a cancelled ``claim`` may have leased
    deliveries nobody runs, which are claimed again when their lease runs out.
    """

    async def open(self) -> None:
        """Create or migrate what the store needs; raise ``StoreError`` if it cannot."""

    async def close(self) -> None:
        """Release the store. Idempotent."""

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        """Durably add each event and one ready delivery per distinct receiver id, all or none.

        An event with no receiver id is added too (``events_after`` reads it).

        An event whose ``metadata["idempotency_key"]`` is recorded already (or
        earlier in ``events``) adds nothing: the key's first event stands in for
        it in the result, which holds one event per entry of ``events``.
        """

    async def event_position(self) -> int:
        """The position of the newest event added (0 before any): where a tail starts that
        must see only the events added after it started."""

    async def events_after(self, position: int, limit: int) -> EventPage:
        """At most ``limit`` events added after ``position``, in publish order.

        Each event ``publish`` adds (also one with no receiver id) takes the next
        position, 1, 2, ..., in the order the adds take effect, and keeps it; a
        repeated idempotency key adds nothing and takes none. Positions of pruned
        events are not reused: the page skips them, counts them as ``missed``,
        and its ``position`` moves past them, so a tail that fell behind pruning
        goes on from what is left.
        """

    async def register(self, consumer: ConsumerId, routes: Sequence[Route], *, ttl: float) -> None:
        """Record ``consumer`` as live for ``ttl`` seconds, running ``routes`` (replacing any)."""

    async def heartbeat(self, consumer: ConsumerId, *, ttl: float) -> bool:
        """Keep ``consumer`` live ``ttl`` seconds more; False if it is not live (register again)."""

    async def unregister(self, consumer: ConsumerId) -> int:
        """Forget ``consumer`` and release what it still holds, as ``Released``; return how many."""

    async def claim(self, consumer: ConsumerId, limit: int, *, lease: float) -> list[Claim]:
        """Lease at most ``limit`` claimable deliveries for ``lease`` seconds, in publish order.

        Raise ``StoreError`` when ``consumer`` is not live.
        """

    async def start(self, consumer: ConsumerId, claims: Sequence[Claim]) -> list[Claim]:
        """Count these claims' attempts as started, durably; return the ones no longer held.

        Called just before the receivers run. Starting a claim twice counts it once. Once
        started, the attempt stays counted however the claim ends, except ``Released``
        (which a claimer uses only for claims it never ran).
        """

    async def renew(
        self, consumer: ConsumerId, claims: Sequence[Claim], *, lease: float
    ) -> list[Claim]:
        """Extend these leases to ``lease`` seconds from now; return the ones no longer held."""

    async def settle(self, consumer: ConsumerId, outcomes: Sequence[Outcome]) -> list[Claim]:
        """Apply each outcome to its claim; return the claims no longer held (not applied)."""

    async def consumers(self) -> list[Consumer]:
        """Live consumers, in the order they registered."""

    async def leases(self) -> list[Lease]:
        """Deliveries held, by expiry, including leases that ran out and were not taken yet."""

    async def backlog(self) -> list[Backlog]:
        """Per receiver id with deliveries not done or dead, by receiver id."""

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters ready again with no attempts (all when ``None``); return how many."""

    async def discard(self, letter_ids: Sequence[str]) -> int:
        """Delete these dead letters for good, their deliveries counted done and never run;
        a key one held goes on. Ids of no letter are skipped; return how many went."""

    async def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}``."""

    async def release_key(self, receiver_id: str, key: str) -> bool:
        """Let the next delivery of a held key go; the letter stays. False if it was not held."""

    async def prune(self, *, older_than: datetime | None = None, limit: int | None = None) -> int:
        """Delete at most ``limit`` done deliveries of events published before ``older_than``
        (and events with nothing left); return how many deliveries went."""

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``; return how many."""


def shared(store: object) -> TypeGuard[LeasedStore]:
    """Whether a runtime runs ``store`` as a queue that processes share (``LeasedStore``)
    rather than as its own journal (``Store``).

    A store that implements both protocols chooses with a ``shared`` attribute:
    ``SQLiteStore(path, exclusive=True)`` sets it to ``False``, and the runtime then
    journals through it, as the one process that has the file."""
    return isinstance(store, LeasedStore) and getattr(store, "shared", True) is not False
