"""SQLiteStore: the durable store, one SQLite file shared by the processes of a host.

It implements both store protocols on the same events and deliveries: the
``LeasedStore`` the runtime uses (publish, consumers, claims with leases,
renewals, settlements; see ``_protocol`` and docs/processes.md), and the
journal's ``Store`` for whoever calls it directly. Several processes of one
host open the same file at once (``uvicorn --workers 4`` on one journal):

* WAL mode, a busy timeout, and ``BEGIN IMMEDIATE`` for every write, so writers
  take turns through SQLite's write lock, and a claim reads and leases its rows
  in one transaction: no delivery is handed out twice.
* Idempotency keys are claimed through the UNIQUE index on the key: the process
  whose ``INSERT`` lands first owns the key; the others read its event back in
  the same transaction.
* A consumer's leases pass to another when they run out, and at once when its
  process is surely dead (``reclaim_dead_pids``, see ``_procs``).

Why a thread: an sqlite3 connection belongs to the thread that uses it, and
anyio's worker threads are picked at random, so the store owns one thread and
one connection from open to close. Async calls hand requests to that thread
and sleep on an ``anyio.Event``; the thread wakes them with a non-blocking
call into the event loop. No caller holds a worker thread.

Group commit: publishes, settlements and the journal's writes join the batch
that is waiting for the thread; the thread writes a whole batch (up to
``max_batch`` publishes) in one transaction, commits once and wakes every caller
in it. A call returns only after the commit that holds it.

What survives what (WAL mode):

* ``synchronous="FULL"`` (default): a publish that returned, and a dead letter,
  survive a process kill and a power loss. Claims, renewals and other
  settlements commit without an fsync: they survive a process kill, and a power
  loss can forget the last of them, which costs a delivery run again or an
  extra attempt; nothing published is lost.
* ``synchronous="NORMAL"`` (opt-in, faster): everything survives a process
  kill; a power loss can lose the last commits, publishes included.
* A torn WAL tail (power loss mid-write) loses exactly the commits in it;
  SQLite checksums every WAL frame and stops replay at the first bad one.

Side files next to the journal file (symlinks in ``path`` resolved first, so
every spelling of one file shares them; a file with several hard links is
refused with ``JournalLinkError``, because SQLite keeps one ``-wal`` per name):
``<file>.lock`` holds a shared ``flock`` of every process that has the file
open and a small JSON record: whether a run is open, how far the ``-wal`` grew,
and the losses noticed so far (``_sqlite_lock``). When every process that had
the file open died, the next open checks that the ``-wal`` they left is still
there, no shorter and with a valid header; if not, the commits it held may be
gone, and the store logs an error and keeps the loss in ``losses`` (and in the
record) until ``forget_losses()``. ``<file>.requests`` holds redelivery requests
that an older aevents's CLI left for the owner of the file; ``open()`` applies
them, then deletes the file. ``<file>-wal`` and ``<file>-shm`` are SQLite's own.
All are mode 0600; nothing is created through a symlink.

This module is the façade: the options, the async API and the requests it
builds. The parts it is made of, each in its own module:

* ``StoreThread`` (``_sqlite_thread``): the thread, its queue, group commit and
  waking callers; it owns the open journal from open to close.
* ``OpenJournal`` (``_sqlite_journal``): the open journal the thread drives,
  which owns the connection, its ``JournalSchema`` (``_sqlite_schema``: tables,
  migrations, checks of the file), its ``JournalSQL`` (``_sqlite_sql``: the
  journal's statements and queries) and ``LeasedSQL`` (``_sqlite_leased_sql``:
  the queue's), and runs the retention passes.
* ``JournalLock`` (``_sqlite_lock``): the ``.lock`` file's flock and record; the
  store holds it for its whole life, so ``losses`` outlives a close.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from .._event import Event
from .._exceptions import ConfigurationError, StoreError
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
from ._sqlite_journal import JournalOptions, OpenJournal
from ._sqlite_leased_sql import (
    COMPLETED,
    DEAD_LETTERED,
    PUBLISH,
    RELEASED,
    RESCHEDULED,
    SETTLE,
    STARTED,
)
from ._sqlite_lock import JournalLock
from ._sqlite_schema import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    SYNCHRONOUS,
    request_redelivery,
    to_us,
)
from ._sqlite_sql import APPEND, COMPLETE, DEAD, START, dead_rows
from ._sqlite_thread import StoreThread

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStore", "request_redelivery"]

logger = logging.getLogger("aevents.store")

_US_PER_SECOND = 1_000_000
_KEEP_PUBLISHED = 8192  # events kept for claims of this process (a few claims' worth)


def _seconds(value: float) -> int:
    return round(value * _US_PER_SECOND)


class SQLiteStore:
    """A durable store in one SQLite file (WAL mode) that the processes of a host share.

    Pass it to ``EventRuntime(store=...)``, which opens and closes it; every
    process (each ``uvicorn`` worker, each ``python -m aevents worker``) opens its
    own store on the same path. Open, use and close a store from one event loop.
    A new file is created with mode 0600, and so are its side files.

    With ``exclusive=True`` one process has the file alone, as its journal: the
    runtime records each publish and outcome in it and runs the deliveries from
    memory, with no leases, claims or attempt starts to write, which makes durable
    publishing about twice as fast. Pending deliveries run again when the journal
    is next opened, exclusively or shared.

    Args:
        path: The journal file; created if missing, migrated if an older aevents
            wrote it.
        synchronous: ``"FULL"`` (the default): a publish that returned survives a
            power loss. ``"NORMAL"``: it survives a process kill, and is faster.
            Claims, renewals and other settlements never wait for an fsync.
        busy_timeout: Seconds a write waits for another process's write before the
            call raises ``StoreError``. Default 5.
        max_batch: The most publish calls committed in one transaction. Default 256.
        retention: Prune done deliveries of events older than this, on open and
            then about once a minute, a bounded chunk at a time; idempotency key
            records are left alone (``forget_idempotency_keys`` removes them).
            Default ``None``: keep everything.
        read_only: Open for inspection only: no lock, no write, no migration, so
            it also reads a file an older aevents wrote. Default ``False``.
        clock: Where leases, retries and registrations read the time.
        reclaim_dead_pids: Before a claim, end the leases of the consumers whose
            process is dead, so a restarted process takes its predecessor's work
            at once instead of after the lease. A consumer counts as dead only on
            Linux, registered from this host and this pid namespace, when its pid
            is gone or now belongs to a process started later (a reused pid); any
            other consumer's leases pass when they expire. Default ``True``.
        exclusive: Hold the file alone for as long as it is open: another process
            that opens it (shared or exclusive) gets ``JournalInUseError``, and so
            does this one if another process has it open. A runtime then journals
            through the store instead of sharing it (``shared`` is ``False``).
            ``read_only`` stores (the CLI's reads) still open it. Default ``False``.

    Raises:
        ConfigurationError: An option has a wrong type or value.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        max_batch: int = 256,
        retention: timedelta | None = None,
        read_only: bool = False,
        clock: Clock = system_clock,
        reclaim_dead_pids: bool = True,
        exclusive: bool = False,
    ) -> None:
        self.path = os.fsdecode(os.fspath(path))
        what = "SQLiteStore"
        if not isinstance(exclusive, bool):
            raise ConfigurationError(what, f"exclusive must be a bool, got {exclusive!r}")
        if exclusive and read_only:
            raise ConfigurationError(
                what, "exclusive=True and read_only=True: a read-only store takes no lock"
            )
        if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS:
            raise ConfigurationError(
                what, f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}"
            )
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not 0 <= busy_timeout < math.inf
        ):
            raise ConfigurationError(
                what, f"busy_timeout must be a finite number of seconds >= 0, got {busy_timeout!r}"
            )
        if type(max_batch) is not int or max_batch < 1:
            raise ConfigurationError(what, f"max_batch must be an int >= 1, got {max_batch!r}")
        if retention is not None and (
            not isinstance(retention, timedelta) or retention < timedelta(0)
        ):
            raise ConfigurationError(
                what, f"retention must be None or a timedelta >= 0, got {retention!r}"
            )
        self.synchronous = synchronous.upper()
        self.busy_timeout = float(busy_timeout)
        self.max_batch = max_batch
        self.retention = retention
        self.read_only = bool(read_only)
        self.reclaim_dead_pids = bool(reclaim_dead_pids)
        self.exclusive = exclusive
        self.immutable = False  # read-only, of a closed journal with no -wal (the CLI sets it)
        self.unreadable = 0
        """Unreadable rows this object turned into dead letters."""
        self._clock = clock
        # Events this object published, newest last (bounded): a claim of one of them uses
        # it as it is instead of decoding the stored copy.
        self._published: OrderedDict[str, Event] = OrderedDict()
        self._lock_file = JournalLock(self.path, exclusive=exclusive)
        self._thread: StoreThread[OpenJournal] = StoreThread(self.path)

    def __repr__(self) -> str:
        alone = ", exclusive=True" if self.exclusive else ""
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r}{alone})"

    @property
    def shared(self) -> bool:
        """Whether a runtime shares the store with other processes (through leases) rather
        than journaling through it as the one process that has it: ``not exclusive``."""
        return not self.exclusive

    def _now(self) -> int:
        return to_us(self._clock())

    @property
    def losses(self) -> list[dict[str, Any]]:
        """Losses of data noticed after a crash, oldest first; empty when there are none.

        When every process that had the journal open died and the ``-wal`` they left
        is missing, shorter than it had grown, or not a valid write-ahead log, the
        commits it held may be gone. ``open()`` then logs an ERROR on the
        ``aevents.store`` logger and records the loss in the journal's ``.lock``
        file; every later open logs a warning until ``forget_losses()``
        acknowledges it. Filled by ``open()``.

        Each loss is a dict with ``detected_at`` (an ISO 8601 UTC timestamp),
        ``file`` (the ``-wal`` path), ``problem`` (what was wrong with it) and
        ``lost`` (what may be missing: acknowledged events, deliveries marked done,
        which run again, and dead letters)."""
        return self._lock_file.losses

    # -- open and close --------------------------------------------------------------------

    async def open(self) -> None:
        """Create, check and migrate the journal, take the shared lock, start the thread.

        Raises ``StoreError`` naming the path if the file is not a usable journal
        (left byte for byte as it was), ``JournalLinkError`` if it has several
        names, ``JournalInUseError`` if an older aevents or an exclusive store holds it
        alone (or, for an exclusive store, if another process has it open). Not
        interruptible midway: a cancellation takes effect once the journal is
        open, and closes it again.
        """
        options = JournalOptions(
            path=self.path,
            synchronous=self.synchronous,
            busy_timeout=self.busy_timeout,
            retention=self.retention,
            read_only=self.read_only,
            immutable=self.immutable,
        )
        await self._thread.start(
            lambda: OpenJournal.open(options, self._lock_file),
            writable=not self.read_only,
            max_batch=self.max_batch,
            busy_timeout=self.busy_timeout,
        )

    async def close(self) -> None:
        """Commit what was queued, close the connection, release the lock. Idempotent.

        Shielded from cancellation: the queued writes are committed first, so a
        closed store never leaves a caller waiting.
        """
        await self._thread.stop()

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        """Add each event and a ready delivery per distinct receiver id, all or none; a
        repeated idempotency key adds nothing and returns the key's first event.

        Joins the publishes of other tasks in one transaction. Raises ``StoreError`` if
        an event id is already stored (the whole call adds nothing). Cancelling the
        wait does not withdraw the request.
        """
        return await self._publish(events, None)

    async def publish_and_claim(
        self,
        events: Sequence[tuple[Event, Sequence[str]]],
        consumer: ConsumerId,
        *,
        limit: int,
        lease: float,
        start: int,
    ) -> tuple[list[Event], list[Claim], list[Claim]]:
        """``publish``, and in the same transaction lease to ``consumer`` at most ``limit``
        of the deliveries it adds to the receivers ``consumer`` registered, those a claim
        would take (not behind an unfinished delivery of their key), in publish order; the
        first ``start`` of them started as ``start`` would. Nothing is leased when
        ``consumer`` is not live. Returns ``(the events that stand, the claims, the claims
        started)``: one transaction where publishing, claiming and starting take three.
        """
        claimed: list[tuple[int, str, bool]] = []
        now = self._now()
        request = (str(consumer), now, now + _seconds(lease), max(limit, 0), max(start, 0), claimed)
        standing = await self._publish(events, request)
        claims: list[Claim] = []
        started: list[Claim] = []
        for index, receiver_id, begun in claimed:
            claim = Claim(events[index][0], receiver_id, 1, False)
            claims.append(claim)
            if begun:
                started.append(claim)
        return standing, claims, started

    async def _publish(
        self, events: Sequence[tuple[Event, Sequence[str]]], claim: tuple[Any, ...] | None
    ) -> list[Event]:
        rows = [
            (
                event.id,
                event.name,
                event.to_json(),
                to_us(event.occurred_at),
                receiver_ids,
                event.metadata.get(IDEMPOTENCY_KEY),
                event.key,
            )
            for event, receiver_ids in events
        ]
        if not rows:  # nothing to write, but a closed store still refuses
            await self._thread.call(lambda journal: [], "could not publish")
            return []
        out: list[bytes | None] = []
        request = (PUBLISH, rows, out) if claim is None else (PUBLISH, rows, out, claim)
        batch, index = self._thread.submit_append(request)
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)
        published = self._published
        for (event, _), first in zip(events, out, strict=True):
            if first is None:
                published[event.id] = event
        while len(published) > _KEEP_PUBLISHED:
            published.popitem(last=False)  # O(1): a dict's first key is not, after deletes
        return [
            event if first is None else Event.from_json(first)
            for (event, _), first in zip(events, out, strict=True)
        ]

    # -- the journal (Store), on the same events and deliveries ---------------------------

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        """Record ``event`` and one pending (ready) delivery per distinct receiver id, and its
        idempotency key unless already recorded; joins other tasks' writes in one commit.
        ``StoreError`` if the event id is stored already."""
        request = (
            APPEND,
            event.id,
            event.name,
            event.to_json(),
            event.occurred_at,
            receiver_ids,
            event.metadata.get(IDEMPOTENCY_KEY),
            event.key,
        )
        batch, index = self._thread.submit_append(request)
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)

    async def start_attempts(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        """Raise pending deliveries' attempt counts to the attempts given."""
        if attempts:
            rows = [(attempt, event_id, receiver_id) for event_id, receiver_id, attempt in attempts]
            await self._write((START, rows))

    async def complete(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Mark pending deliveries done (ending any lease on them); unknown ones are ignored."""
        if deliveries:
            await self._write((COMPLETE, list(deliveries)))

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Mark deliveries dead (recording unknown events) and keep one letter per delivery."""
        if letters:
            await self._write((DEAD, dead_rows(letters)))

    async def pending(self) -> AsyncIterator[PendingDelivery]:
        """Pending deliveries (ready, scheduled and leased ones) in publish order, then
        receiver id, a page at a time; a snapshot taken at the first page. A row whose
        body cannot be read is turned into a dead letter and skipped."""
        after: tuple[int, str] | None = (0, "")
        upto: int | None = None
        while after is not None:
            page, after, upto = await self._thread.call(
                functools.partial(self._read_page, after=after, upto=upto),
                "could not read pending deliveries",
            )
            for delivery in page:
                yield delivery

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """The newest ``limit`` key records at or after ``since``, oldest first."""
        since_us, count = to_us(since), max(limit, 0)
        return await self._thread.call(
            lambda journal: journal.sql.recent_keys(since_us, count),
            "could not read idempotency keys",
        )

    async def _write(self, request: tuple[object, ...]) -> None:
        batch, index = self._thread.submit(request)
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)

    # -- consumers -------------------------------------------------------------------------

    async def register(self, consumer: ConsumerId, routes: Sequence[Route], *, ttl: float) -> None:
        """Record ``consumer`` as live for ``ttl`` seconds, running ``routes`` (replacing any)."""
        now = self._now()
        routes = list(routes)
        await self._thread.call(
            lambda journal: journal.queue.register(consumer, routes, now, now + _seconds(ttl)),
            "could not register a consumer",
            writes=True,
        )

    async def heartbeat(self, consumer: ConsumerId, *, ttl: float) -> bool:
        """Keep ``consumer`` live ``ttl`` seconds more; False if it is not live."""
        now = self._now()
        return await self._thread.call(
            lambda journal: journal.queue.heartbeat(consumer, now, now + _seconds(ttl)),
            "could not record a heartbeat",
            writes=True,
        )

    async def unregister(self, consumer: ConsumerId) -> int:
        """Forget ``consumer`` and release what it holds, uncounted; return how many."""
        return await self._thread.call(
            lambda journal: journal.queue.unregister(consumer), "could not unregister", writes=True
        )

    async def consumers(self) -> list[Consumer]:
        """Live consumers in registration order, with how many deliveries each holds."""
        now = self._now()
        return await self._thread.call(
            lambda journal: journal.queue.consumers(now) if journal.schema.has_leases else [],
            "could not list consumers",
        )

    # -- claims ----------------------------------------------------------------------------

    async def claim(self, consumer: ConsumerId, limit: int, *, lease: float) -> list[Claim]:
        """Lease at most ``limit`` claimable deliveries for ``lease`` seconds, in publish
        order, in one transaction. Raises ``StoreError`` if ``consumer`` is not live."""
        claims, _ = await self._claim(consumer, limit, lease, 0)
        return claims

    async def claim_and_start(
        self, consumer: ConsumerId, limit: int, *, lease: float, start: int
    ) -> tuple[list[Claim], list[Claim]]:
        """``claim``, and ``start`` in the same transaction for the first ``start`` claims
        (in publish order) whose last attempt's lease did not run out: ``(claims, the
        claims started)``. A claim started here counts its attempt as ``start`` counts it.
        """
        return await self._claim(consumer, limit, lease, max(start, 0))

    async def _claim(
        self, consumer: ConsumerId, limit: int, lease: float, start: int
    ) -> tuple[list[Claim], list[Claim]]:
        now = self._now()
        until = now + _seconds(lease)
        reclaim, known = self.reclaim_dead_pids, self._published
        found = await self._thread.call(
            lambda journal: journal.queue.claim(
                consumer, limit, now, until, reclaim_dead_pids=reclaim, known=known, start=start
            ),
            "could not claim",
            writes=True,
        )
        if found is None:
            raise StoreError(
                self.path,
                f"consumer {str(consumer)!r} is not registered, or its registration "
                "expired; register it again before claiming",
            )
        claims: list[Claim] = []
        started: list[Claim] = []
        for event, receiver_id, attempt, expired, begun in found:
            claim = Claim(event, receiver_id, attempt, expired)
            claims.append(claim)
            if begun:
                started.append(claim)
        return claims, started

    async def start(self, consumer: ConsumerId, claims: Sequence[Claim]) -> list[Claim]:
        """Count these claims' attempts as started, in one transaction shared with other
        tasks' starts, settlements and publishes; return the claims not held."""
        claims = list(claims)
        if not claims:
            return []
        rows = [(c.event.id, c.receiver_id, c.attempt) for c in claims]
        out: list[int] = []
        batch, index = self._thread.submit((STARTED, str(consumer), rows, out))
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)
        return [claims[lost] for lost in out]

    async def renew(
        self, consumer: ConsumerId, claims: Sequence[Claim], *, lease: float
    ) -> list[Claim]:
        """Extend these leases to ``lease`` seconds from now; return the ones not held."""
        claims = list(claims)
        until = self._now() + _seconds(lease)
        wanted = [(c.event.id, c.receiver_id, c.attempt) for c in claims]
        lost = await self._thread.call(
            lambda journal: journal.queue.renew(consumer, wanted, until),
            "could not renew",
            writes=True,
        )
        return [claims[index] for index in lost]

    async def settle(self, consumer: ConsumerId, outcomes: Sequence[Outcome]) -> list[Claim]:
        """Apply each outcome to its claim in one transaction (shared with other tasks'
        settlements and publishes); return the claims not held. Cancelling the wait does
        not withdraw the request."""
        outcomes = list(outcomes)
        if not outcomes:
            return []
        rows = [_outcome_row(outcome) for outcome in outcomes]
        out: list[int] = []
        batch, index = self._thread.submit((SETTLE, str(consumer), self._now(), rows, out))
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)
        return [outcomes[lost].claim for lost in out]

    # -- listings --------------------------------------------------------------------------

    async def leases(self) -> list[Lease]:
        """Deliveries held, by expiry, including leases that ran out and were not taken yet."""
        return await self._thread.call(
            lambda journal: journal.queue.leases() if journal.schema.has_leases else [],
            "could not list leases",
        )

    async def backlog(self) -> list[Backlog]:
        """Per receiver id with deliveries not done: counts by state, and the oldest event."""
        now = self._now()
        return await self._thread.call(
            lambda journal: journal.queue.backlog(now), "could not read the backlog"
        )

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        count = -1 if limit is None else max(limit, 0)
        return await self._thread.call(
            lambda journal: journal.queue.dead_letters(count), "could not list dead letters"
        )

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters ready again with no attempts (all when ``None``); return how many."""
        ids = None if letter_ids is None else list(letter_ids)
        return await self._thread.call(
            lambda journal: journal.sql.redeliver(ids), "could not redeliver", writes=True
        )

    async def discard(self, letter_ids: Sequence[str]) -> int:
        """Delete dead letters for good, their deliveries done and never run; return how many."""
        ids = list(letter_ids)
        return await self._thread.call(
            lambda journal: journal.sql.discard(ids), "could not discard", writes=True
        )

    async def event_position(self) -> int:
        """The position of the newest event added (0 before any)."""
        return await self._thread.call(
            lambda journal: journal.queue.event_position(), "could not read the newest event"
        )

    async def events_after(self, position: int, limit: int) -> EventPage:
        """At most ``limit`` events after ``position``; the pruned ones skipped, counted."""
        if limit <= 0:
            return EventPage((), position, 0)
        events, end, missed = await self._thread.call(
            lambda journal: journal.queue.events_after(position, limit), "could not read events"
        )
        return EventPage(tuple(events), end, missed)

    async def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}``."""
        return await self._thread.call(
            lambda journal: journal.queue.held_keys(), "could not list held keys"
        )

    async def release_key(self, receiver_id: str, key: str) -> bool:
        """Let the next delivery of a held key go; the letter stays. False if it was not held."""
        return await self._thread.call(
            lambda journal: journal.queue.release_key(receiver_id, key),
            "could not release a key",
            writes=True,
        )

    async def prune(self, *, older_than: datetime | None = None, limit: int | None = None) -> int:
        """Delete at most ``limit`` done deliveries of events published before ``older_than``
        (and events with nothing left), in transactions of a bounded size."""
        cutoff = None if older_than is None else to_us(older_than)
        if limit is None:  # the journal's pass, which also drops old events without deliveries
            return await self._thread.call(
                lambda journal: journal.sql.prune(cutoff), "could not prune", writes=True
            )
        room = max(limit, 0)
        return await self._thread.call(
            lambda journal: journal.queue.prune(cutoff, room), "could not prune", writes=True
        )

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""
        return await self._thread.call(lambda journal: journal.sql.stats(), "could not count")

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``; return how many."""
        before_us = to_us(before)
        return await self._thread.call(
            lambda journal: journal.sql.forget_keys(before_us),
            "could not forget idempotency keys",
            writes=True,
        )

    async def forget_losses(self) -> list[dict[str, Any]]:
        """Acknowledge the recorded ``losses``: forget them and return them.

        Call it once you have dealt with a loss (restored a backup, published
        again what was missing, or accepted it); later opens stop warning about
        it. ``python -m aevents journal PATH forget-losses`` does the same, also
        while other processes have the journal open.

        Returns:
            The losses that were recorded, as ``losses`` listed them.

        Raises:
            StoreError: The store is not open, was opened read-only, or could not
                update its ``.lock`` file.
        """
        return await self._thread.call(
            lambda journal: journal.lock.forget(), "could not forget losses", writes=True
        )

    def _read_page(
        self, journal: OpenJournal, *, after: tuple[int, str], upto: int | None
    ) -> tuple[list[PendingDelivery], tuple[int, str] | None, int]:
        """On the store thread: a page of pending deliveries; count the rows it parked
        before the caller wakes, so a cancelled caller still leaves the count right."""
        page, after_page, upto, parked = journal.pending_page(after, upto)
        self.unreadable += parked
        return page, after_page, upto


def _outcome_row(outcome: Outcome) -> tuple[int, str, str, int, object]:
    claim = outcome.claim
    head = (claim.event.id, claim.receiver_id, claim.attempt)
    if isinstance(outcome, Completed):
        return (COMPLETED, *head, None)
    if isinstance(outcome, Rescheduled):
        return (RESCHEDULED, *head, _seconds(outcome.delay))
    if isinstance(outcome, Released):
        return (RELEASED, *head, None)
    assert isinstance(outcome, DeadLettered)
    letter = outcome.letter
    details = (
        letter.id,
        letter.attempts,
        letter.error_type,
        letter.error_message,
        to_us(letter.failed_at),
    )
    return (DEAD_LETTERED, *head, (outcome.holds_key, details))
