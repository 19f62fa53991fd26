"""Receivers that publish: no deadlock, causation and correlation ids, the depth cap."""

from __future__ import annotations

import anyio
import pytest

import aevents
from aevents import Event, EventRuntime, Registry, RetryPolicy

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("workers", "buffer"), [(1, 1), (2, 1), (1, 4)])
async def test_receivers_that_publish_never_deadlock(
    registry: Registry, workers: int, buffer: int
) -> None:
    """A fan-out tree published from receivers completes even with buffer=1 and workers=1."""
    seen: list[str] = []

    async def fan_out(event: Event) -> None:
        depth = int(event.payload["depth"])
        seen.append(event.id)
        if depth < 4:
            for _ in range(3):
                await aevents.publish("tree:node", payload={"depth": depth + 1})

    def sync_fan_out(event: Event) -> None:  # on a worker thread, publishing back to the loop
        if event.payload["depth"] == 1:
            aevents.publish_threadsafe("tree:leaf", payload={"depth": 99})

    registry.subscribe("tree:node", fan_out, id="fan_out")
    registry.subscribe("tree:node", sync_fan_out, id="sync_fan_out")
    async with EventRuntime(registry, workers=workers, buffer=buffer) as runtime:
        await runtime.publish("tree:node", payload={"depth": 0})
        with anyio.fail_after(10):
            await runtime.drain()
        stats = runtime.stats()
    nodes = 1 + 3 + 9 + 27 + 81
    assert len(seen) == nodes
    assert stats.delivered == 2 * nodes
    assert stats.published == nodes + 3  # three depth-1 nodes each published a leaf


async def test_children_carry_causation_and_correlation_ids(registry: Registry) -> None:
    """A child's causation_id is its parent's id; the whole chain shares one correlation_id."""
    chain: list[Event] = []

    async def step(event: Event) -> None:
        chain.append(event)
        if len(chain) < 3:
            await aevents.publish("chain:step", metadata={"tenant": "acme"})

    registry.subscribe("chain:step", step, id="step")
    async with EventRuntime(registry) as runtime:
        root = await runtime.publish("chain:step", metadata={"correlation_id": "req-42"})
        with anyio.fail_after(5):
            await runtime.drain()
    assert chain[0] == root
    assert root.causation_id is None
    assert [event.causation_id for event in chain[1:]] == [chain[0].id, chain[1].id]
    assert {event.correlation_id for event in chain} == {"req-42"}
    assert chain[2].metadata["tenant"] == "acme"
    assert chain[2].metadata["causation_depth"] == "2"


async def test_root_events_correlate_to_themselves(registry: Registry) -> None:
    """Without a given correlation_id the root's own id correlates the chain."""
    chain: list[Event] = []

    async def step(event: Event) -> None:
        chain.append(event)
        if len(chain) < 2:
            await aevents.publish("chain:step")

    registry.subscribe("chain:step", step, id="step")
    async with EventRuntime(registry) as runtime:
        root = await runtime.publish("chain:step")
        with anyio.fail_after(5):
            await runtime.drain()
    assert root.correlation_id == root.id
    assert chain[1].correlation_id == root.id
    assert chain[1].metadata["correlation_id"] == root.id


async def test_a_runaway_publish_storm_is_stopped_and_dead_lettered(registry: Registry) -> None:
    """Past max_causation_depth the offending delivery becomes a dead letter, not a retry."""
    calls: list[int] = []

    async def echo(event: Event) -> None:
        calls.append(1)
        await aevents.publish("storm:echo")

    registry.subscribe(
        "storm:echo", echo, id="echo", retry=RetryPolicy(attempts=5, initial_delay=0)
    )
    async with EventRuntime(registry, max_causation_depth=10) as runtime:
        await runtime.publish("storm:echo")
        with anyio.fail_after(5):
            await runtime.drain()
        (letter,) = await runtime.dead_letters()
        assert letter.error_type == "aevents._exceptions.CausationDepthError"
        assert letter.attempts == 1
        assert letter.event.metadata["causation_depth"] == "10"
        assert len(calls) == 11
        healthy: list[Event] = []
        registry.subscribe(
            "after:storm", lambda event: healthy.append(event), id="after", inline=True
        )
        await runtime.publish("after:storm")
        with anyio.fail_after(5):
            await runtime.drain()
        assert len(healthy) == 1


async def test_drain_inside_a_receiver_raises_instead_of_hanging(registry: Registry) -> None:
    """A receiver awaiting drain() would wait for itself: it gets an error."""
    errors: list[str] = []

    async def impatient(event: Event) -> None:
        runtime = aevents.current_runtime()
        assert runtime is not None
        try:
            await runtime.drain()
        except aevents.AeventsError as error:
            errors.append(str(error))

    registry.subscribe("job:run", impatient, id="impatient")
    async with EventRuntime(registry) as runtime:
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    assert len(errors) == 1
    assert "inside a receiver" in errors[0]


async def test_a_task_started_by_a_receiver_keeps_its_parent(registry: Registry) -> None:
    """Publishing later from a task a receiver spawned names that receiver's event as cause."""
    gate, child_seen = anyio.Event(), anyio.Event()
    children: list[Event] = []
    parents: list[Event] = []

    def child(event: Event) -> None:
        children.append(event)
        child_seen.set()

    async with anyio.create_task_group() as outside:

        async def spawner(event: Event) -> None:
            parents.append(event)

            async def later() -> None:
                await gate.wait()  # by now the worker has run other deliveries
                await aevents.publish("work:child")

            outside.start_soon(later)

        async def busy(event: Event) -> None:
            pass

        registry.subscribe("work:parent", spawner, id="spawner")
        registry.subscribe("work:other", busy, id="busy")
        registry.subscribe("work:child", child, id="child", inline=True)
        async with EventRuntime(registry, workers=1) as runtime:
            await runtime.publish("work:parent")
            with anyio.fail_after(5):
                await runtime.drain()
            for _ in range(5):
                await runtime.publish("work:other")
            with anyio.fail_after(5):
                await runtime.drain()
            gate.set()
            with anyio.fail_after(5):
                await child_seen.wait()
                await runtime.drain()
    assert [child.causation_id for child in children] == [parents[0].id]
