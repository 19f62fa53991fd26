"""publish and publish_nowait belong to the loop's thread; publish_threadsafe to the others."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

import aevents
from aevents import AeventsError, Event, EventRuntime, Registry, WrongThreadError

pytestmark = pytest.mark.anyio


async def _in_thread(function: Callable[[], object]) -> object:
    """Run ``function`` on a worker thread; return what it returned or raised."""

    def call() -> object:
        try:
            return function()
        except BaseException as error:
            return error

    return await anyio.to_thread.run_sync(call)


async def test_publish_nowait_from_a_foreign_thread_is_refused(registry: Registry) -> None:
    """runtime.publish_nowait off the loop's thread raises WrongThreadError, accepting nothing."""
    received: list[Event] = []

    async def receiver(event: Event) -> None:
        received.append(event)

    registry.subscribe("order:placed", receiver, id="r")
    async with EventRuntime(registry) as runtime:
        error = await _in_thread(lambda: runtime.publish_nowait("order:placed"))
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert isinstance(error, WrongThreadError)
    assert isinstance(error, RuntimeError)
    assert isinstance(error, AeventsError)
    assert "publish_threadsafe(...)" in str(error)
    assert (error.event, error.call) == ("order:placed", "publish_nowait")
    assert received == []
    assert stats.published == 0


async def test_module_level_publish_nowait_from_a_foreign_thread_is_refused(
    registry: Registry,
) -> None:
    """aevents.publish_nowait finds the only runtime from another thread, and refuses."""
    async with EventRuntime(registry):
        error = await _in_thread(lambda: aevents.publish_nowait("order:placed"))
    assert isinstance(error, WrongThreadError)
    assert "publish_nowait('order:placed')" in str(error)


async def test_await_publish_on_another_threads_event_loop_is_refused(
    registry: Registry, anyio_backend: object
) -> None:
    """A thread running its own event loop cannot `await publish` to this runtime."""
    async with EventRuntime(registry) as runtime:
        on_runtime = await _in_thread(lambda: anyio.run(runtime.publish, "order:placed"))
        on_module = await _in_thread(lambda: anyio.run(aevents.publish, "order:placed"))
        stats = runtime.stats()
    assert isinstance(on_runtime, WrongThreadError)
    assert isinstance(on_module, WrongThreadError)
    assert "publish('order:placed')" in str(on_runtime)
    assert stats.published == 0


async def test_publish_threadsafe_from_a_foreign_thread_is_delivered(registry: Registry) -> None:
    """The supported way from another thread still works."""
    received: list[str] = []

    async def receiver(event: Event) -> None:
        received.append(event.id)

    registry.subscribe("order:placed", receiver, id="r")
    async with EventRuntime(registry) as runtime:
        event = await _in_thread(lambda: runtime.publish_threadsafe("order:placed"))
        with anyio.fail_after(5):
            await runtime.drain()
    assert isinstance(event, Event)
    assert received == [event.id]


async def test_publish_threadsafe_on_the_loops_thread_is_a_wrong_thread_error(
    registry: Registry,
) -> None:
    """The converse mistake raises the same kind of error, with its own advice."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(WrongThreadError, match="would block the loop") as raised:
            runtime.publish_threadsafe("order:placed")
    assert raised.value.call == "publish_threadsafe"


async def test_a_sync_receiver_publishes_with_publish_threadsafe(registry: Registry) -> None:
    """A sync receiver runs on a worker thread: publish_threadsafe works there, the others not."""
    outcomes: list[object] = []
    done = anyio.Event()

    def sync_receiver(event: Event) -> None:
        try:
            aevents.publish_nowait("order:audited")
        except WrongThreadError as error:
            outcomes.append(type(error))
        outcomes.append(aevents.publish_threadsafe("order:audited").name)

    async def audited(event: Event) -> None:
        done.set()

    registry.subscribe("order:placed", sync_receiver, id="sync")
    registry.subscribe("order:audited", audited, id="audit")
    async with EventRuntime(registry) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await done.wait()
            await runtime.drain()
    assert outcomes == [WrongThreadError, "order:audited"]


async def test_before_start_the_thread_check_gives_way_to_not_running(
    registry: Registry,
) -> None:
    """A runtime that was never entered says so, from any thread."""
    runtime = EventRuntime(registry)
    error = await _in_thread(lambda: runtime.publish_nowait("order:placed"))
    assert isinstance(error, aevents.RuntimeNotRunningError)
    assert "async with runtime:" in error.fix
