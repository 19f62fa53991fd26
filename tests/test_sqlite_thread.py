"""StoreThread: the store's thread, its queue, group commit and waking callers.

The thread drives any ``Session``; these tests give it a small one that writes
integers into a real SQLite file in ``tmp_path``, so what the thread promises
(batching, order, error isolation, refusals, shutdown, crash) is seen without
the journal's own SQL. Every test runs on each anyio backend.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio import wait_all_tasks_blocked

from aevents._exceptions import StoreError
from aevents._store._sqlite_thread import Batch, StoreThread

pytestmark = pytest.mark.anyio


class Boom(BaseException):
    """What no session should raise: it stops the store thread."""


class RowsSession:
    """A session that inserts each request's integer into ``rows`` (a primary key)."""

    def __init__(self, path: Path, *, idle_at: float = math.inf) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        self.conn.execute("CREATE TABLE IF NOT EXISTS rows (value INTEGER PRIMARY KEY)")
        self.transactions: list[list[int]] = []
        self.idle_at = idle_at
        self.idled = threading.Event()
        self.rollbacks = 0
        self.closed = False

    def write(self, requests: Sequence[tuple[Any, ...]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for (value,) in requests:
                self.conn.execute("INSERT INTO rows VALUES (?)", (value,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self.transactions.append([value for (value,) in requests])

    def rollback(self) -> None:
        self.rollbacks += 1
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def idle(self) -> None:
        self.idle_at = math.inf
        self.idled.set()

    def close(self) -> None:
        self.conn.close()
        self.closed = True

    def values(self) -> list[int]:
        return [row[0] for row in self.conn.execute("SELECT value FROM rows ORDER BY value")]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "rows.db"


@pytest.fixture
def sessions() -> list[RowsSession]:
    """Every session the thread opened, for a look after it stopped."""
    return []


@pytest.fixture
async def thread(
    path: Path, sessions: list[RowsSession], anyio_backend: object
) -> AsyncIterator[StoreThread[RowsSession]]:
    thread: StoreThread[RowsSession] = StoreThread(str(path))
    await start(thread, path, sessions)
    try:
        yield thread
    finally:
        await thread.stop()


async def start(
    thread: StoreThread[RowsSession],
    path: Path,
    sessions: list[RowsSession],
    *,
    writable: bool = True,
    max_batch: int = 256,
    idle_at: float = math.inf,
) -> None:
    def opener() -> RowsSession:
        sessions.append(RowsSession(path, idle_at=idle_at))
        return sessions[-1]

    with anyio.fail_after(10):
        await thread.start(opener, writable=writable, max_batch=max_batch, busy_timeout=0.5)


async def finished(tickets: list[tuple[Batch, int]]) -> list[StoreError | None]:
    """Wait for every ticket's batch; the error each request would raise, or None."""
    outcomes: list[StoreError | None] = []
    with anyio.fail_after(10):
        for batch, index in tickets:
            await batch.done.wait()
            try:
                batch.raise_for(index)
            except StoreError as error:
                outcomes.append(error)
            else:
                outcomes.append(None)
    return outcomes


async def while_held(thread: StoreThread[RowsSession], submit: Callable[[], object]) -> None:
    """Run ``submit`` while the thread is busy with a call, so what it queues waits together."""
    gate = threading.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(thread.call, lambda _: gate.wait(10), "holding the thread")
        await wait_all_tasks_blocked()
        submit()
        gate.set()


async def test_writes_queued_together_share_one_transaction(
    thread: StoreThread[RowsSession], sessions: list[RowsSession]
) -> None:
    """Appends made while the thread is busy are committed in one transaction, in order."""
    tickets: list[tuple[Batch, int]] = []
    await while_held(thread, lambda: tickets.extend(thread.submit_append((n,)) for n in range(50)))
    assert await finished(tickets) == [None] * 50
    assert sessions[0].transactions == [list(range(50))]


async def test_a_batch_holds_at_most_max_batch_appends(
    path: Path, sessions: list[RowsSession], anyio_backend: object
) -> None:
    """With max_batch=3, seven appends take three transactions; other writes take 4 x 3."""
    thread: StoreThread[RowsSession] = StoreThread(str(path))
    await start(thread, path, sessions, max_batch=3)
    try:
        tickets: list[tuple[Batch, int]] = []
        await while_held(
            thread, lambda: tickets.extend(thread.submit_append((n,)) for n in range(7))
        )
        await while_held(thread, lambda: tickets.extend(thread.submit((n,)) for n in range(7, 20)))
        assert await finished(tickets) == [None] * 20
        assert [len(batch) for batch in sessions[0].transactions] == [3, 3, 1, 12, 1]
    finally:
        await thread.stop()


async def test_a_request_that_fails_on_its_own_fails_alone(
    thread: StoreThread[RowsSession],
) -> None:
    """A duplicate in a batch raises StoreError for its caller; the rest of the batch commits."""
    assert await finished([thread.submit_append((1,))]) == [None]
    tickets: list[tuple[Batch, int]] = []
    await while_held(thread, lambda: tickets.extend(thread.submit_append((n,)) for n in (2, 1, 3)))
    first, duplicate, last = await finished(tickets)
    assert (first, last) == (None, None)
    assert duplicate is not None
    assert duplicate.problem.startswith("could not record: UNIQUE constraint failed")
    assert isinstance(duplicate.__cause__, sqlite3.IntegrityError)
    assert await thread.call(lambda session: session.values(), "read") == [1, 2, 3]


async def test_a_transaction_that_fails_fails_every_caller_in_it(
    thread: StoreThread[RowsSession], path: Path
) -> None:
    """A journal locked by another connection fails the whole batch; writes work once it is free."""
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        tickets: list[tuple[Batch, int]] = []
        await while_held(thread, lambda: tickets.extend(thread.submit((n,)) for n in range(3)))
        errors = await finished(tickets)
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert len({id(error) for error in errors}) == 3  # each caller raises its own exception
    for error in errors:
        assert error is not None
        assert "locked for longer than busy_timeout=0.5s" in error.problem
    assert await finished([thread.submit((7,))]) == [None]


async def test_a_call_runs_after_the_writes_queued_before_it(
    thread: StoreThread[RowsSession],
) -> None:
    """The queue is first in, first out: a read sees every write submitted before it."""
    tickets = [thread.submit_append((n,)) for n in range(5)]
    with anyio.fail_after(10):
        assert await thread.call(lambda session: session.values(), "read") == list(range(5))
    assert await finished(tickets) == [None] * 5


async def test_a_failing_call_raises_store_error_and_the_thread_goes_on(
    thread: StoreThread[RowsSession], sessions: list[RowsSession]
) -> None:
    """An sqlite3 error in a call becomes a StoreError saying what was being done."""

    def broken(session: RowsSession) -> None:
        session.conn.execute("BEGIN")
        session.conn.execute("SELECT * FROM nowhere")

    with anyio.fail_after(10), pytest.raises(StoreError) as caught:
        await thread.call(broken, "could not look")
    assert caught.value.problem == "could not look: no such table: nowhere"
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert sessions[0].rollbacks == 1
    assert not sessions[0].conn.in_transaction
    assert await finished([thread.submit((1,))]) == [None]


async def test_a_store_error_from_a_call_keeps_its_problem(
    thread: StoreThread[RowsSession],
) -> None:
    """A call that raises StoreError itself is reported with its own words."""

    def refuse(session: RowsSession) -> None:
        raise StoreError("elsewhere", "was refused")

    with anyio.fail_after(10), pytest.raises(StoreError, match="was refused") as caught:
        await thread.call(refuse, "could not look")
    assert caught.value.path == thread.path


async def test_a_thread_started_read_only_refuses_writes(
    path: Path, sessions: list[RowsSession], anyio_backend: object
) -> None:
    """Without writable, appends, writes and writing calls raise; reads still run."""
    thread: StoreThread[RowsSession] = StoreThread(str(path))
    await start(thread, path, sessions, writable=False)
    try:
        with pytest.raises(StoreError, match="was opened read-only"):
            thread.submit_append((1,))
        with pytest.raises(StoreError, match="was opened read-only"):
            thread.submit((1,))
        with pytest.raises(StoreError, match="was opened read-only"):
            await thread.call(lambda session: session.values(), "write", writes=True)
        with anyio.fail_after(10):
            assert await thread.call(lambda session: session.values(), "read") == []
    finally:
        await thread.stop()


async def test_requests_before_start_and_after_stop_are_refused(
    path: Path, sessions: list[RowsSession], anyio_backend: object
) -> None:
    """A thread that is not running says how to open the store."""
    thread: StoreThread[RowsSession] = StoreThread(str(path))
    with pytest.raises(StoreError, match=r"is not open; call `await store.open\(\)` first"):
        thread.submit_append((1,))
    await start(thread, path, sessions)
    await thread.stop()
    with pytest.raises(StoreError, match="is not open"):
        await thread.call(lambda session: session.values(), "read")


async def test_stop_commits_what_was_queued_then_closes_the_session(
    thread: StoreThread[RowsSession], sessions: list[RowsSession], path: Path
) -> None:
    """Writes queued before stop are committed and their callers woken; stopping is idempotent."""
    tickets = [thread.submit_append((n,)) for n in range(3)]
    with anyio.fail_after(10):
        await thread.stop()
        await thread.stop()
    assert await finished(tickets) == [None] * 3
    assert sessions[0].closed
    assert sessions[0].rollbacks == 1  # the close rolls back whatever a call left open
    await start(thread, path, sessions)  # and it starts again, with a new session
    assert await thread.call(lambda session: session.values(), "read") == [0, 1, 2]


async def test_starting_twice_is_refused(thread: StoreThread[RowsSession], path: Path) -> None:
    """A running thread cannot be started again until it stops."""
    with pytest.raises(StoreError, match=r"is already open \(or opening\)"):
        await start(thread, path, [])


@pytest.mark.parametrize(
    ("failure", "problem"),
    [
        (sqlite3.OperationalError("unable to open database file"), "could not open: unable"),
        (StoreError("x", "is not an aevents journal"), "is not an aevents journal"),
    ],
    ids=["sqlite-error", "store-error"],
)
async def test_a_failing_opener_leaves_the_thread_ready_to_start_again(
    failure: Exception,
    problem: str,
    path: Path,
    sessions: list[RowsSession],
    anyio_backend: object,
) -> None:
    """What the opener raises reaches the starter as a StoreError; a later start works."""
    thread: StoreThread[RowsSession] = StoreThread(str(path))

    def opener() -> RowsSession:
        raise failure

    with anyio.fail_after(10), pytest.raises(StoreError, match=problem):
        await thread.start(opener, writable=True, max_batch=1, busy_timeout=1)
    with pytest.raises(StoreError, match="is not open"):
        thread.submit((1,))
    await start(thread, path, sessions)
    await thread.stop()


async def test_idle_runs_once_the_queue_has_been_empty_until_it_is_due(
    path: Path, sessions: list[RowsSession], anyio_backend: object
) -> None:
    """A session due for background work at once gets it without any request."""
    thread: StoreThread[RowsSession] = StoreThread(str(path))
    await start(thread, path, sessions, idle_at=0.0)
    try:
        with anyio.fail_after(10):
            assert await anyio.to_thread.run_sync(sessions[0].idled.wait, 10)
    finally:
        await thread.stop()


async def test_a_crash_fails_every_queued_caller_and_leaves_the_thread_broken(
    thread: StoreThread[RowsSession], sessions: list[RowsSession]
) -> None:
    """An exception that escapes the loop wakes every waiting caller with a StoreError."""
    gate = threading.Event()

    def crash(session: RowsSession) -> None:
        gate.wait(10)
        raise Boom

    outcomes: list[BaseException] = []
    answered = anyio.Event()

    async def read() -> None:
        try:
            await thread.call(lambda session: session.values(), "read")
        except StoreError as error:
            outcomes.append(error)
        answered.set()

    async with anyio.create_task_group() as group:
        group.start_soon(thread.call, crash, "crash")
        await wait_all_tasks_blocked()
        ticket = thread.submit((1,))
        group.start_soon(read)
        await wait_all_tasks_blocked()
        gate.set()
        (error,) = await finished([ticket])
        with anyio.fail_after(10):
            await answered.wait()
        group.cancel_scope.cancel()  # the crashing call itself is never answered
    assert error is not None
    assert error.problem == "the store thread stopped: Boom()"
    assert [str(outcome) for outcome in outcomes] == [str(error)]
    with pytest.raises(StoreError, match="is unusable: its thread stopped"):
        thread.submit((2,))
    await thread.stop()
    assert sessions[0].closed
    with pytest.raises(StoreError, match="is not open"):
        thread.submit((2,))
