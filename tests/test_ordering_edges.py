"""Per-key ordering at its edges: held keys with nothing behind them, releases, the hold
warning, and stopping while keyed deliveries wait in a lane or behind the journal replay."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import cast

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from aevents import Event, EventRuntime, PayloadError, Registry, RetryPolicy
from aevents._store._protocol import PendingDelivery
from tests.journal_store import JournalMemoryStore

pytestmark = pytest.mark.anyio

ONCE = RetryPolicy(attempts=1)
NAME = "account:changed"


def poisoned(log: list[int], poison: set[int]) -> Callable[[Event], Awaitable[None]]:
    """An async receiver that fails for the seqs in ``poison`` and logs the others."""

    async def receiver(event: Event) -> None:
        if event.payload["seq"] in poison:
            raise ValueError("poison")
        log.append(event.payload["seq"])

    return receiver


async def test_a_held_key_with_nothing_behind_it_is_redelivered(registry: Registry) -> None:
    """A lone keyed dead letter holds its key; redelivering it frees the key and runs it."""
    log: list[int] = []
    poison = {0}
    registry.subscribe(NAME, poisoned(log, poison), id="r", retry=ONCE)
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        dead = await runtime.publish(NAME, payload={"seq": 0}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.held_keys() == {("r", "k"): dead.id}
        assert (runtime.stats().held, runtime.stats().active_keys) == (0, 1)
        poison.clear()
        assert await runtime.redeliver() == 1
        assert runtime.held_keys() == {}
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().active_keys == 0
        await runtime.publish(NAME, payload={"seq": 1}, key="k")  # the key runs freely again
        with anyio.fail_after(5):
            await runtime.drain()
    assert log == [0, 1]


async def test_a_held_key_with_nothing_behind_it_is_released(registry: Registry) -> None:
    """Releasing a lone held key frees it at once; the dead letter stays listed."""
    log: list[int] = []
    registry.subscribe(NAME, poisoned(log, {0}), id="r", retry=ONCE)
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        await runtime.publish(NAME, payload={"seq": 0}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.release_key("r", "k") is True
        assert runtime.held_keys() == {}
        assert runtime.stats().active_keys == 0
        assert runtime.release_key("r", "k") is False
        await runtime.publish(NAME, payload={"seq": 1}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        assert len(await runtime.dead_letters()) == 1
    assert log == [1]


async def test_releasing_a_key_counts_its_waiting_deliveries_as_no_longer_held(
    registry: Registry,
) -> None:
    """``stats().held`` counts the deliveries behind a held key, and drops to 0 on release."""
    log: list[int] = []
    registry.subscribe(NAME, poisoned(log, {0}), id="r", retry=ONCE)
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        for seq in range(3):
            await runtime.publish(NAME, payload={"seq": seq}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
        assert (stats.held, stats.queued, stats.active_keys) == (2, 2, 1)
        assert runtime.release_key("r", "k") is True
        assert runtime.stats().held == 0
        with anyio.fail_after(5):
            await runtime.drain()  # waits for the released deliveries again
        assert log == [1, 2]
        stats = runtime.stats()
        assert (stats.held, stats.queued, stats.active_keys, stats.delivered) == (0, 0, 0, 2)


async def test_redelivering_counts_its_waiting_deliveries_as_no_longer_held(
    registry: Registry,
) -> None:
    """Redelivering the holding letter puts it first; ``held`` drops to 0 and drain waits."""
    log: list[int] = []
    poison = {0}
    registry.subscribe(NAME, poisoned(log, poison), id="r", retry=ONCE)
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        for seq in range(3):
            await runtime.publish(NAME, payload={"seq": seq}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().held == 2
        poison.clear()
        assert await runtime.redeliver() == 1
        assert runtime.stats().held == 0
        with anyio.fail_after(5):
            await runtime.drain()
        assert log == [0, 1, 2]
        assert runtime.stats().active_keys == 0


@pytest.mark.parametrize(("later", "waiting"), [(1, "1 later delivery"), (2, "2 later deliveries")])
async def test_a_held_key_logs_one_warning_naming_receiver_key_and_event(
    registry: Registry, caplog: pytest.LogCaptureFixture, later: int, waiting: str
) -> None:
    """The hold is announced once, at WARNING, with how many deliveries wait behind it."""
    log: list[int] = []
    registry.subscribe(NAME, poisoned(log, {0}), id="r", retry=ONCE)
    caplog.set_level(logging.WARNING, logger="aevents")
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        dead = await runtime.publish(NAME, payload={"seq": 0}, key="k")
        for seq in range(1, later + 1):
            await runtime.publish(NAME, payload={"seq": seq}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        held = [record for record in caplog.records if "is held by" in record.getMessage()]
        assert len(held) == 1
        record = held[0]
        assert record.levelno == logging.WARNING
        assert record.name == "aevents.runtime"
        message = record.getMessage()
        assert message == (
            f"receiver 'r': key 'k' is held by the dead letter of event {dead.id} until it "
            f"is redelivered or the key is released; {waiting} waiting behind it"
        )
        assert (record.receiver_id, record.key) == ("r", "k")  # type: ignore[attr-defined]
        runtime.release_key("r", "k")


async def test_skip_logs_no_hold_warning(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default policy a keyed dead letter holds nothing, and says nothing about it."""
    log: list[int] = []
    registry.subscribe(NAME, poisoned(log, {0}), id="r", retry=ONCE)
    caplog.set_level(logging.WARNING, logger="aevents")
    async with EventRuntime(registry) as runtime:
        for seq in range(3):
            await runtime.publish(NAME, payload={"seq": seq}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.held_keys() == {}
        assert runtime.stats().held == 0
    assert log == [1, 2]
    assert not [record for record in caplog.records if "is held by" in record.getMessage()]


async def test_stopping_with_deliveries_waiting_in_a_lane_drops_them_cleanly(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop while one key's delivery hangs and more wait behind it: all are counted as
    dropped, the stop raises nothing, and the waiting ones never start."""
    started: list[int] = []
    running = anyio.Event()

    async def hang(event: Event) -> None:
        started.append(event.payload["seq"])
        running.set()
        await anyio.sleep_forever()

    registry.subscribe(NAME, hang, id="r")
    caplog.set_level(logging.WARNING, logger="aevents")
    runtime = EventRuntime(registry, shutdown_timeout=0)
    async with runtime:
        for seq in range(3):
            await runtime.publish(NAME, payload={"seq": seq}, key="k")
        with anyio.fail_after(5):
            await running.wait()
        await wait_all_tasks_blocked()
        stats = runtime.stats()
        assert (stats.queued, stats.in_flight, stats.active_keys) == (2, 1, 1)
    assert started == [0]
    stats = runtime.stats()
    assert stats.dropped == 3
    assert stats.delivered == 0
    messages = [record.getMessage() for record in caplog.records]
    assert any("stopped with 3 deliveries not run (2 queued, 1 in flight" in m for m in messages)


async def test_stopping_while_keys_wait_in_lanes_of_a_journal_keeps_them_for_the_next_start(
    registry: Registry,
) -> None:
    """With a store, what a stop left in a lane is replayed next time, still in key order."""
    store = JournalMemoryStore()  # the lanes of the journal path (a shared store has none)
    stuck = True
    log: list[int] = []
    running = anyio.Event()

    async def receiver(event: Event) -> None:
        running.set()
        if stuck:
            await anyio.sleep_forever()
        log.append(event.payload["seq"])

    registry.subscribe(NAME, receiver, id="r")
    async with EventRuntime(registry, store=store, shutdown_timeout=0) as runtime:
        for seq in range(4):
            await runtime.publish(NAME, payload={"seq": seq}, key="k")
        with anyio.fail_after(5):
            await running.wait()
    assert runtime.stats().dropped == 4
    stuck = False
    async with EventRuntime(registry, store=store) as runtime:
        with anyio.fail_after(5):
            await runtime.drain()
    assert log == [0, 1, 2, 3]


class GatedStore(JournalMemoryStore):  # a replay: the journal path
    """The reference in-memory store, whose replay stops after its first delivery until
    ``gate`` is set: a replay that is still running, for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: anyio.Event | None = None
        self.replay_waiting = anyio.Event()

    async def pending(self) -> AsyncIterator[PendingDelivery]:
        gate = self.gate
        first = True
        inner = cast(AsyncGenerator[PendingDelivery, None], super().pending())
        async with aclosing(inner) as deliveries:
            async for delivery in deliveries:
                if not first and gate is not None:
                    self.replay_waiting.set()
                    await gate.wait()
                first = False
                yield delivery


async def test_stopping_during_the_replay_keeps_what_waited_behind_it(
    registry: Registry,
) -> None:
    """A stop while the replay runs: new keyed deliveries that waited behind it are not
    queued into the closed runtime, and the next start delivers everything in key order."""
    store = GatedStore()
    stuck = True
    log: list[int] = []

    async def receiver(event: Event) -> None:
        if stuck:
            await anyio.sleep_forever()
        log.append(event.payload["seq"])

    registry.subscribe(NAME, receiver, id="r")
    async with EventRuntime(registry, store=store, shutdown_timeout=0) as runtime:
        for seq in range(3):
            await runtime.publish(NAME, payload={"seq": seq}, key="k")
    stuck = False
    store.gate = anyio.Event()  # the next replay stops after its first delivery
    async with EventRuntime(registry, store=store, shutdown_timeout=0) as runtime:
        with anyio.fail_after(5):
            await store.replay_waiting.wait()
        await runtime.publish(NAME, payload={"seq": 3}, key="k")  # waits behind the replay
        await runtime.publish(NAME, payload={"seq": 9}, key="other")
        await wait_all_tasks_blocked()
        assert log == [0]  # replayed; 1 and 2 are not read yet, 3 and 9 wait behind them
        assert runtime.stats().delivered == 1
    assert log == [0]
    store.gate = None
    async with EventRuntime(registry, store=store) as runtime:
        with anyio.fail_after(5):
            await runtime.drain()
    assert [seq for seq in log if seq != 9] == [0, 1, 2, 3]  # key "k" in publish order
    assert sorted(log) == [0, 1, 2, 3, 9]


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (42, "expected str, got int"),
        (b"k", "expected str, got bytes"),
        ("", "must be 1 to 200 characters, got 0"),
        ("k" * 201, "must be 1 to 200 characters, got 201"),
    ],
)
async def test_a_bad_key_is_explained_exactly(
    registry: Registry, key: object, problem: str
) -> None:
    """The key's error says what a key must be, and what it got."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(PayloadError) as caught:
            runtime.publish_nowait(NAME, key=key)  # type: ignore[arg-type]
    assert (caught.value.event, caught.value.path, caught.value.problem) == (NAME, "key", problem)


async def test_keys_of_one_and_two_hundred_characters_are_accepted(registry: Registry) -> None:
    log: list[str] = []

    async def receiver(event: Event) -> None:
        assert event.key is not None
        log.append(event.key)

    registry.subscribe(NAME, receiver, id="r")
    async with EventRuntime(registry) as runtime:
        await runtime.publish(NAME, key="k")
        await runtime.publish(NAME, key="k" * 200)
        with anyio.fail_after(5):
            await runtime.drain()
    assert sorted(log) == ["k", "k" * 200]
