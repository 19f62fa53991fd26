"""EventRuntime with a store: journaled publishes, replay on start, parked dead letters."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import pytest

import aevents
from aevents import Event, EventRuntime, Registry, RetryPolicy
from aevents._store import MemoryStore, SQLiteStore
from aevents._store._protocol import shared

pytestmark = pytest.mark.anyio

StoreFactory = Callable[[], aevents.Store]


@pytest.fixture(params=["memory", "sqlite", "sqlite-exclusive"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory for one journal that survives across runtimes, in memory or in a file
    (shared, or exclusive: then the runtime journals through it)."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    exclusive = request.param == "sqlite-exclusive"
    return lambda: SQLiteStore(str(tmp_path / "events.db"), exclusive=exclusive)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


async def test_published_events_are_journaled_then_done(
    registry: Registry, make_store: StoreFactory
) -> None:
    """With a store, deliveries are journaled as pending and marked done once run."""
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    registry.subscribe("order:placed", Recorder(), id="other")
    store = make_store()
    async with EventRuntime(registry, store=store) as runtime:
        event = await runtime.publish("order:placed", payload={"order": 7})
        with anyio.fail_after(10):
            await runtime.drain()
        stats = await store.stats()
    assert recorder.events == [event]
    assert (stats.events, stats.pending, stats.done, stats.dead) == (1, 0, 2, 0)


async def test_what_was_left_pending_is_replayed_on_the_next_start(
    registry: Registry, make_store: StoreFactory
) -> None:
    """Deliveries cut off by shutdown run when a runtime next opens the journal."""
    registry.subscribe("order:placed", _blocked, id="recorder")
    store = make_store()
    async with EventRuntime(registry, store=store, shutdown_timeout=0) as runtime:
        published = [await runtime.publish("order:placed", payload={"n": n}) for n in range(5)]
    if shared(store):
        # A shared store holds what was published: only the claims taken were cut off.
        assert runtime.stats().dropped <= 5
    else:
        assert runtime.stats().dropped == 5

    recorder = Recorder()
    registry.unsubscribe("order:placed", id="recorder")
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry, store=make_store()) as runtime:
        with anyio.fail_after(10):
            await runtime.drain()
    assert sorted(event.id for event in recorder.events) == sorted(e.id for e in published)
    assert sorted(event.payload["n"] for event in recorder.events) == [0, 1, 2, 3, 4]


async def test_unknown_receiver_ids_are_parked_never_imported(
    registry: Registry, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A journaled receiver id that is not subscribed becomes a dead letter; nothing is imported."""
    store = make_store()
    module = "aevents_test_never_imported_module"
    async with EventRuntime(registry, store=store, shutdown_timeout=0) as runtime:
        registry.subscribe("order:placed", _blocked, id=f"{module}:receiver")
        await runtime.publish("order:placed")
    registry.clear()
    caplog.set_level(logging.WARNING, logger="aevents.journal")
    again = make_store()
    async with EventRuntime(registry, store=again) as runtime:
        with anyio.fail_after(10):
            await runtime.drain()
        if shared(again):
            # A shared store hands a delivery only to a consumer that registered its
            # receiver id: it waits, ready, for one that has it; nothing is imported.
            assert await runtime.dead_letters() == []
            (backlog,) = await again.backlog()
            assert (backlog.receiver_id, backlog.ready) == (f"{module}:receiver", 1)
            assert module not in sys.modules
            return
        (letter,) = await runtime.dead_letters()
    parked = [r.getMessage() for r in caplog.records if "parked" in r.getMessage()]
    assert parked == [
        "journal replay parked 1 delivery as a dead letter: 1 for receiver ids not "
        "subscribed here, 0 whose attempts ran out across restarts"
    ]
    assert module not in sys.modules
    assert letter.receiver_id == f"{module}:receiver"
    assert letter.error_type == "aevents.UnknownReceiver"
    assert "resolved through the registry only" in letter.error_message


async def test_store_failures_surface_at_publish_and_leave_the_runtime_working(
    registry: Registry,
) -> None:
    """A journal that refuses an append makes publish raise; later publishes still work."""
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = FlakyStore(fail_appends=1)
    async with EventRuntime(registry, store=store, buffer=4) as runtime:
        with pytest.raises(aevents.StoreError, match="disk is full"):
            await runtime.publish("order:placed")
        assert runtime.stats().queued == 0
        assert runtime.stats().published == 0
        event = await runtime.publish("order:placed")
        with anyio.fail_after(10):
            await runtime.drain()
    assert recorder.events == [event]


async def test_publish_nowait_with_a_store_journals_in_the_background(
    registry: Registry, make_store: StoreFactory
) -> None:
    """publish_nowait returns at once; the event is journaled, then delivered; drain waits."""
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = make_store()
    async with EventRuntime(registry, store=store) as runtime:
        event = runtime.publish_nowait("order:placed", payload={"fast": True})
        with anyio.fail_after(10):
            await runtime.drain()
        stats = await store.stats()
    assert recorder.events == [event]
    assert (stats.events, stats.done) == (1, 1)


async def test_dead_letters_live_in_the_journal_and_can_be_redelivered(
    registry: Registry, make_store: StoreFactory
) -> None:
    """With a store, dead letters are journaled, survive restarts, and redeliver from there."""
    healthy: list[bool] = []
    delivered: list[Event] = []

    async def receiver(event: Event) -> None:
        if not healthy:
            raise ConnectionError("down")
        delivered.append(event)

    registry.subscribe("mail:send", receiver, id="mailer", retry=RetryPolicy(attempts=1))
    async with EventRuntime(registry, store=make_store()) as runtime:
        event = await runtime.publish("mail:send")
        with anyio.fail_after(10):
            await runtime.drain()
    healthy.append(True)
    async with EventRuntime(registry, store=make_store()) as runtime:
        (letter,) = await runtime.dead_letters()
        assert (letter.event, letter.receiver_id, letter.error_type) == (
            event,
            "mailer",
            "ConnectionError",
        )
        assert await runtime.redeliver() == 1
        with anyio.fail_after(10):
            await runtime.drain()
        assert await runtime.dead_letters() == []
    assert delivered == [event]


async def _blocked(event: Event) -> None:
    await anyio.sleep_forever()


class FlakyStore(MemoryStore):
    """A working in-memory journal whose first appends fail as a full disk would."""

    def __init__(self, *, fail_appends: int) -> None:
        super().__init__()
        self.failures_left = fail_appends

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise aevents.StoreError("memory", "database or disk is full")
        await super().append(event, receiver_ids)

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        # A runtime on a shared store adds events through publish, not append.
        if self.failures_left:
            self.failures_left -= 1
            raise aevents.StoreError("memory", "database or disk is full")
        return await super().publish(events)


async def test_a_journal_locked_past_busy_timeout_fails_publish_not_the_runtime(
    registry: Registry, tmp_path: Path
) -> None:
    """Another connection holding the SQLite lock makes publish raise StoreError, not hang."""
    import sqlite3

    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    path = tmp_path / "events.db"
    store = SQLiteStore(str(path), busy_timeout=0.2)
    async with EventRuntime(registry, store=store) as runtime:
        first = await runtime.publish("order:placed")
        with anyio.fail_after(10):
            await runtime.drain()  # its claim, start and settle are written before the lock
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            with anyio.fail_after(30), pytest.raises(aevents.StoreError):
                await runtime.publish("order:placed")
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        second = await runtime.publish("order:placed")
        with anyio.fail_after(10):
            await runtime.drain()
        assert runtime.stats().queued == 0
    assert sorted(event.id for event in recorder.events) == sorted([first.id, second.id])


async def test_a_settlement_the_store_refuses_is_logged_and_runs_again_when_its_lease_ends(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Settling deliveries happens after the worker moved on; if that write fails, the
    runtime says so, the delivery stays leased, and it runs again once its lease ends
    (drain() waits for that)."""
    import sqlite3

    path = tmp_path / "events.db"
    blockers: list[sqlite3.Connection] = []
    seen: list[str] = []

    async def locks_the_journal(event: Event) -> None:
        seen.append(event.id)
        if not blockers:  # the first run: hold the write lock past the store's busy_timeout
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            blockers.append(blocker)

    class UnblockOnRefusal(logging.Handler):
        """Let the store write again once the settlement was refused."""

        def emit(self, record: logging.LogRecord) -> None:
            if "could not be settled" in record.getMessage() and blockers:
                blockers[0].execute("ROLLBACK")

    registry.subscribe("order:placed", locks_the_journal, id="locker")
    caplog.set_level("WARNING", logger="aevents.fleet")
    unblock = UnblockOnRefusal()
    logging.getLogger("aevents.fleet").addHandler(unblock)
    try:
        async with EventRuntime(
            registry, store=(store := SQLiteStore(str(path), busy_timeout=0.2)), lease=1
        ) as runtime:
            event = await runtime.publish("order:placed")
            with anyio.fail_after(30):
                await runtime.drain()
            assert runtime.stats().delivered == 2
            stats = await store.stats()
    finally:
        logging.getLogger("aevents.fleet").removeHandler(unblock)
        for blocker in blockers:
            blocker.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "aevents.fleet"]
    assert any("1 delivery could not be settled" in w for w in warnings), warnings
    assert seen == [event.id, event.id]
    assert (stats.pending, stats.done) == (0, 1)


async def test_publish_nowait_racing_shutdown_loses_nothing_silently(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each event publish_nowait accepted is delivered, now or next start, or counted as lost."""
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    path = str(tmp_path / "events.db")
    caplog.set_level("WARNING", logger="aevents.runtime")
    async with EventRuntime(registry, store=SQLiteStore(path), shutdown_timeout=0) as runtime:
        published = [runtime.publish_nowait("order:placed", payload={"n": n}) for n in range(50)]
    stops = [record for record in caplog.records if record.name == "aevents.runtime"]
    lost = sum(record.__dict__.get("unjournaled", 0) for record in stops)
    async with EventRuntime(registry, store=SQLiteStore(path)) as runtime:
        with anyio.fail_after(10):
            await runtime.drain()
    delivered = {event.id for event in recorder.events}
    assert delivered <= {event.id for event in published}
    assert len(delivered) + lost == len(published)
