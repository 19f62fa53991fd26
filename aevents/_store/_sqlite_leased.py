"""SQLiteLeasedStore: the leased queue in one SQLite file that several processes share.

It implements ``LeasedStore`` (see ``_protocol`` and docs/processes.md) with the
same parts as ``SQLiteStore``: a ``StoreThread`` that owns one connection and
commits concurrent publishes and settlements together (group commit), the
``JournalSchema`` that creates and migrates the file (schema version 3; a
journal at an older version is migrated: its pending deliveries become ready
ones, its dead letters stay dead), and ``JournalSQL`` for what a journal and a
queue share, under ``LeasedSQL`` (``_sqlite_leased_sql``) for the queue itself.

Sharing one file between processes of one host:

* WAL mode, a busy timeout, and ``BEGIN IMMEDIATE`` for every write, so writers
  take turns through SQLite's write lock and a claim reads and leases its rows
  in one transaction: no delivery is handed out twice.
* ``<file>.lock`` is held with a *shared* ``flock`` by every leased user, so
  they run side by side, and an ``SQLiteStore`` (which takes it exclusively)
  is refused beside them with ``JournalInUseError``, as they are beside it.
  Leased users keep no record in it: the journal's check for a ``-wal`` lost in
  a crash assumes one writer, and is not made here; a file whose record says a
  journal run did not close cleanly is refused until an ``SQLiteStore`` has
  opened (and so checked) and closed it.
* Symlinks in ``path`` are resolved, so every spelling opens one file with one
  ``-wal``; a file with several hard links is refused with ``JournalLinkError``.
* Idempotency keys are claimed through the UNIQUE index on the key: the process
  whose ``INSERT`` lands first owns the key; the others read its event back in
  the same transaction.

It also implements the journal's ``Store`` protocol on the same events and
deliveries, as ``MemoryStore`` does (and passes ``PersistentStoreConformance``):
what ``append`` records can be claimed, and a leased delivery is ``pending``.
That is the path for the runtime to move onto leases, and for ``SQLiteStore``
to become this class. Not done here yet: the journal's retention pass, its
``.requests`` file of redeliveries asked for by the CLI, its ``losses``, and
read-only opening.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from .._event import Event
from .._exceptions import ConfigurationError, StoreError
from .._idempotency import IDEMPOTENCY_KEY
from .._policy import DeadLetter
from .._text import counted
from ._protocol import (
    Backlog,
    Claim,
    Clock,
    Completed,
    Consumer,
    ConsumerId,
    DeadLettered,
    Lease,
    Outcome,
    PendingDelivery,
    Released,
    Rescheduled,
    Route,
    StoreStats,
    system_clock,
)
from ._sqlite_leased_sql import (
    COMPLETED,
    DEAD_LETTERED,
    PUBLISH,
    RELEASED,
    RESCHEDULED,
    SETTLE,
    LeasedSQL,
)
from ._sqlite_schema import (
    SYNCHRONOUS,
    JournalSchema,
    _check_links,
    _real_path,
    acquire_lock,
    check_header,
    connect,
    create_file,
    read_record,
    sqlite_error,
    to_us,
)
from ._sqlite_sql import APPEND, COMPLETE, DEAD, START, JournalSQL, dead_rows
from ._sqlite_thread import StoreThread

__all__ = ["SQLiteLeasedStore"]

logger = logging.getLogger("aevents.store")

_US_PER_SECOND = 1_000_000
_JOURNAL_CRASHED = (
    "was left open by a journal-mode SQLiteStore that did not close cleanly; open and "
    "close it once with SQLiteStore, which checks what that crash left behind (a lost "
    "-wal), then share it with SQLiteLeasedStore"
)


def _seconds(value: float) -> int:
    return round(value * _US_PER_SECOND)


def _refuse_a_crashed_journal(path: str, lock_fd: int) -> None:
    """Raise ``StoreError`` if the lock record says a journal run did not close cleanly."""
    if read_record(lock_fd).get("state") == "open":
        raise StoreError(path, _JOURNAL_CRASHED)


class OpenQueue:
    """The open file the store thread drives: its connection, shared lock and SQL.

    The thread's ``Session``. Make one with ``open``, on the thread that will use it.
    """

    idle_at = math.inf  # no background work

    def __init__(self, path: str, conn: sqlite3.Connection, lock_fd: int, sql: LeasedSQL) -> None:
        self.path = path
        self.connection = conn
        self.sql = sql
        self._lock_fd: int | None = lock_fd

    @classmethod
    def open(cls, path: str, *, synchronous: str, busy_timeout: float) -> OpenQueue:
        """Check the file, take the shared lock, connect, migrate; undo it all on failure."""
        real = _real_path(path)
        exists = check_header(path, real)
        _check_links(path, real)
        fd = acquire_lock(path, real, shared=True)
        conn = None
        try:
            _check_links(path, real)  # linked while we took the lock
            _refuse_a_crashed_journal(path, fd)
            if not exists:
                create_file(path, real)
            conn = connect(path, real, busy_timeout=busy_timeout, read_only=False)
            schema = JournalSchema(conn, path)
            schema.check(read_only=False)
            try:
                schema.prepare_for_writes()
                journal = JournalSQL(conn, schema, path=path, synchronous=synchronous)
                journal.set_synchronous(synchronous)
            except sqlite3.Error as exc:
                raise sqlite_error(
                    path, exc, "could not be prepared", busy_timeout=busy_timeout
                ) from exc
            return cls(path, conn, fd, LeasedSQL(conn, journal, synchronous=synchronous))
        except BaseException:
            if conn is not None:
                conn.close()
            os.close(fd)
            raise

    def write(self, requests: Sequence[tuple[object, ...]]) -> None:
        """Commit a group of publishes and settlements in one transaction."""
        self.sql.write(requests)

    def rollback(self) -> None:
        """Roll back what a failed call left open; never raises."""
        self.sql.journal.rollback()

    def idle(self) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        """Checkpoint what no reader needs (never waiting), close, drop the shared lock."""
        with contextlib.suppress(sqlite3.Error):
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        with contextlib.suppress(sqlite3.Error):
            self.connection.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


class SQLiteLeasedStore:
    """A ``LeasedStore`` in one SQLite file that several processes of one host open at once.

    Each process opens its own store on the path; open, use and close a store
    from one event loop. A new file is created with mode 0600.

    Args:
        path: The file; created if missing, migrated if it is an older journal.
        clock: Where leases, retries and registrations read the time.
        synchronous: ``"FULL"`` (the default): a publish or a dead letter that
            returned survives a power loss. ``"NORMAL"``: it survives a process
            kill. Claims, renewals and other settlements never wait for an fsync.
        busy_timeout: Seconds a write waits for another process's write before the
            call raises ``StoreError``. Default 5.
        max_batch: The most publish calls committed in one transaction. Default 256.
        reclaim_dead_pids: Before each claim, end the leases of the consumers
            whose process is dead, so a restarted process takes its predecessor's
            work at once instead of after the lease. A consumer counts as dead only
            on Linux, registered from this host and this pid namespace, when its pid
            is gone or now belongs to a process started later (a reused pid); any
            other consumer's leases pass when they expire. Default ``True``.

    Raises:
        ConfigurationError: An option has a wrong type or value.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = system_clock,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        max_batch: int = 256,
        reclaim_dead_pids: bool = True,
    ) -> None:
        self.path = os.fsdecode(os.fspath(path))
        what = "SQLiteLeasedStore"
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
        self.synchronous = synchronous.upper()
        self.busy_timeout = float(busy_timeout)
        self.max_batch = max_batch
        self.reclaim_dead_pids = bool(reclaim_dead_pids)
        self._clock = clock
        self._thread: StoreThread[OpenQueue] = StoreThread(self.path)

    def __repr__(self) -> str:
        return f"SQLiteLeasedStore({self.path!r}, synchronous={self.synchronous!r})"

    def _now(self) -> int:
        return to_us(self._clock())

    # -- open and close --------------------------------------------------------------------

    async def open(self) -> None:
        """Create, check and migrate the file, take the shared lock, start the thread.

        Raises ``StoreError`` naming the path if the file is not usable,
        ``JournalInUseError`` if an ``SQLiteStore`` has it, ``JournalLinkError``
        if it has several names.
        """
        path, synchronous, busy_timeout = self.path, self.synchronous, self.busy_timeout
        await self._thread.start(
            lambda: OpenQueue.open(path, synchronous=synchronous, busy_timeout=busy_timeout),
            writable=True,
            max_batch=self.max_batch,
            busy_timeout=busy_timeout,
        )

    async def close(self) -> None:
        """Commit what was queued, close the connection, release the lock. Idempotent."""
        await self._thread.stop()

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        """Add each event and a ready delivery per distinct receiver id, all or none; a
        repeated idempotency key adds nothing and returns the key's first event.

        Joins the publishes of other tasks in one transaction. Raises ``StoreError`` if
        an event id is already stored (the whole call adds nothing). Cancelling the
        wait does not withdraw the request.
        """
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
            return await self._thread.call(lambda queue: [], "could not publish")
        out: list[bytes | None] = []
        batch, index = self._thread.submit_append((PUBLISH, rows, out))
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)
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
                functools.partial(_read_page, after=after, upto=upto),
                "could not read pending deliveries",
            )
            for delivery in page:
                yield delivery

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """The newest ``limit`` key records at or after ``since``, oldest first."""
        since_us, count = to_us(since), max(limit, 0)
        return await self._thread.call(
            lambda queue: queue.sql.journal.recent_keys(since_us, count),
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
            lambda queue: queue.sql.register(consumer, routes, now, now + _seconds(ttl)),
            "could not register a consumer",
            writes=True,
        )

    async def heartbeat(self, consumer: ConsumerId, *, ttl: float) -> bool:
        """Keep ``consumer`` live ``ttl`` seconds more; False if it is not live."""
        now = self._now()
        return await self._thread.call(
            lambda queue: queue.sql.heartbeat(consumer, now, now + _seconds(ttl)),
            "could not record a heartbeat",
            writes=True,
        )

    async def unregister(self, consumer: ConsumerId) -> int:
        """Forget ``consumer`` and release what it holds, uncounted; return how many."""
        return await self._thread.call(
            lambda queue: queue.sql.unregister(consumer), "could not unregister", writes=True
        )

    async def consumers(self) -> list[Consumer]:
        """Live consumers in registration order, with how many deliveries each holds."""
        now = self._now()
        return await self._thread.call(
            lambda queue: queue.sql.consumers(now), "could not list consumers"
        )

    # -- claims ----------------------------------------------------------------------------

    async def claim(self, consumer: ConsumerId, limit: int, *, lease: float) -> list[Claim]:
        """Lease at most ``limit`` claimable deliveries for ``lease`` seconds, in publish
        order, in one transaction. Raises ``StoreError`` if ``consumer`` is not live."""
        now = self._now()
        until = now + _seconds(lease)
        reclaim = self.reclaim_dead_pids
        found = await self._thread.call(
            lambda queue: queue.sql.claim(consumer, limit, now, until, reclaim_dead_pids=reclaim),
            "could not claim",
            writes=True,
        )
        if found is None:
            raise StoreError(
                self.path,
                f"consumer {str(consumer)!r} is not registered, or its registration "
                "expired; register it again before claiming",
            )
        return [Claim(*claim) for claim in found]

    async def renew(
        self, consumer: ConsumerId, claims: Sequence[Claim], *, lease: float
    ) -> list[Claim]:
        """Extend these leases to ``lease`` seconds from now; return the ones not held."""
        claims = list(claims)
        until = self._now() + _seconds(lease)
        wanted = [(c.event.id, c.receiver_id, c.attempt) for c in claims]
        lost = await self._thread.call(
            lambda queue: queue.sql.renew(consumer, wanted, until), "could not renew", writes=True
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
        return await self._thread.call(lambda queue: queue.sql.leases(), "could not list leases")

    async def backlog(self) -> list[Backlog]:
        """Per receiver id with deliveries not done: counts by state, and the oldest event."""
        now = self._now()
        return await self._thread.call(
            lambda queue: queue.sql.backlog(now), "could not read the backlog"
        )

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        count = -1 if limit is None else max(limit, 0)
        return await self._thread.call(
            lambda queue: queue.sql.dead_letters(count), "could not list dead letters"
        )

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters ready again with no attempts (all when ``None``); return how many."""
        ids = None if letter_ids is None else list(letter_ids)
        return await self._thread.call(
            lambda queue: queue.sql.journal.redeliver(ids), "could not redeliver", writes=True
        )

    async def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}``."""
        return await self._thread.call(
            lambda queue: queue.sql.held_keys(), "could not list held keys"
        )

    async def release_key(self, receiver_id: str, key: str) -> bool:
        """Let the next delivery of a held key go; the letter stays. False if it was not held."""
        return await self._thread.call(
            lambda queue: queue.sql.release_key(receiver_id, key),
            "could not release a key",
            writes=True,
        )

    async def prune(self, *, older_than: datetime | None = None, limit: int | None = None) -> int:
        """Delete at most ``limit`` done deliveries of events published before ``older_than``
        (and events with nothing left), in transactions of a bounded size."""
        cutoff = None if older_than is None else to_us(older_than)
        if limit is None:  # the journal's pass, which also drops old events without deliveries
            return await self._thread.call(
                lambda queue: queue.sql.journal.prune(cutoff), "could not prune", writes=True
            )
        room = max(limit, 0)
        return await self._thread.call(
            lambda queue: queue.sql.prune(cutoff, room), "could not prune", writes=True
        )

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""
        return await self._thread.call(lambda queue: queue.sql.journal.stats(), "could not count")

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``; return how many."""
        before_us = to_us(before)
        return await self._thread.call(
            lambda queue: queue.sql.journal.forget_keys(before_us),
            "could not forget idempotency keys",
            writes=True,
        )


def _read_page(
    queue: OpenQueue, *, after: tuple[int, str], upto: int | None
) -> tuple[list[PendingDelivery], tuple[int, str] | None, int]:
    """On the store thread: a page of pending deliveries; unreadable rows become dead letters."""
    page, unreadable, after_page, upto = queue.sql.journal.pending_page(after, upto)
    if unreadable:
        try:
            queue.sql.write([(DEAD, unreadable)])
        except sqlite3.Error as exc:  # they stay pending; the next reader tries again
            logger.warning("journal %r: could not park unreadable rows: %s", queue.path, exc)
        else:
            logger.warning(
                "journal %r: %s turned into dead letters",
                queue.path,
                counted(len(unreadable), "unreadable delivery"),
            )
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
