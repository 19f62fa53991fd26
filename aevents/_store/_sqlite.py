"""SQLiteStore: the default journal, one SQLite file driven by one dedicated thread.

Why a thread: an sqlite3 connection belongs to the thread that uses it, and
anyio's worker threads are picked at random, so the store owns one thread and
one connection from open to close. Async calls hand requests to that thread
and sleep on an ``anyio.Event``; the thread wakes them with a non-blocking
call into the event loop (``call_soon_threadsafe`` on asyncio,
``TrioToken.run_sync_soon`` on trio). No caller holds a worker thread.

Group commit: writes (``append``, ``start_attempts``, ``complete``,
``dead_letter``) join the batch that is waiting for the thread; the thread
writes a whole batch (up to ``max_batch`` appends) in one ``BEGIN IMMEDIATE``
transaction, commits once and wakes every caller in it. A call returns only
after the commit that holds it.

What survives what (WAL mode):

* ``synchronous="FULL"`` (default): an ``append`` that returned, and a dead
  letter, survive a process kill and a power loss. ``start_attempts`` and
  ``complete`` batches with nothing else in them commit without an fsync: they
  survive a process kill (the write has reached the OS), and a power loss can
  forget the last of them, which costs a delivery run again or an extra attempt
  — at-least-once still holds, nothing published is lost.
* ``synchronous="NORMAL"`` (opt-in, faster): everything survives a process
  kill; a power loss can lose the last commits, appends included.
* A torn WAL tail (power loss mid-write) loses exactly the commits in it;
  SQLite checksums every WAL frame and stops replay at the first bad one.

Side files next to the journal file (symlinks in ``path`` resolved first, so
every spelling of one file shares them; a file with several hard links is
refused with ``JournalLinkError``, because SQLite keeps one ``-wal`` per name):
``<file>.lock`` holds an exclusive ``flock`` while the store is open (a second
opener gets ``JournalInUseError``) and a small JSON record: whether the last
run closed cleanly, how far its ``-wal`` grew, and the losses noticed so far.
An open after a run that did not close cleanly checks that the ``-wal`` it left
is still there, no shorter and with a valid header; if not, the commits it
held may be gone, and the store logs an error and keeps the loss in
``losses`` (and in the record) until ``forget_losses()``. ``<file>.requests``
holds JSON lines such as ``{"redeliver": ["<letter id>"]}`` or
``{"redeliver": "all"}`` written by ``request_redelivery`` (the CLI) while
another process has the journal; ``open()`` applies them, then deletes the
file. ``<file>-wal`` and ``<file>-shm`` are SQLite's own. All are mode 0600;
nothing is created through a symlink.

This module is the façade: the options, the async API and the requests it
builds. The parts it is made of, each in its own module:

* ``StoreThread`` (``_sqlite_thread``): the thread, its queue, group commit and
  waking callers; it owns the open journal from open to close.
* ``OpenJournal`` (``_sqlite_journal``): the open journal the thread drives,
  which owns the connection, its ``JournalSchema`` (``_sqlite_schema``: tables,
  migrations, checks of the file) and its ``JournalSQL`` (``_sqlite_sql``: every
  statement and query), and runs the retention passes.
* ``JournalLock`` (``_sqlite_lock``): the ``.lock`` file's flock and record; the
  store holds it for its whole life, so ``losses`` outlives a close.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from .._event import Event
from .._exceptions import ConfigurationError
from .._idempotency import IDEMPOTENCY_KEY
from .._policy import DeadLetter
from ._protocol import PendingDelivery, StoreStats
from ._sqlite_journal import JournalOptions, OpenJournal
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


class SQLiteStore:
    """A journal in one SQLite file (WAL mode), for at-least-once delivery across a crash.

    Pass it to ``EventRuntime(store=...)``, which opens and closes it. Open,
    use and close a store from one event loop. A new file is created with mode
    0600, and so are its side files (``.lock``, ``.requests``).

    Args:
        path: The journal file; created if missing.
        synchronous: ``"FULL"`` (the default): an acknowledged append survives a
            power loss. ``"NORMAL"``: it survives a process kill, and is faster.
        busy_timeout: Seconds a write waits for a lock held by another
            connection before the call raises ``StoreError``. Default 5.
        max_batch: The most appends written in one transaction. Default 256.
        retention: Prune done deliveries of events older than this, on open and
            then about once a minute, a bounded chunk at a time; idempotency key
            records are left alone (``forget_idempotency_keys`` removes them).
            Default ``None``: keep everything.
        read_only: Open without the lock, for inspecting a journal another
            process has open, including one an older aevents wrote. Default
            ``False``.

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
    ) -> None:
        self.path = os.fsdecode(os.fspath(path))
        what = "SQLiteStore"
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
        self.immutable = False  # read-only, of a closed journal with no -wal (the CLI sets it)
        self.unreadable = 0
        """Unreadable rows this object turned into dead letters."""
        self._lock_file = JournalLock(self.path)
        self._thread: StoreThread[OpenJournal] = StoreThread(self.path)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r})"

    @property
    def losses(self) -> list[dict[str, Any]]:
        """Losses of data noticed after a crash, oldest first; empty when there are none.

        When the last run did not close cleanly and the ``-wal`` it left is missing,
        shorter than it had grown, or not a valid write-ahead log, the commits it held
        may be gone. ``open()`` then logs an ERROR on the ``aevents.store`` logger and
        records the loss in the journal's ``.lock`` file; every later open logs a
        warning until ``forget_losses()`` acknowledges it. Filled by ``open()``.

        Each loss is a dict with ``detected_at`` (an ISO 8601 UTC timestamp),
        ``file`` (the ``-wal`` path), ``problem`` (what was wrong with it) and
        ``lost`` (what may be missing: acknowledged events, deliveries marked done,
        which run again, and dead letters)."""
        return self._lock_file.losses

    # -- the async surface ---------------------------------------------------------------

    async def open(self) -> None:
        """Create, check and migrate the journal, then start its thread.

        Raises ``StoreError`` naming the path if the file is not a usable
        journal (left byte for byte as it was), ``JournalInUseError`` if another
        store has it open. Not interruptible midway: a cancellation takes effect
        once the journal is open, and closes it again.
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
        """Commit what was queued, close the connection and release the lock. Idempotent.

        Shielded from cancellation: the queued writes are committed first, so a
        closed store never leaves a caller waiting.
        """
        await self._thread.stop()

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        """Record ``event``, one pending delivery per distinct receiver id, and its
        idempotency key unless already recorded, durably and in one transaction.

        Returns after the commit that holds it; ``StoreError`` if that commit
        failed (disk full, lock held past ``busy_timeout``) or the event id is
        already in the journal. Cancelling the wait does not withdraw the
        request: the event may still be committed.
        """
        # The hot path: inlined, and anything that can wait runs on the store thread.
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
        """Record attempts as started (survives a process kill; see the module docstring).

        Cancelling the wait does not withdraw the request.
        """
        if attempts:
            rows = [(attempt, event_id, receiver_id) for event_id, receiver_id, attempt in attempts]
            await self._write((START, rows))

    async def complete(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Mark pending deliveries done; unknown or finished ones are ignored.

        Cancelling the wait does not withdraw the request.
        """
        if deliveries:
            await self._write((COMPLETE, list(deliveries)))

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Mark deliveries dead and keep the letters (one per delivery; a newer one replaces).

        Cancelling the wait does not withdraw the request.
        """
        if letters:
            await self._write((DEAD, dead_rows(letters)))

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters ordered by ``failed_at``; cancelling only abandons the answer."""
        count = -1 if limit is None else max(limit, 0)
        return await self._thread.call(
            lambda journal: journal.sql.dead_letters(count), "could not list dead letters"
        )

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters pending again with no attempts (all when ``None``); return how many.

        Cancelling the wait does not withdraw the request.
        """
        ids = None if letter_ids is None else list(letter_ids)
        return await self._thread.call(
            lambda journal: journal.sql.redeliver(ids), "could not redeliver", writes=True
        )

    async def pending(self) -> AsyncIterator[PendingDelivery]:
        """Pending deliveries in publish order (then receiver id), fetched a page at a time.

        A snapshot: events appended after the first page was read are not
        yielded. A row whose body cannot be read is turned into a dead letter with the
        reason (its event a placeholder named ``aevents.journal.unreadable``
        unless the stored name is valid), counted in ``unreadable`` and skipped.
        """
        after: tuple[int, str] | None = (0, "")
        upto: int | None = None
        while after is not None:
            page, after, upto = await self._thread.call(
                functools.partial(self._read_page, after=after, upto=upto),
                "could not read pending deliveries",
            )
            for delivery in page:
                yield delivery

    async def prune(self, *, older_than: datetime | None = None) -> int:
        """Delete done deliveries of events that occurred before ``older_than`` (all when
        ``None``) and events left with no delivery; return how many deliveries went.

        Runs in transactions of a bounded size; cancelling abandons the answer,
        not the pruning.
        """
        cutoff = None if older_than is None else to_us(older_than)
        return await self._thread.call(
            lambda journal: journal.sql.prune(cutoff), "could not prune", writes=True
        )

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""
        return await self._thread.call(lambda journal: journal.sql.stats(), "could not count")

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """The newest ``limit`` key records at or after ``since``, oldest first.

        A record whose copy of the event cannot be read is skipped with a
        warning. Cancelling only abandons the answer.
        """
        since_us, count = to_us(since), max(limit, 0)
        return await self._thread.call(
            lambda journal: journal.sql.recent_keys(since_us, count),
            "could not read idempotency keys",
        )

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``; return how many.

        Runs in transactions of a bounded size; cancelling abandons the answer,
        not the forgetting.
        """
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
        it. ``python -m aevents journal PATH forget-losses`` does the same.

        Returns:
            The losses that were recorded, as ``losses`` listed them.

        Raises:
            StoreError: The store is not open, was opened read-only, or could not
                update its ``.lock`` file.
        """
        return await self._thread.call(
            lambda journal: journal.lock.forget(), "could not forget losses", writes=True
        )

    async def _write(self, request: tuple[Any, ...]) -> None:
        batch, index = self._thread.submit(request)
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)

    def _read_page(
        self, journal: OpenJournal, *, after: tuple[int, str], upto: int | None
    ) -> tuple[list[PendingDelivery], tuple[int, str] | None, int]:
        """On the store thread: a page of pending deliveries; count the rows it parked
        before the caller wakes, so a cancelled caller still leaves the count right."""
        page, after_page, upto, parked = journal.pending_page(after, upto)
        self.unreadable += parked
        return page, after_page, upto
