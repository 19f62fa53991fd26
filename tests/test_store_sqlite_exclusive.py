"""``SQLiteStore(exclusive=True)``: one process has the file alone, and journals through it.

An exclusive store holds the lock file's flock exclusively for as long as it is
open, so no other store (another process's, or another in this process: each
store has its own descriptor) opens the file beside it, and it opens no file
that another store has open. A runtime on it takes the journal path: no
consumer is registered, nothing is leased, and what was left pending runs at
the next start. The file stays one format: a shared store opens what an
exclusive one left, and the other way round.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import aevents
from aevents import (
    ConfigurationError,
    Event,
    EventRuntime,
    JournalInUseError,
    Registry,
    SQLiteStore,
)
from aevents._event import make_event
from aevents._store._protocol import Route, StoreStats, new_consumer_id, shared

pytestmark = pytest.mark.anyio


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "events.db")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


def test_the_option_is_checked_and_shown() -> None:
    with pytest.raises(ConfigurationError, match="exclusive must be a bool, got 'yes'"):
        SQLiteStore("x.db", exclusive="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="read_only=True: a read-only store takes no"):
        SQLiteStore("x.db", exclusive=True, read_only=True)
    store = SQLiteStore("x.db", exclusive=True)
    assert repr(store) == "SQLiteStore('x.db', synchronous='FULL', exclusive=True)"
    assert not store.shared
    assert not shared(store)
    assert shared(SQLiteStore("x.db"))
    assert repr(SQLiteStore("x.db")) == "SQLiteStore('x.db', synchronous='FULL')"


async def test_an_exclusive_store_has_the_file_alone(path: str) -> None:
    """While an exclusive store is open, no other store opens the file, shared or
    exclusive, and the error names the holder; once it is closed, they do."""
    alone = SQLiteStore(path, exclusive=True)
    await alone.open()
    try:
        with pytest.raises(JournalInUseError, match=f"held alone by process {os.getpid()}, op"):
            await SQLiteStore(path).open()
        with pytest.raises(JournalInUseError, match="is open in another process, and SQLiteSto"):
            await SQLiteStore(path, exclusive=True).open()
        reader = SQLiteStore(path, read_only=True)  # what the CLI's reads open
        await reader.open()
        await reader.close()
    finally:
        await alone.close()
    after = SQLiteStore(path)
    await after.open()
    await after.close()


async def test_an_exclusive_store_does_not_open_a_file_another_store_has(path: str) -> None:
    first = SQLiteStore(path)
    await first.open()
    try:
        with pytest.raises(JournalInUseError, match="is open in another process, and SQLiteSto"):
            await SQLiteStore(path, exclusive=True).open()
        second = SQLiteStore(path)  # shared stores still share it
        await second.open()
        await second.close()
    finally:
        await first.close()


async def test_a_runtime_journals_through_an_exclusive_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No consumer is registered and nothing is leased: the deliveries run from memory,
    each publish and outcome is recorded in the file (the durable guide's example)."""
    monkeypatch.chdir(tmp_path)
    registry = Registry()
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = aevents.SQLiteStore("events.db", exclusive=True)
    async with EventRuntime(registry, store=store) as runtime:
        events = [await runtime.publish("order:placed", payload={"n": n}) for n in range(50)]
        with anyio.fail_after(10):
            await runtime.drain()
        assert await store.consumers() == []
        assert await store.leases() == []
        stats = await store.stats()
    assert recorder.events == events
    assert (stats.events, stats.pending, stats.done, stats.dead) == (50, 0, 50, 0)


async def test_consume_false_needs_a_shared_store(path: str) -> None:
    with pytest.raises(ConfigurationError, match="consume=False needs a store that processes"):
        EventRuntime(Registry(), store=SQLiteStore(path, exclusive=True), consume=False)


async def test_what_a_shared_process_held_runs_in_an_exclusive_one_at_once(path: str) -> None:
    """Leases a dead process left do not make an exclusive run wait for them to expire:
    it has the file alone, so every pending delivery is its own."""
    shared_store = SQLiteStore(path)
    await shared_store.open()
    consumer = new_consumer_id()
    await shared_store.register(consumer, [Route("order:placed", "recorder")], ttl=600)
    event = make_event("order:placed", {"n": 1}, {})
    await shared_store.publish([(event, ["recorder"])])
    claims = await shared_store.claim(consumer, 10, lease=600)
    assert [claim.event.id for claim in claims] == [event.id]
    await shared_store.start(consumer, claims)
    await shared_store.close()  # as if its process died holding the lease

    registry = Registry()
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = SQLiteStore(path, exclusive=True)
    async with EventRuntime(registry, store=store) as runtime:
        with anyio.fail_after(10):
            await runtime.drain()
    assert [seen.id for seen in recorder.events] == [event.id]
    assert (await _stats(path)).pending == 0


async def test_what_an_exclusive_run_left_pending_runs_in_a_shared_one(path: str) -> None:
    registry = Registry()
    registry.subscribe("order:placed", _blocked, id="recorder")
    async with EventRuntime(
        registry, store=SQLiteStore(path, exclusive=True), shutdown_timeout=0
    ) as runtime:
        event = await runtime.publish("order:placed", payload={"n": 1})
    registry = Registry()
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = SQLiteStore(path)
    async with EventRuntime(registry, store=store) as runtime:
        with anyio.fail_after(10):
            await runtime.drain()
        consumer = (await store.consumers())[0].id  # it ran through a lease
    assert recorder.events == [event]
    assert consumer.pid == os.getpid()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.leases() == []
        assert (await store.stats()).pending == 0
    finally:
        await store.close()


_HOLDER = textwrap.dedent(
    """
    import sys, anyio
    from aevents import EventRuntime, Registry, SQLiteStore

    async def stuck(event):
        await anyio.sleep_forever()

    async def main():
        registry = Registry()
        registry.subscribe("order:placed", stuck, id="recorder")
        store = SQLiteStore(sys.argv[1], exclusive=True)
        async with EventRuntime(registry, store=store) as runtime:
            for n in range(20):
                await runtime.publish("order:placed", payload={"n": n})
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
    """
)


async def test_a_killed_exclusive_process_leaves_the_file_to_the_next_opener(path: str) -> None:
    """A real process holds the file exclusively: this one is refused with its pid. Killed
    with SIGKILL, it releases the lock with its life; a shared runtime then opens the
    file, checks what the crash left and runs the 20 deliveries it had accepted."""
    holder = await anyio.open_process([sys.executable, "-c", _HOLDER, path], stderr=None)
    try:
        assert holder.stdout is not None
        with anyio.fail_after(30):
            line = await holder.stdout.receive()
        assert line.startswith(b"ready")
        with pytest.raises(JournalInUseError, match=f"held alone by process {holder.pid}"):
            await SQLiteStore(path).open()
        holder.send_signal(signal.SIGKILL)
        with anyio.fail_after(30):
            await holder.wait()
    finally:
        if holder.returncode is None:
            holder.kill()
        with anyio.CancelScope(shield=True):
            await holder.aclose()
    registry = Registry()
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry, store=SQLiteStore(path)) as runtime:
        with anyio.fail_after(20):
            await runtime.drain()
    assert sorted(event.payload["n"] for event in recorder.events) == list(range(20))


async def _stats(path: str) -> StoreStats:
    store = SQLiteStore(path, read_only=True)
    await store.open()
    try:
        return await store.stats()
    finally:
        await store.close()


async def _blocked(event: Event) -> None:
    await anyio.sleep_forever()


async def test_an_exclusive_store_never_gives_a_seq_twice(path: str) -> None:
    """An exclusive store keeps the next event seq itself instead of reading it at each
    write: it still moves past events that were pruned, and past what an earlier run,
    shared or exclusive, gave."""
    shared_store = SQLiteStore(path)
    await shared_store.open()
    await shared_store.publish([(make_event("a:b", {"n": n}, {}), []) for n in range(3)])
    assert await shared_store.event_position() == 3
    await shared_store.close()
    store = SQLiteStore(path, exclusive=True)
    await store.open()
    try:
        await store.append(make_event("a:b", {"n": 3}, {}), ["r"])
        await store.append(make_event("a:b", {"n": 4}, {}), ["r"])
        assert await store.event_position() == 5
        await store.complete([])  # nothing: a write that adds no event
        assert await store.prune() == 0  # the pending deliveries stay
        await store.publish([(make_event("a:b", {"n": 5}, {}), [])])
        assert await store.event_position() == 6
        page = await store.events_after(2, 10)
        assert [event.payload["n"] for event in page.events] == [3, 4, 5]
    finally:
        await store.close()
