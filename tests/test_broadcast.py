"""scope="process" receivers in every live runtime on a shared store, and publish_nowait's
answers there (repeated idempotency keys, a write the store refuses)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import pytest

from aevents import Event, EventRuntime, MemoryStore, Registry, StoreError
from aevents._store import EventPage

from .test_fleet import NAME, running

pytestmark = pytest.mark.anyio


def runtime_logging_to(
    ran: dict[str, list[str]], name: str, store: MemoryStore, *, consume: bool = True
) -> EventRuntime:
    """A runtime whose process receiver records, under ``name``, each event id it runs."""
    registry = Registry()
    ran[name] = []

    async def local(event: Event) -> None:
        ran[name].append(event.id)

    async def shared(event: Event) -> None:
        ran.setdefault("shared", []).append(event.id)

    registry.subscribe(NAME, local, id="local", scope="process")
    registry.subscribe(NAME, shared, id="shared")
    return EventRuntime(registry, store=store, consume=consume)


async def drain_all(runtimes: Sequence[EventRuntime]) -> None:
    """Drain every runtime, twice: a runtime's drain catches its tail up to what the store
    holds when it is called, and another runtime's ``publish_nowait`` may reach the store
    only during that runtime's own drain, after the first one had caught up. After the
    first pass every accepted event is in the store; the second brings each tail to it."""
    with anyio.fail_after(10):
        for _ in range(2):
            for runtime in runtimes:
                await runtime.drain()


@pytest.mark.parametrize("count", [2, 3])
async def test_each_live_runtime_runs_each_event_once_whoever_published_it(count: int) -> None:
    """Every runtime's process receiver runs every event once, its own included, also a
    runtime that does not consume; the fleet receiver runs each once in all."""
    store = MemoryStore()
    ran: dict[str, list[str]] = {}
    names = [f"r{index}" for index in range(count)]
    runtimes = [
        runtime_logging_to(ran, name, store, consume=index != 1) for index, name in enumerate(names)
    ]
    async with running(*runtimes):
        published = [
            (await runtime.publish(NAME, payload={"n": n})).id
            for n in range(5)
            for runtime in runtimes
        ]
        published += [runtime.publish_nowait(NAME).id for runtime in runtimes]
        await drain_all(runtimes)
        for name in names:
            assert sorted(ran[name]) == sorted(published), name
        assert sorted(ran["shared"]) == sorted(published)
        assert all(runtime.stats().dropped == 0 for runtime in runtimes)


async def test_a_runtime_started_later_runs_only_the_events_published_after_it_started() -> None:
    """The tail starts at the newest event: what was published before is not its to run."""
    store = MemoryStore()
    ran: dict[str, list[str]] = {}
    first = runtime_logging_to(ran, "first", store)
    async with running(first):
        early = await first.publish(NAME)
        late_runtime = runtime_logging_to(ran, "late", store)
        async with running(late_runtime):
            late = await first.publish(NAME)
            await drain_all([first, late_runtime])
            assert ran["late"] == [late.id]
            assert ran["first"] == [early.id, late.id]


async def test_a_process_receiver_subscribed_while_running_gets_the_later_events_once() -> None:
    """A runtime that had no process receiver reads from the newest event once it has one:
    its own events run once (at publish), the others' from then on."""
    store = MemoryStore()
    ran: dict[str, list[str]] = {}
    plain_registry = Registry()
    plain = EventRuntime(plain_registry, store=store)
    other = runtime_logging_to(ran, "other", store)
    async with running(plain, other):
        first = await other.publish(NAME)
        await drain_all([plain, other])
        ran["plain"] = []

        async def local(event: Event) -> None:
            ran["plain"].append(event.id)

        plain_registry.subscribe(NAME, local, id="local", scope="process")
        own = await plain.publish(NAME)
        await drain_all([plain, other])
        later = await other.publish(NAME)
        await drain_all([plain, other])
        assert ran["plain"] == [own.id, later.id]
        assert ran["other"] == [first.id, own.id, later.id]


async def test_a_repeated_idempotency_key_is_not_broadcast_again() -> None:
    """A repeat from another runtime returns the first event and runs nothing anywhere."""
    store = MemoryStore()
    ran: dict[str, list[str]] = {}
    runtimes = [runtime_logging_to(ran, name, store) for name in ("a", "b", "c")]
    async with running(*runtimes):
        first = await runtimes[0].publish(NAME, idempotency_key="once")
        await drain_all(runtimes)
        assert await runtimes[1].publish(NAME, idempotency_key="once") == first
        await drain_all(runtimes)
        assert {name: ran[name] for name in "abc"} == {name: [first.id] for name in "abc"}
        assert (await store.stats()).events == 1


async def test_a_tail_that_fell_behind_pruning_skips_the_pruned_events_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Events pruned before a runtime's tail read them are skipped, counted and logged."""

    class GatedStore(MemoryStore):
        gate: anyio.Event | None = None
        blocked = anyio.Event()

        async def events_after(self, position: int, limit: int) -> EventPage:
            if self.gate is not None:
                self.blocked.set()
                await self.gate.wait()
            return await super().events_after(position, limit)

    store = GatedStore()
    ran: dict[str, list[str]] = {}
    publisher = EventRuntime(Registry(), store=store)
    reader = runtime_logging_to(ran, "reader", store)
    with caplog.at_level(logging.WARNING, "aevents.fleet"):
        async with running(publisher, reader):
            store.gate = gate = anyio.Event()
            with anyio.fail_after(10):
                await store.blocked.wait()
            for n in range(3):  # with an idempotency key, kept with no delivery
                await publisher.publish(NAME, idempotency_key=f"k{n}")
            await store.prune()
            store.gate = None
            gate.set()
            await drain_all([reader])
            later = await publisher.publish(NAME, idempotency_key="k3")
            await drain_all([reader])
            assert ran["reader"] == [later.id]
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("3 events pruned from the store before") for m in messages)


# ------------------------------------------------------------------ publish_nowait


async def test_publish_nowait_answers_a_key_another_runtime_recorded_once_read() -> None:
    """Once a runtime's tail read another's keyed event, publish_nowait returns it."""
    store = MemoryStore()
    ran: dict[str, list[str]] = {}
    a, b = runtime_logging_to(ran, "a", store), runtime_logging_to(ran, "b", store)
    async with running(a, b):
        first = await a.publish(NAME, idempotency_key="k")
        await drain_all([b])  # b's tail has read it
        assert b.publish_nowait(NAME, idempotency_key="k") == first
        assert b.stats().repeated == 1
        await drain_all([a, b])
        assert ran["shared"] == [first.id]


async def test_publish_nowait_of_a_key_the_store_knew_first_runs_nothing() -> None:
    """A key recorded before this runtime started: the runtime read the store's recent keys
    at start, so publish_nowait returns the first event at once and publishes nothing."""
    store = MemoryStore()
    ran: dict[str, list[str]] = {}
    a = runtime_logging_to(ran, "a", store)
    async with running(a):
        first = await a.publish(NAME, idempotency_key="k")
        b = runtime_logging_to(ran, "b", store)
        async with running(b):
            assert b.publish_nowait(NAME, idempotency_key="k") == first
            await drain_all([a, b])
            assert b.stats().repeated == 1
            assert b.stats().published == 0
            assert ran["b"] == []
            assert ran["shared"] == [first.id]
            assert b.publish_nowait(NAME, idempotency_key="k") == first
            assert (await store.stats()).events == 1


class RefusingStore(MemoryStore):
    """A store that refuses to publish while ``refuse`` is set."""

    refuse = False

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        if self.refuse:
            raise StoreError(self.path, "is full (as the test says)")
        return await super().publish(events)


@pytest.mark.parametrize("consume", [True, False])
async def test_a_refused_publish_nowait_runs_its_fleet_receivers_here_when_consuming(
    consume: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """When the store refuses the background write, a consuming runtime runs the fleet
    receivers from memory, without the store's guarantee; one that does not consume loses
    them (counted as dropped). The process receivers run either way."""
    store = RefusingStore()
    ran: dict[str, list[str]] = {}
    runtime = runtime_logging_to(ran, "here", store, consume=consume)
    with caplog.at_level(logging.ERROR, "aevents.fleet"):
        async with running(runtime):
            store.refuse = True
            event = runtime.publish_nowait(NAME)
            await drain_all([runtime])
            store.refuse = False
            assert ran["here"] == [event.id]
            assert ran.get("shared", []) == ([event.id] if consume else [])
            assert runtime.stats().dropped == (0 if consume else 1)
            assert runtime.stats().delivered == (2 if consume else 1)
            assert (await store.stats()).events == 0
    (message,) = [record.getMessage() for record in caplog.records]
    if consume:
        assert message.endswith("delivering it here without the store's guarantee")
    else:
        assert message.endswith("its 1 delivery to fleet receivers are lost")
