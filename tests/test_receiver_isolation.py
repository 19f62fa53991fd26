"""Receivers that raise a cancellation or GeneratorExit fail their delivery, not the runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aevents import Event, EventRuntime, Registry, RetryPolicy, SQLiteStore
from aevents.testing import EagerRuntime

pytestmark = pytest.mark.anyio

IMMEDIATE = RetryPolicy(attempts=3, initial_delay=0, jitter=0)

Receiver = Callable[[Event], Awaitable[None]]


async def raise_generator_exit(event: Event) -> None:
    raise GeneratorExit


async def reraise_a_cancellation_of_its_own(event: Event) -> None:
    """Leave a scope it cancelled with that scope's cancellation exception in hand."""
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class() as cancelled:
            caught.append(cancelled)
    raise caught[0]


async def raise_asyncio_cancelled(event: Event) -> None:
    raise asyncio.CancelledError


async def await_an_inner_task_it_cancelled(event: Event) -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    await task


async def cancel_its_own_task(event: Event) -> None:
    current = asyncio.current_task()
    assert current is not None
    current.cancel()
    await asyncio.sleep(0)


PORTABLE: dict[str, Receiver] = {
    "generator-exit": raise_generator_exit,
    "own-scope-cancellation": reraise_a_cancellation_of_its_own,
}
ASYNCIO_ONLY: dict[str, Receiver] = {
    "asyncio-cancelled-error": raise_asyncio_cancelled,
    "awaited-cancelled-task": await_an_inner_task_it_cancelled,
    "cancelled-own-task": cancel_its_own_task,
}


def receiver_for(kind: str, anyio_backend: Any) -> Receiver:
    return ASYNCIO_ONLY[kind] if kind in ASYNCIO_ONLY else PORTABLE[kind]


_LOOPS: list[tuple[str, tuple[str, dict[str, Any]]]] = [
    ("asyncio", ("asyncio", {})),
    ("uvloop", ("asyncio", {"use_uvloop": True})),
    ("trio", ("trio", {})),
]
# Each kind runs on every loop that can raise it: the asyncio-only ways are
# not generated for trio at all (parametrizing anyio_backend here overrides
# the conftest fixture), so nothing is skipped.
KINDS = pytest.mark.parametrize(
    ("kind", "anyio_backend"),
    [
        pytest.param(kind, backend, id=f"{kind}-{loop}")
        for kind in [*PORTABLE, *ASYNCIO_ONLY]
        for loop, backend in _LOOPS
        if kind in PORTABLE or backend[0] == "asyncio"
    ],
)


@KINDS
async def test_a_receiver_raising_a_cancellation_is_retried_then_dead_lettered(
    registry: Registry, kind: str, anyio_backend: Any
) -> None:
    """The delivery is retried and dead-lettered; the runtime and the app body go on."""
    registry.subscribe("order:placed", receiver_for(kind, anyio_backend), id="rogue")
    delivered: list[str] = []

    async def healthy(event: Event) -> None:
        delivered.append(event.id)

    registry.subscribe("order:placed", healthy, id="healthy")
    async with EventRuntime(registry, retry=IMMEDIATE) as runtime:
        first = await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        second = await runtime.publish("order:placed")  # still running
        with anyio.fail_after(5):
            await runtime.drain()
        await anyio.lowlevel.checkpoint()  # the body's own awaits still work
        letters = await runtime.dead_letters()
        stats = runtime.stats()
    assert delivered == [first.id, second.id]
    assert [letter.receiver_id for letter in letters] == ["rogue", "rogue"]
    assert {letter.attempts for letter in letters} == {3}
    assert (stats.failed, stats.retried, stats.dead) == (6, 4, 2)


@KINDS
async def test_a_durable_receiver_raising_a_cancellation_is_dead_lettered(
    registry: Registry, kind: str, anyio_backend: Any, tmp_path: Path
) -> None:
    """With a store too, the delivery is dead-lettered in the journal and nothing stays pending."""
    registry.subscribe("order:placed", receiver_for(kind, anyio_backend), id="rogue")
    store = SQLiteStore(tmp_path / "journal.db")
    async with EventRuntime(registry, retry=IMMEDIATE, store=store) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        letters = await runtime.dead_letters()
    assert [(letter.receiver_id, letter.attempts) for letter in letters] == [("rogue", 3)]


@KINDS
async def test_an_eager_receiver_raising_a_cancellation_becomes_a_dead_letter(
    registry: Registry, kind: str, anyio_backend: Any
) -> None:
    """EagerRuntime(raise_errors=False) treats it as a failed delivery as well."""
    registry.subscribe("order:placed", receiver_for(kind, anyio_backend), id="rogue")
    async with EagerRuntime(registry, retry=IMMEDIATE, raise_errors=False) as runtime:
        await runtime.publish("order:placed")
        await anyio.lowlevel.checkpoint()
        letters = await runtime.dead_letters()
    assert [(letter.receiver_id, letter.attempts) for letter in letters] == [("rogue", 3)]


async def test_a_real_cancellation_still_stops_the_runtime(registry: Registry) -> None:
    """Cancelling the scope around the runtime cancels a receiver's attempt and stops it."""
    started = anyio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await anyio.sleep(60)

    registry.subscribe("order:placed", slow, id="slow")
    with anyio.fail_after(5), anyio.CancelScope() as scope:
        async with EventRuntime(registry, retry=IMMEDIATE) as runtime:
            await runtime.publish("order:placed")
            await started.wait()
            scope.cancel()
            await anyio.sleep(60)
    assert scope.cancelled_caught
    assert runtime.stats().failed == 0


async def test_a_timed_out_attempt_says_which_limit_it_hit(registry: Registry) -> None:
    """The dead letter of a receiver that ran past timeout= names the limit and the attempt."""

    async def hang(event: Event) -> None:
        await anyio.sleep(60)

    registry.subscribe("order:placed", hang, id="hang", timeout=0.01)
    async with EventRuntime(registry, retry=IMMEDIATE) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        letters = await runtime.dead_letters()
    assert [(letter.error_type, letter.error_message) for letter in letters] == [
        ("TimeoutError", "receiver exceeded timeout=0.01 s (attempt 3 of 3)")
    ]


async def test_a_receiver_raising_its_own_timeout_error_keeps_its_message(
    registry: Registry,
) -> None:
    """A TimeoutError the receiver raised itself is not mistaken for the runtime's limit."""

    async def upstream(event: Event) -> None:
        raise TimeoutError("upstream API timed out")

    registry.subscribe("order:placed", upstream, id="upstream", timeout=30)
    async with EventRuntime(registry, retry=RetryPolicy(attempts=1)) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        letters = await runtime.dead_letters()
    assert [(letter.error_type, letter.error_message) for letter in letters] == [
        ("TimeoutError", "upstream API timed out")
    ]
