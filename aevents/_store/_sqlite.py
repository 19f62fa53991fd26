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

Sidecar files next to ``path``: ``<path>.lock`` holds an exclusive ``flock``
while the store is open (a second opener gets ``JournalInUseError``), and
``<path>.requests`` holds JSON lines such as ``{"redeliver": ["<letter id>"]}``
or ``{"redeliver": "all"}`` written by ``request_redelivery`` (the CLI) while
another process has the journal; ``open()`` applies them, then deletes the file.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Final, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import orjson

from .._event import Event, _make_event, new_event_id
from .._exceptions import ConfigurationError, InvalidEventNameError, JournalInUseError, StoreError
from .._names import validate_name
from .._policy import DeadLetter, describe_error
from ._protocol import PendingDelivery, StoreStats

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStore", "request_redelivery"]

logger = logging.getLogger("aevents.store")
_T = TypeVar("_T")

APPLICATION_ID: Final = 0x61657674  # "aevt" in the header, so a foreign SQLite file is recognised
UNREADABLE_EVENT: Final = "aevents.journal.unreadable"

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # v1. Times are integer microseconds since the epoch (UTC): exact round trips.
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
        " name TEXT NOT NULL, body BLOB NOT NULL, published_at INTEGER NOT NULL)",
        # state: 0 pending, 1 done, 2 dead
        "CREATE TABLE deliveries (event_seq INTEGER NOT NULL, receiver_id TEXT NOT NULL,"
        " state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (event_seq, receiver_id)) WITHOUT ROWID",
        # start-up replay reads this instead of skipping over every done delivery
        "CREATE INDEX deliveries_pending ON deliveries (event_seq, receiver_id) WHERE state = 0",
        "CREATE TABLE dead_letters (id TEXT PRIMARY KEY, event_seq INTEGER NOT NULL,"
        " receiver_id TEXT NOT NULL, attempts INTEGER NOT NULL, error_type TEXT NOT NULL,"
        " error_message TEXT NOT NULL, failed_at INTEGER NOT NULL,"
        " UNIQUE (event_seq, receiver_id))",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
_TABLES: Final = frozenset({"events", "deliveries", "dead_letters"})

_SET_APPLICATION_ID: Final = f"PRAGMA application_id = {APPLICATION_ID}"
_SET_USER_VERSION: Final = f"PRAGMA user_version = {SCHEMA_VERSION}"
_SYNCHRONOUS: Final = {"FULL": "PRAGMA synchronous = FULL", "NORMAL": "PRAGMA synchronous = NORMAL"}

_INSERT_EVENT: Final = (
    "INSERT INTO events (seq, id, name, body, published_at) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_DELIVERY: Final = "INSERT INTO deliveries (event_seq, receiver_id) VALUES (?, ?)"
# Multi-row forms: sqlite3 releases and retakes the GIL around every step, so 64 rows
# per step instead of one keeps the store thread from queueing for the GIL per row.
_CHUNKS: Final = (64, 16, 4)
_INSERT_EVENTS: Final = {
    size: _INSERT_EVENT.replace("(?, ?, ?, ?, ?)", ", ".join(["(?, ?, ?, ?, ?)"] * size))
    for size in _CHUNKS
}
_INSERT_DELIVERIES: Final = {
    size: _INSERT_DELIVERY.replace("(?, ?)", ", ".join(["(?, ?)"] * size)) for size in _CHUNKS
}
_START_ATTEMPT: Final = (
    "UPDATE deliveries SET attempts = max(attempts, ?) WHERE state = 0"
    " AND event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
)
_COMPLETE: Final = (
    "UPDATE deliveries SET state = 1 WHERE state = 0"
    " AND event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
)
_FIND_EVENT: Final = "SELECT seq FROM events WHERE id = ?"
_KILL_DELIVERY: Final = (
    "INSERT INTO deliveries (event_seq, receiver_id, state, attempts) VALUES (?, ?, 2, ?)"
    " ON CONFLICT (event_seq, receiver_id) DO UPDATE SET state = 2, attempts = excluded.attempts"
)
_INSERT_LETTER: Final = (
    "INSERT OR REPLACE INTO dead_letters"
    " (id, event_seq, receiver_id, attempts, error_type, error_message, failed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_PENDING_PAGE: Final = (
    "SELECT d.event_seq, d.receiver_id, d.attempts, e.id, e.name, e.body, e.published_at"
    " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
    " WHERE d.state = 0 AND (d.event_seq, d.receiver_id) > (?, ?)"
    " ORDER BY d.event_seq, d.receiver_id LIMIT ?"
)
_DEAD_LETTERS: Final = (
    "SELECT l.id, l.receiver_id, l.attempts, l.error_type, l.error_message, l.failed_at,"
    " e.id, e.name, e.body, e.published_at"
    " FROM dead_letters AS l JOIN events AS e ON e.seq = l.event_seq"
    " ORDER BY l.failed_at, l.rowid LIMIT ?"
)
_REVIVE_ALL: Final = (
    "UPDATE deliveries SET state = 0, attempts = 0"
    " WHERE (event_seq, receiver_id) IN (SELECT event_seq, receiver_id FROM dead_letters)"
)
_REVIVE_ONE: Final = (
    "UPDATE deliveries SET state = 0, attempts = 0 WHERE (event_seq, receiver_id)"
    " IN (SELECT event_seq, receiver_id FROM dead_letters WHERE id = ?)"
)
_DELETE_ALL_LETTERS: Final = "DELETE FROM dead_letters"
_DELETE_LETTER: Final = "DELETE FROM dead_letters WHERE id = ?"
_EVENT_TIMES: Final = "SELECT seq, published_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_DELETE_DONE: Final = "DELETE FROM deliveries WHERE event_seq = ? AND state = 1"
_DELETE_EMPTY_EVENT: Final = (
    "DELETE FROM events WHERE seq = ?1"
    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)"
)

_PAGE: Final = 512  # pending deliveries fetched per round trip to the thread
_PRUNE_CHUNK: Final = 2000  # events examined per prune transaction
_RETENTION_EVERY: Final = 60.0  # seconds between retention passes when nothing is left over
_RAW_CHARS: Final = 1000  # how much of an unreadable body a dead letter keeps

# Request kinds for the write batch: plain tuples, the cheapest thing to build per call.
_APPEND, _START, _COMPLETE_KIND, _DEAD = 0, 1, 2, 3
_PER_REQUEST_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    TypeError,
    ValueError,
)
_NEW, _OPENING, _OPEN, _CLOSING, _CLOSED, _BROKEN = range(6)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:  # the protocol's times are aware; be lenient and read UTC
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class _Batch:
    """Write requests that will share one transaction, and the event that wakes their callers."""

    __slots__ = ("appends", "done", "errors", "failure", "requests")

    def __init__(self, done: anyio.Event) -> None:
        self.requests: list[tuple[Any, ...]] = []
        self.appends = 0
        self.done = done
        self.failure: StoreError | None = None  # the whole transaction failed
        self.errors: dict[int, StoreError] = {}  # one request failed on its own


class _Call:
    """A request that runs alone on the store thread (reads, maintenance, open, close)."""

    __slots__ = ("doing", "done", "error", "function", "result")

    def __init__(self, function: Callable[[], Any], doing: str, done: anyio.Event) -> None:
        self.function = function
        self.doing = doing
        self.done = done
        self.result: Any = None
        self.error: StoreError | None = None


def _loop_caller() -> tuple[Callable[[Callable[[], object]], object], Callable[[], Any]]:
    """How to schedule a callback on the current event loop from another thread, and the
    cheapest event its tasks can wait on (on asyncio, ``asyncio.Event``: one less layer)."""
    token = anyio.lowlevel.current_token()
    native = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return native.call_soon_threadsafe, asyncio.Event
    run_sync_soon = getattr(native, "run_sync_soon", None)  # trio.lowlevel.TrioToken
    if callable(run_sync_soon):
        return run_sync_soon, anyio.Event
    return functools.partial(anyio.from_thread.run_sync, token=token), anyio.Event  # blocking


class SQLiteStore:
    """A journal in one SQLite file (WAL mode), for at-least-once delivery across a crash.

    ``synchronous`` is ``"FULL"`` (appends survive power loss) or ``"NORMAL"``
    (appends survive a process kill; faster). ``busy_timeout`` is how many
    seconds a write waits for a lock held by another connection before the call
    raises ``StoreError``. ``max_batch`` caps the appends per transaction.
    ``retention`` prunes done deliveries of events older than that, on open and
    then about once a minute, a bounded chunk at a time. ``read_only=True``
    opens without the lock, for inspecting a journal another process has open.

    Open, use and close a store from one event loop. A new file is created with
    mode 0600; so are its sidecars (see the module docstring).
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
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
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
        self._lock_fd: int | None = None
        self._next_seq = 1
        self._synchronous_now = ""
        self._retention_after: int | None = 0  # resume point of the retention pass
        self._retention_due = math.inf

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r})"

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
        """Record ``event`` and one pending delivery per distinct receiver id, durably.

        Returns after the commit that holds it; ``StoreError`` if that commit
        failed (disk full, lock held past ``busy_timeout``) or the event id is
        already in the journal. Cancelling the wait does not withdraw the
        request: the event may still be committed.
        """
        # The hot path: inlined, and anything that can wait runs on the store thread.
        request = (_APPEND, event.id, event.name, event.to_json(), event.occurred_at, receiver_ids)
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
                    _to_us(letter.event.occurred_at),
                    letter.receiver_id,
                    letter.attempts,
                    letter.error_type,
                    letter.error_message,
                    _to_us(letter.failed_at),
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

        A row whose body cannot be read is turned into a dead letter with the
        reason (its event a placeholder named ``aevents.journal.unreadable``
        unless the stored name is valid), counted in ``unreadable`` and skipped.
        """
        after: tuple[int, str] | None = (0, "")
        while after is not None:
            page: list[PendingDelivery]
            page, after = await self._call(
                functools.partial(self._pending_page_on_thread, after),
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
        cutoff = None if older_than is None else _to_us(older_than)
        removed: int = await self._call(
            functools.partial(self._prune_on_thread, cutoff), "could not prune"
        )
        return removed

    async def stats(self) -> StoreStats:
        """Counts of events and of deliveries by state."""
        result: StoreStats = await self._call(self._stats_on_thread, "could not count")
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

    # -- the store thread ----------------------------------------------------------------

    def _serve(self) -> None:
        get = self._queue.get
        try:
            while True:
                timeout = self._retention_due - time.monotonic()
                try:
                    item = get(timeout=max(timeout, 0.0)) if timeout < math.inf else get()
                except queue.Empty:
                    self._retention_pass()
                    continue
                if type(item) is _Batch:
                    with self._lock:
                        if self._open_batch is item:
                            self._open_batch = None
                    self._commit(item)
                    self._wake(item.done)
                    if time.monotonic() >= self._retention_due:
                        self._retention_pass()
                else:
                    assert isinstance(item, _Call)
                    try:
                        item.result = item.function()
                    except StoreError as exc:
                        item.error = exc
                    except Exception as exc:  # sqlite3.Error, OSError, ...: the store goes on
                        self._rollback()
                        item.error = self._error(exc, item.doing)
                    finished = self._conn is None
                    self._wake(item.done)
                    if finished:
                        return
        except BaseException as exc:  # a bug: fail every caller rather than leave one waiting
            logger.exception("journal %r: the store thread stopped", self.path)
            self._crash(exc)

    def _wake(self, event: anyio.Event) -> None:
        try:
            self._call_soon(event.set)
        except Exception:  # the event loop is gone, and so are the callers
            logger.debug("journal %r: could not wake a caller", self.path, exc_info=True)

    def _crash(self, exc: BaseException) -> None:
        error = StoreError(self.path, f"the store thread stopped: {exc!r}")
        with self._lock:
            self._state = _BROKEN
            self._writable = False
            self._open_batch = None
            items: list[_Batch | _Call] = []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        for item in items:
            if isinstance(item, _Batch):
                item.failure = error
            else:
                item.error = error
            self._wake(item.done)
        self._release()

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            problem = (
                f"{doing}: another connection held the journal locked for longer than "
                f"busy_timeout={self.busy_timeout:g}s"
            )
        elif name.startswith("SQLITE_FULL"):
            problem = f"{doing}: the disk is full ({exc})"
        else:
            problem = f"{doing}: {exc}"
        error = StoreError(self.path, problem)
        error.__cause__ = exc
        return error

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite may have rolled back already
                logger.debug("journal %r: rollback failed", self.path, exc_info=True)

    def _set_synchronous(self, level: str) -> None:
        if level != self._synchronous_now:
            assert self._conn is not None
            self._conn.execute(_SYNCHRONOUS[level])
            self._synchronous_now = level

    def _commit(self, batch: _Batch) -> None:
        try:
            self._write_requests(batch.requests)
        except _PER_REQUEST_ERRORS as exc:
            if len(batch.requests) == 1:
                batch.errors[0] = self._error(exc, "could not record")
                return
            for index, request in enumerate(batch.requests):  # find the culprit, save the rest
                try:
                    self._write_requests([request])
                except _PER_REQUEST_ERRORS as single:
                    batch.errors[index] = self._error(single, "could not record")
                except sqlite3.Error as whole:
                    for rest in range(index, len(batch.requests)):
                        batch.errors[rest] = self._error(whole, "could not record")
                    return
        except sqlite3.Error as exc:
            batch.failure = self._error(exc, "could not record")

    def _write_requests(self, requests: Sequence[tuple[Any, ...]]) -> None:
        seq = self._next_seq
        events: list[tuple[Any, ...]] = []
        deliveries: list[tuple[int, str]] = []
        starts: list[tuple[int, str, str]] = []
        completes: list[tuple[str, str]] = []
        letters: list[tuple[Any, ...]] = []
        for request in requests:
            kind = request[0]
            if kind == _APPEND:
                _, event_id, name, body, occurred_at, receiver_ids = request
                events.append((seq, event_id, name, body, (occurred_at - _EPOCH) // _MICROSECOND))
                if len(receiver_ids) == 1:
                    deliveries.append((seq, receiver_ids[0]))
                else:
                    deliveries += [(seq, receiver) for receiver in dict.fromkeys(receiver_ids)]
                seq += 1
            elif kind == _START:
                starts += request[1]
            elif kind == _COMPLETE_KIND:
                completes += request[1]
            else:
                letters += request[1]
        conn = self._conn
        assert conn is not None
        # Only appends and dead letters need the configured durability; see the module docstring.
        self._set_synchronous(self.synchronous if events or letters else "NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            if events:
                _insert_rows(conn, _INSERT_EVENT, _INSERT_EVENTS, events)
            if deliveries:
                _insert_rows(conn, _INSERT_DELIVERY, _INSERT_DELIVERIES, deliveries)
            if starts:
                conn.executemany(_START_ATTEMPT, starts)
            if completes:
                conn.executemany(_COMPLETE, completes)
            for letter in letters:
                seq = self._insert_letter(conn, letter, seq)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._next_seq = seq

    def _insert_letter(self, conn: sqlite3.Connection, letter: tuple[Any, ...], seq: int) -> int:
        letter_id, event_id, name, body, published, receiver_id, attempts, *details = letter
        row = conn.execute(_FIND_EVENT, (event_id,)).fetchone()
        if row is None:  # a letter for an event this journal never saw: keep it whole
            conn.execute(_INSERT_EVENT, (seq, event_id, name, body, published))
            event_seq, seq = seq, seq + 1
        else:
            event_seq = row[0]
        conn.execute(_KILL_DELIVERY, (event_seq, receiver_id, attempts))
        conn.execute(_INSERT_LETTER, (letter_id, event_seq, receiver_id, attempts, *details))
        return seq

    def _decode(self, event_id: Any, name: Any, body: Any, published: Any) -> tuple[Event, str]:
        """The stored event, or a placeholder and the reason it could not be read."""
        try:
            return Event.from_json(body), ""
        except Exception as exc:
            _, reason = describe_error(exc)
        raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
        try:
            label = validate_name(name)
        except InvalidEventNameError:
            label = UNREADABLE_EVENT
        occurred_at = _from_us(published) if isinstance(published, int) else _EPOCH
        payload = {"raw": raw.decode("utf-8", "replace")[:_RAW_CHARS]}
        return _make_event(str(event_id), label, payload, occurred_at, {}), reason

    # -- work done on the thread, one call at a time ----------------------------------------

    def _open_on_thread(self) -> None:
        try:
            self._open_journal()
        except BaseException:
            self._close_on_thread()
            raise
        with self._lock:
            if self._state == _OPENING:
                self._state = _OPEN
                self._writable = not self.read_only

    def _open_journal(self) -> None:
        exists = self._check_header()
        if not self.read_only:
            self._lock_fd = self._acquire_lock()
            if not exists:
                self._create_file()
        elif not exists:
            raise StoreError(self.path, "does not exist")
        target, uri = (f"file:{self.path}?mode=ro", True) if self.read_only else (self.path, False)
        try:
            conn = sqlite3.connect(
                target,
                timeout=self.busy_timeout,
                isolation_level=None,
                cached_statements=64,
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise StoreError(self.path, f"cannot be opened ({exc})") from exc
        self._conn = conn
        version = self._check_schema(conn)
        if not self.read_only:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(self.path, f"cannot use WAL mode (journal_mode is {mode!r})")
                if version < SCHEMA_VERSION:
                    self._migrate(conn, version)
                self._set_synchronous(self.synchronous)
                self._next_seq = conn.execute(
                    "SELECT coalesce(max(seq), 0) + 1 FROM events"
                ).fetchone()[0]
            except sqlite3.Error as exc:
                raise self._error(exc, "could not be prepared") from exc
            self._apply_requests()
            if self.retention is not None:  # the first chunk now, the rest in the background
                self._retention_after = 0
                self._retention_pass()

    def _check_header(self) -> bool:
        """Reject what is plainly not our journal before touching anything; say if it exists."""
        try:
            with open(self.path, "rb") as file:
                header = file.read(100)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
                raise StoreError(
                    self.path, "cannot be created: its directory does not exist"
                ) from None
            return False
        except IsADirectoryError:
            raise StoreError(self.path, "is a directory, not a journal file") from None
        except OSError as exc:
            raise StoreError(self.path, f"cannot be read ({exc.strerror})") from exc
        if not header:
            return True  # an empty file is an empty database
        if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
            raise StoreError(
                self.path, "is not an aevents journal: not an SQLite database; left untouched"
            )
        application_id = int.from_bytes(header[68:72], "big")
        version = int.from_bytes(header[60:64], "big")
        self._check_identity(application_id, version, has_tables=False)
        return True

    def _check_identity(self, application_id: int, version: int, *, has_tables: bool) -> None:
        application_id &= 0xFFFFFFFF
        if application_id not in (0, APPLICATION_ID) or (
            application_id == 0 and (version or has_tables)
        ):
            raise StoreError(
                self.path,
                "is not an aevents journal: an SQLite database of another application "
                f"(application_id {application_id:#x}); left untouched",
            )
        if application_id == APPLICATION_ID and version > SCHEMA_VERSION:
            raise StoreError(
                self.path,
                f"was written by a newer aevents (schema version {version}, this one reads up "
                f"to {SCHEMA_VERSION}); upgrade aevents; left untouched",
            )

    def _check_schema(self, conn: sqlite3.Connection) -> int:
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                self.path, f"is corrupt or not an SQLite database ({exc}); left untouched"
            ) from exc
        self._check_identity(application_id, version, has_tables=bool(tables))
        if version == SCHEMA_VERSION and not tables >= _TABLES:
            missing = ", ".join(sorted(_TABLES - tables))
            raise StoreError(self.path, f"is corrupt: tables missing ({missing}); left untouched")
        if version < SCHEMA_VERSION and self.read_only:
            raise StoreError(
                self.path, "has an older schema; open it once read-write to migrate it"
            )
        return int(version)

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(_SET_APPLICATION_ID)
            conn.execute(_SET_USER_VERSION)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _acquire_lock(self) -> int:
        try:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(self.path, f"cannot create its lock file ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalInUseError(self.path) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(self.path, f"cannot lock {self.path + '.lock'!r} ({exc})") from exc
        return fd

    def _create_file(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return  # appeared meanwhile: the schema check decides
        except OSError as exc:
            raise StoreError(self.path, f"cannot be created ({exc.strerror})") from exc
        os.close(fd)

    def _apply_requests(self) -> None:
        """Apply ``<path>.requests`` left by ``request_redelivery``, then delete it."""
        target = self.path + ".requests"
        try:
            fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("journal %r: cannot read %r (%s)", self.path, target, exc.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            everything, letter_ids = _parse_requests(b"".join(chunks), self.path)
            try:
                count = self._redeliver_on_thread(None if everything else letter_ids)
            except sqlite3.Error as exc:
                logger.warning(
                    "journal %r: redelivery requests kept for the next start: %s", self.path, exc
                )
                self._rollback()
                return
            logger.info("journal %r: redelivered %d dead letter(s) as requested", self.path, count)
            os.unlink(target)
        finally:
            os.close(fd)

    def _close_on_thread(self) -> None:
        self._rollback()
        self._release()

    def _release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                logger.debug("journal %r: close failed", self.path, exc_info=True)
            self._conn = None
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _dead_letters_on_thread(self, limit: int) -> list[DeadLetter]:
        assert self._conn is not None
        letters = []
        for row in self._conn.execute(_DEAD_LETTERS, (limit,)).fetchall():
            letter_id, receiver_id, attempts, error_type, message, failed, *stored = row
            event, _ = self._decode(*stored)
            failed_at = _from_us(failed)
            letters.append(
                DeadLetter(letter_id, event, receiver_id, attempts, error_type, message, failed_at)
            )
        return letters

    def _redeliver_on_thread(self, letter_ids: list[str] | None) -> int:
        self._check_writable()
        conn = self._conn
        assert conn is not None
        self._set_synchronous(self.synchronous)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if letter_ids is None:
                conn.execute(_REVIVE_ALL)
                count = conn.execute(_DELETE_ALL_LETTERS).rowcount
            else:
                count = 0
                for letter_id in dict.fromkeys(letter_ids):
                    conn.execute(_REVIVE_ONE, (letter_id,))
                    count += conn.execute(_DELETE_LETTER, (letter_id,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return count

    def _pending_page_on_thread(
        self, after: tuple[int, str]
    ) -> tuple[list[PendingDelivery], tuple[int, str] | None]:
        conn = self._conn
        assert conn is not None
        rows = conn.execute(_PENDING_PAGE, (*after, _PAGE)).fetchall()
        page: list[PendingDelivery] = []
        unreadable: list[tuple[Any, ...]] = []
        last_seq, event, reason = None, None, ""
        for seq, receiver_id, attempts, event_id, name, body, published in rows:
            if seq != last_seq:
                (event, reason), last_seq = self._decode(event_id, name, body, published), seq
            assert event is not None
            if not reason:
                page.append(PendingDelivery(event, receiver_id, attempts))
                continue
            unreadable.append(
                (
                    new_event_id(),
                    event_id,
                    name,
                    body,
                    published,
                    receiver_id,
                    attempts,
                    "aevents.journal.UnreadableEvent",
                    f"the journal row could not be read: {reason}",
                    _to_us(datetime.now(UTC)),
                )
            )
        if unreadable:
            try:
                self._write_requests([(_DEAD, unreadable)])
            except sqlite3.Error as exc:  # they stay pending; the next start tries again
                logger.warning("journal %r: could not park unreadable rows: %s", self.path, exc)
            else:
                self.unreadable += len(unreadable)
                logger.warning(
                    "journal %r: %d unreadable deliver%s turned into dead letters",
                    self.path,
                    len(unreadable),
                    "y" if len(unreadable) == 1 else "ies",
                )
        last = rows[-1] if len(rows) == _PAGE else None
        return page, None if last is None else (last[0], last[1])

    def _stats_on_thread(self) -> StoreStats:
        conn = self._conn
        assert conn is not None
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        counts = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
        return StoreStats(
            events=events, pending=counts.get(0, 0), done=counts.get(1, 0), dead=counts.get(2, 0)
        )

    def _prune_on_thread(self, cutoff: int | None) -> int:
        self._check_writable()
        removed, after = 0, 0
        while True:
            count, resume = self._prune_chunk(after, cutoff, stop_at_newer=False)
            removed += count
            if resume is None:
                return removed
            after = resume

    def _retention_pass(self) -> None:
        """Prune one chunk for ``retention``; come back soon if there is more, else in a minute."""
        assert self.retention is not None
        if self._retention_after is None:
            self._retention_after = 0
        cutoff = _to_us(datetime.now(UTC) - self.retention)
        try:
            _, self._retention_after = self._prune_chunk(
                self._retention_after, cutoff, stop_at_newer=True
            )
        except sqlite3.Error as exc:
            logger.warning("journal %r: retention pruning failed: %s", self.path, exc)
            self._retention_after = None
        more = self._retention_after is not None
        self._retention_due = time.monotonic() + (0.0 if more else _RETENTION_EVERY)

    def _prune_chunk(
        self, after: int, cutoff: int | None, *, stop_at_newer: bool
    ) -> tuple[int, int | None]:
        """Prune among the next events after seq ``after``; return (removed, resume point)."""
        conn = self._conn
        assert conn is not None
        rows = conn.execute(_EVENT_TIMES, (after, _PRUNE_CHUNK)).fetchall()
        finished = len(rows) < _PRUNE_CHUNK
        old: list[tuple[int]] = []
        for seq, published in rows:
            if cutoff is not None and published >= cutoff:
                if stop_at_newer:  # retention assumes publish times grow with seq
                    finished = True
                    break
            else:
                old.append((seq,))
            after = seq
        removed = 0
        if old:
            self._set_synchronous(self.synchronous)
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.executemany(_DELETE_DONE, old).rowcount
                conn.executemany(_DELETE_EMPTY_EVENT, old)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return removed, None if finished else after

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(self.path, "was opened read-only")


def _insert_rows(
    conn: sqlite3.Connection, single: str, multi: dict[int, str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` with as few statement steps as the multi-row forms allow."""
    start = 0
    for size in _CHUNKS:
        end = start + (len(rows) - start) // size * size
        if end > start:
            flat = [tuple(chain(*rows[at : at + size])) for at in range(start, end, size)]
            conn.executemany(multi[size], flat)
            start = end
    if start < len(rows):
        conn.executemany(single, rows[start:])


def _loop_caller_unset(callback: Callable[[], object]) -> object:  # pragma: no cover
    raise RuntimeError("the store is not open")


def _parse_requests(data: bytes, path: str) -> tuple[bool, list[str]]:
    """``(redeliver everything?, letter ids)`` from the JSON lines of a requests file."""
    everything, letter_ids = False, []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            request = orjson.loads(line)
            wanted = request["redeliver"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            logger.warning("journal %r: ignoring unreadable request on line %d", path, number)
            continue
        if wanted == "all":
            everything = True
        elif isinstance(wanted, list) and all(isinstance(item, str) for item in wanted):
            letter_ids += wanted
        else:
            logger.warning("journal %r: ignoring malformed request on line %d", path, number)
    return everything, letter_ids


def request_redelivery(path: str | os.PathLike[str], letter_ids: Sequence[str] | None) -> None:
    """Ask for dead letters (all when ``None``) to be redelivered the next time ``path`` opens.

    Appends one JSON line to ``<path>.requests`` (mode 0600) under an ``flock``,
    so it is safe while the owning process starts up and consumes the file.
    """
    target = os.fsdecode(os.fspath(path)) + ".requests"
    wanted: str | list[str] = "all" if letter_ids is None else list(letter_ids)
    line = orjson.dumps({"redeliver": wanted}) + b"\n"
    while True:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(target)
            except FileNotFoundError:
                continue  # consumed while we waited: write a fresh file
            if os.path.samestat(current, os.fstat(fd)):
                os.write(fd, line)
                return
        finally:
            os.close(fd)
