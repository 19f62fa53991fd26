"""Sync receivers share thread hops: several deliveries run on a thread in one hop each way,
and each keeps its own attempt (current_delivery, timeout, outcome, retry)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import pytest

import aevents
from aevents import Event, EventRuntime, Registry, RetryPolicy

pytestmark = pytest.mark.anyio

IMMEDIATE = RetryPolicy(attempts=2, initial_delay=0, jitter=0)


async def _published_before_the_workers_run(runtime: EventRuntime, name: str, count: int) -> None:
    """Publish ``count`` events without yielding, so that a worker finds them all queued."""
    for n in range(count):
        runtime.publish_nowait(name, payload={"n": n})


async def test_each_delivery_in_a_hop_sees_its_own_current_delivery(registry: Registry) -> None:
    """Deliveries run together in one hop each see their own event, attempt and receiver,
    and the context of the runtime, not of each other."""
    seen: list[tuple[int, aevents.DeliveryInfo | None, int]] = []
    threads: set[int] = set()

    def record(event: Event) -> None:
        threads.add(threading.get_ident())
        seen.append((event.payload["n"], aevents.current_delivery(), threading.get_ident()))

    registry.subscribe("hop:info", record, id="record")
    async with EventRuntime(registry, workers=1) as runtime:
        await _published_before_the_workers_run(runtime, "hop:info", 50)
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().delivered == 50
    assert sorted(n for n, _, _ in seen) == list(range(50))
    for n, info, _ in seen:
        assert info is not None
        assert (info.event.payload["n"], info.receiver_id, info.attempt) == (n, "record", 1)
    assert threading.get_ident() not in threads
    # One worker took them all at once: far fewer threads than deliveries ran them.
    assert len(threads) < 50


async def test_a_slow_receiver_does_not_hold_back_those_behind_it(registry: Registry) -> None:
    """A receiver blocked in its call holds back only itself: the deliveries taken in the
    same hop run on another thread while it is still blocked."""
    release = threading.Event()
    fast_done = threading.Semaphore(0)

    def blocking_or_fast(event: Event) -> None:
        if event.payload["n"] == 0:
            release.wait(10)
        else:
            fast_done.release()

    registry.subscribe("hop:slow", blocking_or_fast, id="mixed")
    async with EventRuntime(registry, workers=1, sync_threads=2) as runtime:
        await _published_before_the_workers_run(runtime, "hop:slow", 21)
        with anyio.fail_after(5):
            for _ in range(20):
                await anyio.to_thread.run_sync(fast_done.acquire)
        assert not release.is_set()  # the first one is still blocked
        assert runtime.stats().in_flight == 1
        release.set()
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().delivered == 21


async def test_with_no_thread_to_spare_the_rest_are_queued_again(registry: Registry) -> None:
    """When every thread is held, the hop's deliveries not started are queued again for
    the other workers (here there is none, so they wait in the queue), and run once a
    thread is free; nothing is lost or run twice."""
    release = threading.Event()
    ran: list[int] = []

    def receiver(event: Event) -> None:
        if event.payload["n"] == 0:
            release.wait(10)
        ran.append(event.payload["n"])

    registry.subscribe("hop:held", receiver, id="held")
    async with EventRuntime(registry, workers=1, sync_threads=1) as runtime:
        await _published_before_the_workers_run(runtime, "hop:held", 10)
        with anyio.fail_after(5):
            while runtime.stats().queued != 9:  # noqa: ASYNC110 (waits for the hand-back)
                await anyio.sleep(0.001)
        assert ran == []
        release.set()
        with anyio.fail_after(5):
            await runtime.drain()
    assert sorted(ran) == list(range(10))


async def test_a_timeout_in_a_hop_fails_only_that_delivery(registry: Registry) -> None:
    """A call past its timeout is given up as ReceiverTimeout and retried, and the others
    of its hop complete; the given-up call is left to finish on its thread."""
    release = threading.Event()
    attempts: list[tuple[int, int]] = []

    def receiver(event: Event) -> None:
        info = aevents.current_delivery()
        assert info is not None
        attempts.append((event.payload["n"], info.attempt))
        if event.payload["n"] == 0 and info.attempt == 1:
            release.wait(10)

    registry.subscribe("hop:timeout", receiver, id="limited", timeout=0.05, retry=IMMEDIATE)
    async with EventRuntime(registry, workers=1, sync_threads=4) as runtime:
        await _published_before_the_workers_run(runtime, "hop:timeout", 10)
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
        assert (stats.delivered, stats.failed, stats.dead) == (10, 1, 0)
        release.set()
    assert sorted(attempts) == [(0, 1), (0, 2)] + [(n, 1) for n in range(1, 10)]


async def test_failures_in_a_hop_are_retried_and_dead_lettered_one_by_one(
    registry: Registry,
) -> None:
    """Each call's exception is its own delivery's failure: retried, then a dead letter."""
    attempts: dict[int, int] = {}

    def receiver(event: Event) -> None:
        n = event.payload["n"]
        attempts[n] = attempts.get(n, 0) + 1
        if n % 3 == 0:
            raise ValueError(f"bad {n}")

    registry.subscribe("hop:fail", receiver, id="failing", retry=IMMEDIATE)
    async with EventRuntime(registry, workers=1) as runtime:
        await _published_before_the_workers_run(runtime, "hop:fail", 9)
        with anyio.fail_after(5):
            await runtime.drain()
        dead = await runtime.dead_letters()
        stats = runtime.stats()
    assert sorted(letter.event.payload["n"] for letter in dead) == [0, 3, 6]
    assert {(letter.error_type, letter.attempts) for letter in dead} == {("ValueError", 2)}
    assert attempts == {n: 2 if n % 3 == 0 else 1 for n in range(9)}
    assert (stats.delivered, stats.dead) == (6, 3)


async def test_a_sync_callable_returning_an_awaitable_is_finished_on_the_loop(
    registry: Registry,
) -> None:
    """A sync receiver in a hop that returns an awaitable (a lambda around an async
    function) has it awaited on the loop, with its delivery still current."""
    seen: list[tuple[int, str | None]] = []

    async def later(event: Event) -> None:
        info = aevents.current_delivery()
        seen.append((event.payload["n"], None if info is None else info.receiver_id))

    registry.subscribe("hop:awaitable", lambda event: later(event), id="wrapped")
    async with EventRuntime(registry, workers=1) as runtime:
        await _published_before_the_workers_run(runtime, "hop:awaitable", 5)
        with anyio.fail_after(5):
            await runtime.drain()
    assert sorted(seen) == [(n, "wrapped") for n in range(5)]


async def test_a_hop_counts_each_delivery_in_metrics(registry: Registry) -> None:
    """With metrics on, every delivery of a hop is counted and timed, its failure too."""

    def receiver(event: Event) -> None:
        if event.payload["n"] == 2:
            raise RuntimeError("two")

    registry.subscribe("hop:metrics", receiver, id="counted", retry=RetryPolicy(attempts=1))
    metrics = aevents.Metrics()
    async with EventRuntime(registry, workers=1, middleware=[metrics]) as runtime:
        await _published_before_the_workers_run(runtime, "hop:metrics", 6)
        with anyio.fail_after(5):
            await runtime.drain()
    figures = metrics.snapshot().by_receiver["counted"]
    assert (figures.published, figures.delivered, figures.failed) == (6, 5, 1)
    assert figures.duration.count == 6


async def test_a_stop_reports_the_hops_deliveries_that_never_started(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped while a hop waits on a blocked call, the deliveries no thread started go
    back to the queue and are reported as not run: none is silently lost."""
    release = threading.Event()
    entered = threading.Event()

    def receiver(event: Event) -> None:
        entered.set()
        release.wait(10)

    registry.subscribe("hop:stop", receiver, id="stuck")
    caplog.set_level(logging.WARNING, logger="aevents")
    try:
        async with EventRuntime(registry, workers=1, sync_threads=1, shutdown_timeout=0.1) as rt:
            await _published_before_the_workers_run(rt, "hop:stop", 6)
            await anyio.to_thread.run_sync(entered.wait, 5)
        stats = rt.stats()
    finally:
        release.set()
    assert stats.delivered == 0
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "6 deliveries not run" in messages
    assert "'stuck'" in messages  # the abandoned call on its thread


def _hooked(seen: list[Any]) -> aevents.Middleware:
    class Hooks(aevents.Middleware):
        def before_delivery(self, delivery: aevents.DeliveryInfo) -> None:
            seen.append(("before", delivery.event.payload["n"]))

        def after_delivery(
            self, delivery: aevents.DeliveryInfo, state: object, error: BaseException | None
        ) -> None:
            seen.append(("after", delivery.event.payload["n"]))

    return Hooks()


async def test_delivery_hooks_still_wrap_every_sync_delivery(registry: Registry) -> None:
    """With delivery hooks, each sync delivery is run alone, inside its hooks."""
    seen: list[Any] = []
    registry.subscribe("hop:hooks", lambda event: seen.append(("run", event.payload["n"])))
    async with EventRuntime(registry, workers=1, middleware=[_hooked(seen)]) as runtime:
        await _published_before_the_workers_run(runtime, "hop:hooks", 3)
        with anyio.fail_after(5):
            await runtime.drain()
    assert seen == [(step, n) for n in range(3) for step in ("before", "run", "after")]


async def test_keyed_deliveries_in_hops_keep_each_keys_order(registry: Registry) -> None:
    """Deliveries with ordering keys go through hops too, one at a time per key and in
    publish order, and each one frees its key for the next."""
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            seen.setdefault(event.key or "", []).append(event.payload["n"])

    registry.subscribe("hop:keyed", record, id="keyed")
    async with EventRuntime(registry, workers=4) as runtime:
        for n in range(300):
            await runtime.publish("hop:keyed", payload={"n": n}, key=f"k{n % 3}")
        with anyio.fail_after(10):
            await runtime.drain()
        assert runtime.stats().delivered == 300
    assert seen == {f"k{k}": list(range(k, 300, 3)) for k in range(3)}


async def test_publishers_waiting_for_room_get_the_room_a_hop_frees(registry: Registry) -> None:
    """A hop takes many deliveries off the queue at once; the room they held goes back to
    the publishers waiting for it, so a buffer far smaller than the flood never stalls."""
    total = 0
    lock = threading.Lock()

    def add(event: Event) -> None:
        nonlocal total
        with lock:
            total += event.payload["n"]

    registry.subscribe("hop:room", add, id="add")
    async with EventRuntime(registry, workers=2, buffer=8) as runtime:
        async with anyio.create_task_group() as group:
            for part in range(4):
                group.start_soon(_publish_range, runtime, range(part, 2000, 4))
        with anyio.fail_after(10):
            await runtime.drain()
        assert runtime.stats().delivered == 2000
    assert total == sum(range(2000))


async def _publish_range(runtime: EventRuntime, numbers: range) -> None:
    for n in numbers:
        await runtime.publish("hop:room", payload={"n": n})


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_call_that_ends_after_its_loop_has_closed_is_dropped_quietly(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync call abandoned at shutdown ends on its thread after the event loop itself
    is gone: telling that loop fails, and the thread drops the outcome without an error."""
    release = threading.Event()
    entered = threading.Event()
    returned = threading.Event()
    thread_errors: list[BaseException | None] = []
    registry = Registry()

    def receiver(event: Event) -> None:
        entered.set()
        release.wait(10)
        returned.set()

    registry.subscribe("hop:late", receiver, id="late")

    async def main() -> None:
        # With delivery hooks the call runs alone (not in a hop), and its thread tells the
        # loop when it ends even though it was abandoned.
        async with EventRuntime(
            registry,
            workers=1,
            sync_threads=1,
            shutdown_timeout=0.1,
            middleware=[_hooked([])],
        ) as rt:
            await rt.publish("hop:late", payload={"n": 1})
            await anyio.to_thread.run_sync(entered.wait, 5)

    previous = threading.excepthook
    threading.excepthook = lambda args: thread_errors.append(args.exc_value)
    try:
        anyio.run(main, backend=backend)
        release.set()
        assert returned.wait(5)
        time.sleep(0.2)  # the thread tells the closed loop, then waits for more work
    finally:
        threading.excepthook = previous
        release.set()
    assert thread_errors == []
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
