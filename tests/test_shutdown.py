"""Leaving the runtime: draining, the shutdown timeout, exceptions and outer cancellation."""

from __future__ import annotations

import gc
import logging
import warnings

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked

import aevents
from aevents import Event, EventRuntime, Registry

pytestmark = pytest.mark.anyio


async def test_leaving_drains_what_was_accepted(registry: Registry) -> None:
    """Every delivery accepted before leaving runs before the async with exits."""
    delivered: list[int] = []

    async def receiver(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        delivered.append(int(event.payload["n"]))

    registry.subscribe("job:run", receiver, id="receiver")
    async with EventRuntime(registry, workers=2, buffer=8) as runtime:
        for n in range(100):
            await runtime.publish("job:run", payload={"n": n})
    assert sorted(delivered) == list(range(100))
    assert runtime.stats().dropped == 0


async def test_shutdown_timeout_cancels_the_rest_and_logs_one_warning(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """What cannot finish within shutdown_timeout is cancelled, counted and logged once."""
    cancelled: list[str] = []

    async def stuck(event: Event) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(event.id)
            raise

    registry.subscribe("job:stuck", stuck, id="stuck")
    caplog.set_level(logging.WARNING, logger="aevents")
    async with EventRuntime(registry, workers=2, shutdown_timeout=0.05) as runtime:
        for _ in range(5):
            await runtime.publish("job:stuck")
        await wait_all_tasks_blocked()
    warnings_logged = [record for record in caplog.records if record.name == "aevents.runtime"]
    assert len(warnings_logged) == 1
    assert "5 deliveries not run (3 queued, 2 in flight" in warnings_logged[0].getMessage()
    assert warnings_logged[0].__dict__["dropped"] == 5
    assert len(cancelled) == 2
    assert runtime.stats().dropped == 5


async def test_an_exception_in_the_body_propagates_as_itself(registry: Registry) -> None:
    """The body's exception is raised unwrapped, after accepted deliveries were drained."""
    delivered: list[Event] = []

    async def receiver(event: Event) -> None:
        delivered.append(event)

    registry.subscribe("job:run", receiver, id="receiver")

    async def body() -> None:
        async with EventRuntime(registry) as runtime:
            await runtime.publish("job:run")
            raise LookupError("from the body")

    with pytest.raises(LookupError, match="from the body") as raised:
        await body()
    assert type(raised.value) is LookupError
    assert len(delivered) == 1


async def test_an_outer_cancel_scope_stops_the_runtime_cleanly(registry: Registry) -> None:
    """Cancelling around the runtime stops it with no unclosed-stream warnings."""
    entered = anyio.Event()

    async def stuck(event: Event) -> None:
        entered.set()
        await anyio.sleep_forever()

    registry.subscribe("job:stuck", stuck, id="stuck")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with anyio.CancelScope() as scope:
            async with EventRuntime(registry) as runtime:
                await runtime.publish("job:stuck")
                await entered.wait()
                scope.cancel()
                await anyio.sleep_forever()
        del runtime
        gc.collect()
    assert scope.cancelled_caught
    assert [str(warning.message) for warning in caught] == []


async def test_an_outer_timeout_during_the_drain_still_stops_cleanly(registry: Registry) -> None:
    """A deadline that expires while leaving cancels the drain and still closes everything."""

    async def stuck(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe("job:stuck", stuck, id="stuck")
    with anyio.move_on_after(0.05) as scope:
        async with EventRuntime(registry, shutdown_timeout=30) as runtime:
            await runtime.publish("job:stuck")
    assert scope.cancelled_caught
    assert not runtime.running
    assert runtime.stats().dropped == 1


async def test_during_shutdown_only_receivers_may_publish(registry: Registry) -> None:
    """While draining, outside publishes are refused but receivers' follow-ups are accepted."""
    followed_up: list[Event] = []
    refused: list[BaseException] = []
    release = anyio.Event()

    async def first(event: Event) -> None:
        await release.wait()
        await aevents.publish("job:followup")

    async def followup(event: Event) -> None:
        followed_up.append(event)

    registry.subscribe("job:first", first, id="first")
    registry.subscribe("job:followup", followup, id="followup")

    async def outsider(runtime: EventRuntime) -> None:
        await wait_all_tasks_blocked()
        try:
            await runtime.publish("job:followup")
        except aevents.RuntimeClosedError as error:
            refused.append(error)
        release.set()

    async with anyio.create_task_group() as tasks, EventRuntime(registry) as runtime:
        await runtime.publish("job:first")
        tasks.start_soon(outsider, runtime)
    assert len(refused) == 1
    assert len(followed_up) == 1


async def test_a_publisher_waiting_for_room_at_shutdown_is_told(registry: Registry) -> None:
    """A publish blocked on a full buffer when shutdown gives up raises RuntimeClosedError."""
    outcome: list[str] = []

    async def stuck(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe("job:stuck", stuck, id="stuck")

    async def late_publisher(runtime: EventRuntime) -> None:
        try:
            await runtime.publish("job:stuck")
        except aevents.RuntimeClosedError:
            outcome.append("closed")

    runtime = EventRuntime(registry, workers=1, buffer=1, shutdown_timeout=0.05)
    async with anyio.create_task_group() as tasks, runtime:
        await runtime.publish("job:stuck")
        await wait_all_tasks_blocked()
        await runtime.publish("job:stuck")
        tasks.start_soon(late_publisher, runtime)
        await wait_all_tasks_blocked()
    assert outcome == ["closed"]


async def test_drain_after_a_lossy_shutdown_returns(registry: Registry) -> None:
    """drain() on a stopped runtime returns instead of waiting for deliveries that never run."""

    async def stuck(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe("job:stuck", stuck, id="stuck")
    async with EventRuntime(registry, shutdown_timeout=0) as runtime:
        await runtime.publish("job:stuck")
    with anyio.fail_after(5):
        await runtime.drain()
