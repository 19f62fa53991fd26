"""The SQLiteStore's thread: one loop that owns the connection and group-commits writes.

``_JournalThread`` is the half of ``SQLiteStore`` that runs on the store thread.
``_serve`` takes requests off the queue one at a time: a ``_Batch`` of writes
(``append``, ``start_attempts``, ``complete``, ``dead_letter``) is written in
one ``BEGIN IMMEDIATE`` transaction and committed once, then every caller in
it is woken; a ``_Call`` runs alone (see ``_sqlite_calls``). When idle, the
loop runs the background retention pass. If the loop itself fails, every
queued caller gets a ``StoreError`` rather than waiting for ever.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel

from .._exceptions import StoreError
from ._sqlite_lock import JournalLock
from ._sqlite_schema import (
    EPOCH,
    MICROSECOND,
    SYNCHRONOUS,
    rollback_transaction,
    sqlite_error,
    to_us,
)

logger = logging.getLogger("aevents.store")

_INSERT_EVENT: Final = (
    "INSERT INTO events (seq, id, name, body, published_at) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_DELIVERY: Final = "INSERT INTO deliveries (event_seq, receiver_id) VALUES (?, ?)"
# The first event appended with a key keeps it; a later one is journaled without its key.
_INSERT_KEY: Final = (
    "INSERT INTO idempotency (key, occurred_at, body) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING"
)
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
_EVENT_TIMES: Final = "SELECT seq, published_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_DELETE_DONE: Final = "DELETE FROM deliveries WHERE event_seq = ? AND state = 1"
_DELETE_EMPTY_EVENT: Final = (
    "DELETE FROM events WHERE seq = ?1"
    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)"
)

_PRUNE_CHUNK: Final = 2000  # events examined per prune transaction
_RETENTION_EVERY: Final = 60.0  # seconds between retention passes when nothing is left over

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


class _JournalThread:
    """The store thread's side of ``SQLiteStore``: the loop, group commit and waking callers.

    ``SQLiteStore.__init__`` sets every attribute declared here; the first group
    is shared with the async side under ``_lock``, the second is the thread's own.
    """

    path: str
    synchronous: str
    busy_timeout: float
    retention: timedelta | None
    _lock: threading.Lock
    _state: int
    _writable: bool
    _queue: queue.SimpleQueue[_Batch | _Call]
    _open_batch: _Batch | None
    _call_soon: Callable[[Callable[[], object]], object]

    _conn: sqlite3.Connection | None
    _lock_file: JournalLock
    _real: str
    _next_seq: int
    _synchronous_now: str
    _retention_after: int | None
    _retention_due: float

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
        return sqlite_error(self.path, exc, doing, busy_timeout=self.busy_timeout)

    def _rollback(self) -> None:
        rollback_transaction(self._conn, self.path)

    def _set_synchronous(self, level: str) -> None:
        if level != self._synchronous_now:
            assert self._conn is not None
            self._conn.execute(SYNCHRONOUS[level])
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
        keys: list[tuple[str, int, bytes]] = []
        starts: list[tuple[int, str, str]] = []
        completes: list[tuple[str, str]] = []
        letters: list[tuple[Any, ...]] = []
        for request in requests:
            kind = request[0]
            if kind == _APPEND:
                _, event_id, name, body, occurred_at, receiver_ids, key = request
                occurred = (occurred_at - EPOCH) // MICROSECOND
                events.append((seq, event_id, name, body, occurred))
                if key is not None:
                    keys.append((key, occurred, body))
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
            if keys:
                conn.executemany(_INSERT_KEY, keys)
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
        if events or letters:
            self._lock_file.track_wal()

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

    def _release(self) -> None:
        conn = self._conn
        if conn is not None:
            if self._lock_file.recorded:  # opened read-write: leave nothing in the -wal
                try:
                    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                except sqlite3.Error:
                    logger.debug("journal %r: checkpoint failed", self.path, exc_info=True)
                else:
                    if not busy:
                        self._lock_file.checkpointed()
            try:
                conn.close()
            except sqlite3.Error:
                logger.debug("journal %r: close failed", self.path, exc_info=True)
            self._conn = None
        self._lock_file.release()

    def _retention_pass(self) -> None:
        """Prune one chunk for ``retention``; come back soon if there is more, else in a minute."""
        assert self.retention is not None
        if self._retention_after is None:
            self._retention_after = 0
        cutoff = to_us(datetime.now(UTC) - self.retention)
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
