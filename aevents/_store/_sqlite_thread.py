"""The store thread: one thread that owns the open journal, runs requests one at a time
and group-commits writes.

An sqlite3 connection belongs to the thread that uses it, and anyio's worker
threads are picked at random, so ``StoreThread`` starts one thread per open and
keeps it until close. What it drives is a ``Session``: an object opened on the
thread (the store's ``OpenJournal``, which owns the connection) and closed
there. Async callers hand it requests and sleep on an event; the thread wakes
them with a non-blocking call into their event loop (``call_soon_threadsafe``
on asyncio, ``TrioToken.run_sync_soon`` on trio). No caller holds a worker
thread.

Two kinds of request go through one FIFO queue:

* a ``Batch`` of writes. ``submit_append`` and ``submit`` add a request to the
  batch that is waiting for the thread, opening a new one when it is full; the
  thread writes a whole batch with one ``Session.write`` (one transaction) and
  wakes every caller in it. A request that fails on its own (a duplicate event
  id, say) is found by writing the batch one request at a time, so it fails
  alone and the others still commit.
* a call: a function of the session that runs alone (reads, maintenance,
  close). Writes submitted after a call queue behind it.

When the queue has been empty until ``Session.idle_at``, the thread runs
``Session.idle`` (the store's retention pass). If the loop itself fails, every
queued caller gets a ``StoreError`` rather than waiting for ever, and the
thread is left broken.

The thread knows SQLite's errors by default; another engine's store
(``PostgresStore``) gives it its own ``ThreadErrors``: which errors fail one
request alone, which fail the whole batch, and how each becomes a ``StoreError``.
"""

from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs

from .._exceptions import StoreError
from .._lowlevel import Waitable, loop_caller
from ._sqlite_schema import sqlite_error

logger = logging.getLogger("aevents.store")

_PER_REQUEST_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    TypeError,
    ValueError,
)
_NEW, _OPENING, _OPEN, _CLOSING, _CLOSED, _BROKEN = range(6)
_T = TypeVar("_T")


def _sqlite_store_error(
    path: str, exc: BaseException, doing: str, busy_timeout: float
) -> StoreError:
    return sqlite_error(path, exc, doing, busy_timeout=busy_timeout)


@attrs.frozen
class ThreadErrors:
    """How a ``StoreThread`` tells errors apart and names them.

    ``per_request``: a batch that raises one of these is written again one request
    at a time, so that the request at fault fails alone. ``whole``: an engine error
    that fails the whole batch. ``convert(path, exc, doing, busy_timeout)``: the
    ``StoreError`` a caller gets for ``exc``.
    """

    per_request: tuple[type[BaseException], ...]
    whole: tuple[type[BaseException], ...]
    convert: Callable[[str, BaseException, str, float], StoreError]


SQLITE_ERRORS: Final = ThreadErrors(
    per_request=_PER_REQUEST_ERRORS, whole=(sqlite3.Error,), convert=_sqlite_store_error
)


class Session(Protocol):
    """What a ``StoreThread`` drives between open and close. Only the thread calls it."""

    @property
    def idle_at(self) -> float:
        """When ``idle`` is next due on the ``time.monotonic`` clock; ``math.inf``: never."""

    def write(self, requests: Sequence[tuple[Any, ...]]) -> object:
        """Write ``requests`` in one transaction: all of them, or none if it raises."""

    def rollback(self) -> None:
        """Roll back what a failed call left open; never raises."""

    def idle(self) -> None:
        """Background work, run once the queue has been empty until ``idle_at``."""

    def close(self) -> None:
        """Release everything the session holds; never raises."""


_S = TypeVar("_S", bound=Session)


class Batch:
    """Write requests that will share one transaction, and the event that wakes their callers."""

    __slots__ = ("appends", "done", "errors", "failure", "requests")

    def __init__(self, done: Waitable) -> None:
        self.requests: list[tuple[Any, ...]] = []
        self.appends = 0
        self.done = done
        self.failure: StoreError | None = None  # the whole transaction failed
        self.errors: dict[int, StoreError] = {}  # one request failed on its own

    def raise_for(self, index: int) -> None:
        """Raise the error of request ``index``, if the batch failed or that request did."""
        if self.failure is not None:  # a fresh exception per caller: they share the failure
            raise StoreError(self.failure.path, self.failure.problem) from self.failure.__cause__
        error = self.errors.get(index)
        if error is not None:
            raise error


class _Call(Generic[_S]):
    """A function of the session that runs alone on the thread."""

    __slots__ = ("doing", "done", "error", "function", "last", "result")

    def __init__(
        self, function: Callable[[_S], Any], doing: str, done: Waitable, *, last: bool = False
    ) -> None:
        self.function = function
        self.doing = doing
        self.done = done
        self.last = last  # the thread ends after it: the close
        self.result: Any = None
        self.error: StoreError | None = None


class _Opening(Generic[_S]):
    """The first request of a run: open the session on the thread."""

    __slots__ = ("done", "error", "opener", "writable")

    def __init__(self, opener: Callable[[], _S], writable: bool, done: Waitable) -> None:
        self.opener = opener
        self.writable = writable
        self.done = done
        self.error: StoreError | None = None


class StoreThread(Generic[_S]):
    """One thread that owns a session from open to close and serves a queue of requests.

    Open, use and close it from one event loop. Every public method but
    ``start`` and ``stop`` raises ``StoreError`` naming ``path`` when the thread
    cannot take the request (not open, read-only, or broken).
    """

    def __init__(self, path: str, *, errors: ThreadErrors = SQLITE_ERRORS) -> None:
        self.path = path
        self._errors = errors
        self._lock = threading.Lock()  # guards _state, _writable, _open_batch and puts on _queue
        self._state = _NEW
        self._writable = False  # open and accepting writes: the one check on the append path
        self._max_batch = 1
        self._busy_timeout = 0.0
        self._queue: queue.SimpleQueue[Batch | _Call[_S]] = queue.SimpleQueue()
        self._open_batch: Batch | None = None
        self._closing: _Call[_S] | None = None
        self._thread: threading.Thread | None = None
        self._call_soon: Callable[[Callable[[], object]], object] = _loop_caller_unset
        self._new_event: Callable[[], Waitable] = anyio.Event

    async def start(
        self, opener: Callable[[], _S], *, writable: bool, max_batch: int, busy_timeout: float
    ) -> None:
        """Start the thread and open the session there with ``opener``.

        ``writable``: whether writes are accepted; ``max_batch``: the most
        appends in one transaction; ``busy_timeout``: what an error for a
        locked journal quotes. Raises what ``opener`` raised (an sqlite3 error
        as a ``StoreError``). Not interruptible midway: a cancellation takes
        effect once the session is open, and closes it again.
        """
        with self._lock:
            if self._state not in (_NEW, _CLOSED):
                raise StoreError(self.path, "is already open (or opening) in this store")
            self._state = _OPENING
        self._max_batch = max_batch
        self._busy_timeout = busy_timeout
        self._call_soon, self._new_event = loop_caller()
        self._queue = queue.SimpleQueue()
        opening = _Opening(opener, writable, self._new_event())
        self._thread = threading.Thread(
            target=self._serve, args=(opening,), name=f"aevents-journal:{self.path}", daemon=True
        )
        self._thread.start()
        with anyio.CancelScope(shield=True):
            await opening.done.wait()
        if opening.error is not None:
            self._thread.join()
            with self._lock:
                self._state = _CLOSED
            raise opening.error
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.stop()
            raise

    async def stop(self) -> None:
        """Commit what was queued, close the session and end the thread. Idempotent.

        Shielded from cancellation: the queued writes are committed first, so a
        stopped thread never leaves a caller waiting.
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
                    _close_session, "could not close", self._new_event(), last=True
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

    def submit_append(self, request: tuple[Any, ...]) -> tuple[Batch, int]:
        """Add an append to the waiting batch (at most ``max_batch`` appends per batch).

        Returns the batch and the request's index in it: await ``batch.done``,
        then ``batch.raise_for(index)`` if ``batch.failure`` or ``batch.errors``.
        """
        with self._lock:
            if not self._writable:
                raise self._unavailable()
            batch = self._open_batch
            if batch is None or batch.appends >= self._max_batch:
                batch = self._open_batch = Batch(self._new_event())
                self._queue.put(batch)
            index = len(batch.requests)
            batch.requests.append(request)
            batch.appends += 1
        return batch, index

    def submit(self, request: tuple[Any, ...]) -> tuple[Batch, int]:
        """Add another write to the waiting batch (at most ``4 * max_batch`` requests),
        as ``submit_append`` does."""
        with self._lock:
            if not self._writable:
                raise self._unavailable()
            batch = self._open_batch
            if batch is None or len(batch.requests) >= 4 * self._max_batch:
                batch = self._open_batch = Batch(self._new_event())
                self._queue.put(batch)
            index = len(batch.requests)
            batch.requests.append(request)
        return batch, index

    async def call(self, function: Callable[[_S], _T], doing: str, *, writes: bool = False) -> _T:
        """Run ``function(session)`` alone on the thread and return its result.

        ``writes``: refuse it unless writes are accepted. An error becomes a
        ``StoreError`` whose problem starts with ``doing``. Cancelling the wait
        does not withdraw the call: it still runs.
        """
        call: _Call[_S] = _Call(function, doing, self._new_event())
        with self._lock:
            if self._state != _OPEN or (writes and not self._writable):
                raise self._unavailable()
            self._open_batch = None  # writes made after this call queue behind it
            self._queue.put(call)
        await call.done.wait()
        if call.error is not None:
            raise StoreError(self.path, call.error.problem) from call.error.__cause__
        result: _T = call.result
        return result

    def _unavailable(self) -> StoreError:
        if self._state == _OPEN and not self._writable:
            return StoreError(self.path, "was opened read-only")
        if self._state == _BROKEN:
            return StoreError(self.path, "is unusable: its thread stopped on an unexpected error")
        return StoreError(self.path, "is not open; call `await store.open()` first")

    # -- on the thread ---------------------------------------------------------------------

    def _serve(self, opening: _Opening[_S]) -> None:
        session = None
        try:
            session = self._open(opening)
            if session is not None:
                self._run(session)
        except BaseException as exc:  # a bug: fail every caller rather than leave one waiting
            logger.exception("journal %r: the store thread stopped", self.path)
            self._crash(exc, session)

    def _open(self, opening: _Opening[_S]) -> _S | None:
        session = None
        try:
            session = opening.opener()
        except StoreError as exc:
            opening.error = exc
        except Exception as exc:  # the engine's errors, OSError, ...
            opening.error = self._error(exc, "could not open")
        else:
            with self._lock:
                if self._state == _OPENING:
                    self._state = _OPEN
                    self._writable = opening.writable
        self._wake(opening.done)
        return session

    def _run(self, session: _S) -> None:
        get = self._queue.get
        while True:
            timeout = session.idle_at - time.monotonic()
            try:
                item = get(timeout=max(timeout, 0.0)) if timeout < math.inf else get()
            except queue.Empty:
                session.idle()
                continue
            if type(item) is Batch:
                with self._lock:
                    if self._open_batch is item:
                        self._open_batch = None
                self._commit(session, item)
                self._wake(item.done)
                if time.monotonic() >= session.idle_at:
                    session.idle()
            else:
                assert isinstance(item, _Call)
                try:
                    item.result = item.function(session)
                except StoreError as exc:
                    item.error = exc
                except Exception as exc:  # sqlite3.Error, OSError, ...: the store goes on
                    session.rollback()
                    item.error = self._error(exc, item.doing)
                self._wake(item.done)
                if item.last:
                    return

    def _commit(self, session: _S, batch: Batch) -> None:
        per_request, whole_errors = self._errors.per_request, self._errors.whole
        try:
            session.write(batch.requests)
        except per_request as exc:
            if len(batch.requests) == 1:
                batch.errors[0] = self._error(exc, "could not record")
                return
            for index, request in enumerate(batch.requests):  # find the culprit, save the rest
                try:
                    session.write([request])
                except per_request as single:
                    batch.errors[index] = self._error(single, "could not record")
                except whole_errors as whole:
                    for rest in range(index, len(batch.requests)):
                        batch.errors[rest] = self._error(whole, "could not record")
                    return
        except whole_errors as exc:
            batch.failure = self._error(exc, "could not record")
        except StoreError as exc:  # the session named the problem itself
            batch.failure = exc

    def _wake(self, event: Waitable) -> None:
        try:
            self._call_soon(event.set)
        except Exception:  # the event loop is gone, and so are the callers
            logger.debug("journal %r: could not wake a caller", self.path, exc_info=True)

    def _crash(self, exc: BaseException, session: _S | None) -> None:
        error = StoreError(self.path, f"the store thread stopped: {exc!r}")
        with self._lock:
            self._state = _BROKEN
            self._writable = False
            self._open_batch = None
            items: list[Batch | _Call[_S]] = []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        for item in items:
            if isinstance(item, Batch):
                item.failure = error
            else:
                item.error = error
            self._wake(item.done)
        if session is not None:
            session.close()

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        return self._errors.convert(self.path, exc, doing, self._busy_timeout)


def _close_session(session: Session) -> None:
    session.rollback()
    session.close()


def _loop_caller_unset(callback: Callable[[], object]) -> object:  # pragma: no cover
    raise RuntimeError("the store is not open")
