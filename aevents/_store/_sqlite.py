"""SQLiteStore: the default journal, one SQLite file driven by one dedicated thread.

Why a thread: an sqlite3 connection belongs to the thread that uses it, and
anyio's worker threads are picked at random, so the store owns one thread and
one connection for its whole life. Async calls hand requests to that thread
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

This module is the async API and the hand-off to the thread. The rest lives in
``_sqlite_thread`` (the loop, group commit, waking callers, retention),
``_sqlite_calls`` (open, close, reads and maintenance run on the thread) and
``_sqlite_schema`` (the file: schema, migrations, checks, lock and requests).
"""

from __future__ import annotations

import functools
import math
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .._event import Event
from .._exceptions import ConfigurationError, StoreError
from .._idempotency import IDEMPOTENCY_KEY
from .._policy import DeadLetter
from ._protocol import PendingDelivery, StoreStats
from ._sqlite_calls import _JournalCalls
from ._sqlite_lock import JournalLock
from ._sqlite_schema import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    SYNCHRONOUS,
    request_redelivery,
    to_us,
)
from ._sqlite_thread import (
    _APPEND,
    _BROKEN,
    _CLOSED,
    _CLOSING,
    _COMPLETE_KIND,
    _DEAD,
    _NEW,
    _OPEN,
    _OPENING,
    _START,
    _Batch,
    _Call,
    _loop_caller,
    _loop_caller_unset,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStore", "request_redelivery"]

_T = TypeVar("_T")


class SQLiteStore(_JournalCalls):
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
        self.immutable = False
        self.unreadable = 0
        """Unreadable rows this object turned into dead letters."""
        self._lock = threading.Lock()  # guards _state, _open_batch and puts on _queue
        self._state = _NEW
        self._writable = False  # open and not read-only: the one check on the append path
        self._new_event: Callable[[], anyio.Event] = anyio.Event
        self._queue: queue.SimpleQueue[_Batch | _Call] = queue.SimpleQueue()
        self._open_batch: _Batch | None = None
        self._closing: _Call | None = None
        self._thread: threading.Thread | None = None
        self._call_soon: Callable[[Callable[[], object]], object] = _loop_caller_unset
        # Owned by the store thread:
        self._conn: sqlite3.Connection | None = None
        self._lock_file = JournalLock(self.path)
        self._real = self.path
        self._next_seq = 1
        self._schema_version = SCHEMA_VERSION  # lower only for an old journal opened read-only
        self._synchronous_now = ""
        self._retention_after: int | None = 0  # resume point of the retention pass
        self._retention_due = math.inf

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
        with self._lock:
            if self._state not in (_NEW, _CLOSED):
                raise StoreError(self.path, "is already open (or opening) in this store")
            self._state = _OPENING
        self._call_soon, self._new_event = _loop_caller()
        self._queue = queue.SimpleQueue()
        call = _Call(self._open_on_thread, "could not open", self._new_event())
        self._queue.put(call)
        self._thread = threading.Thread(
            target=self._serve, name=f"aevents-journal:{self.path}", daemon=True
        )
        self._thread.start()
        with anyio.CancelScope(shield=True):
            await call.done.wait()
        if call.error is not None:
            self._thread.join()
            with self._lock:
                self._state = _CLOSED
            raise call.error
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise

    async def close(self) -> None:
        """Commit what was queued, close the connection and release the lock. Idempotent.

        Shielded from cancellation: the queued writes are committed first, so a
        closed store never leaves a caller waiting.
        """
        with self._lock:
            if self._state in (_NEW, _CLOSED):
                return
            self._writable = False
            if self._state == _BROKEN:
                self._state = _CLOSED
                call = None
            elif self._closing is not None:
                call = self._closing
            else:
                call = self._closing = _Call(
                    self._close_on_thread, "could not close", self._new_event()
                )
                self._state = _CLOSING
                self._open_batch = None
                self._queue.put(call)
        if call is not None:
            with anyio.CancelScope(shield=True):
                await call.done.wait()
        thread = self._thread
        if thread is not None:
            thread.join()  # the thread returns right after waking us
        with self._lock:
            self._state = _CLOSED
            self._closing = None

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
            _APPEND,
            event.id,
            event.name,
            event.to_json(),
            event.occurred_at,
            receiver_ids,
            event.metadata.get(IDEMPOTENCY_KEY),
        )
        with self._lock:
            if not self._writable:
                raise self._unavailable()
            batch = self._open_batch
            if batch is None or batch.appends >= self.max_batch:
                batch = self._open_batch = _Batch(self._new_event())
                self._queue.put(batch)
            index = len(batch.requests)
            batch.requests.append(request)
            batch.appends += 1
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            self._raise_for(batch, index)

    async def start_attempts(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        """Record attempts as started (survives a process kill; see the module docstring).

        Cancelling the wait does not withdraw the request.
        """
        if attempts:
            rows = [(attempt, event_id, receiver_id) for event_id, receiver_id, attempt in attempts]
            await self._write((_START, rows))

    async def complete(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Mark pending deliveries done; unknown or finished ones are ignored.

        Cancelling the wait does not withdraw the request.
        """
        if deliveries:
            await self._write((_COMPLETE_KIND, list(deliveries)))

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Mark deliveries dead and keep the letters (one per delivery; a newer one replaces).

        Cancelling the wait does not withdraw the request.
        """
        if letters:
            rows = [
                (
                    letter.id,
                    letter.event.id,
                    letter.event.name,
                    letter.event.to_json(),
                    to_us(letter.event.occurred_at),
                    letter.receiver_id,
                    letter.attempts,
                    letter.error_type,
                    letter.error_message,
                    to_us(letter.failed_at),
                )
                for letter in letters
            ]
            await self._write((_DEAD, rows))

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters ordered by ``failed_at``; cancelling only abandons the answer."""
        count = -1 if limit is None else max(limit, 0)
        result: list[DeadLetter] = await self._call(
            functools.partial(self._dead_letters_on_thread, count), "could not list dead letters"
        )
        return result

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters pending again with no attempts (all when ``None``); return how many.

        Cancelling the wait does not withdraw the request.
        """
        ids = None if letter_ids is None else list(letter_ids)
        count: int = await self._call(
            functools.partial(self._redeliver_on_thread, ids), "could not redeliver"
        )
        return count

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
            page: list[PendingDelivery]
            page, after, upto = await self._call(
                functools.partial(self._pending_page_on_thread, after, upto),
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
        removed: int = await self._call(
            functools.partial(self._prune_on_thread, cutoff), "could not prune"
        )
        return removed

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""
        result: StoreStats = await self._call(self._stats_on_thread, "could not count")
        return result

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """The newest ``limit`` key records at or after ``since``, oldest first.

        A record whose copy of the event cannot be read is skipped with a
        warning. Cancelling only abandons the answer.
        """
        result: list[Event] = await self._call(
            functools.partial(self._recent_keys_on_thread, to_us(since), max(limit, 0)),
            "could not read idempotency keys",
        )
        return result

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``; return how many.

        Runs in transactions of a bounded size; cancelling abandons the answer,
        not the forgetting.
        """
        removed: int = await self._call(
            functools.partial(self._forget_keys_on_thread, to_us(before)),
            "could not forget idempotency keys",
        )
        return removed

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
        result: list[dict[str, Any]] = await self._call(
            self._forget_losses_on_thread, "could not forget losses"
        )
        return result

    # -- handing requests to the thread --------------------------------------------------

    def _unavailable(self) -> StoreError:
        if self._state == _OPEN and self.read_only:
            return StoreError(self.path, "was opened read-only")
        if self._state == _BROKEN:
            return StoreError(self.path, "is unusable: its thread stopped on an unexpected error")
        return StoreError(self.path, "is not open; call `await store.open()` first")

    async def _write(self, request: tuple[Any, ...]) -> None:
        with self._lock:
            if not self._writable:
                raise self._unavailable()
            batch = self._open_batch
            if batch is None or len(batch.requests) >= 4 * self.max_batch:
                batch = self._open_batch = _Batch(self._new_event())
                self._queue.put(batch)
            index = len(batch.requests)
            batch.requests.append(request)
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            self._raise_for(batch, index)

    def _raise_for(self, batch: _Batch, index: int) -> None:
        if batch.failure is not None:
            raise StoreError(self.path, batch.failure.problem) from batch.failure.__cause__
        error = batch.errors.get(index)
        if error is not None:
            raise error

    async def _call(self, function: Callable[[], _T], doing: str) -> _T:
        call = _Call(function, doing, self._new_event())
        with self._lock:
            if self._state != _OPEN:
                raise self._unavailable()
            self._open_batch = None  # writes made after this call queue behind it
            self._queue.put(call)
        await call.done.wait()
        if call.error is not None:
            raise StoreError(self.path, call.error.problem) from call.error.__cause__
        result: _T = call.result
        return result
