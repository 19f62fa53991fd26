"""Hand-written floors and ceilings: what the bare primitives cost with no library at all.

- `direct`: the producer awaits every receiver itself (no queue): the ceiling for inline.
- `asyncio-queue`: a bounded `asyncio.Queue` and worker tasks; one item per event, the worker
  awaits the event's receivers in turn; `join()` drains. No isolation: a raising receiver
  kills its worker.
- `anyio-stream`: an anyio memory object stream and workers, written the naive way
  (`await send` / `async for`).
- `anyio-stream-nowait`: the same with `send_nowait` / `receive_nowait`, awaiting only on
  `WouldBlock` (the fast path aevents is expected to use).

All of them route with a plain dict lookup; patterns are pre-expanded to exact names.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import orjson

from benchmarks.systems.base import (
    BUFFER,
    WORKERS,
    Bus,
    OnPayload,
    Payload,
    Semantics,
    Subscription,
    System,
    exact_routes,
)

T = TypeVar("T")

Route = tuple[tuple[OnPayload, str], ...]

STARTUP_CODE = """
import {module}
routes = {{}}
async def on_event(payload):
    pass
for index in range({n}):
    routes.setdefault(f"tenant{{index}}:user:created", []).append(on_event)
count = sum(len(receivers) for receivers in routes.values())
"""


def build_routes(subscriptions: Sequence[Subscription], names: Sequence[str]) -> dict[str, Route]:
    return {
        name: tuple((sub.on_payload, sub.kind) for sub in subs)
        for name, subs in exact_routes(subscriptions, names).items()
    }


async def call_asyncio(route: Route, payload: Payload) -> None:
    """Deliver one event to its receivers on asyncio (sync-thread via the default executor)."""
    for on_payload, kind in route:
        if kind == "async":
            await _async_receiver(on_payload, payload)
        elif kind == "sync-inline":
            on_payload(payload)
        else:
            await asyncio.get_running_loop().run_in_executor(None, on_payload, payload)


async def call_anyio(route: Route, payload: Payload) -> None:
    import anyio.to_thread

    for on_payload, kind in route:
        if kind == "async":
            await _async_receiver(on_payload, payload)
        elif kind == "sync-inline":
            on_payload(payload)
        else:
            await anyio.to_thread.run_sync(on_payload, payload)


async def _async_receiver(on_payload: OnPayload, payload: Payload) -> None:
    """The async receiver body every floor awaits (same shape as the libraries' receivers)."""
    on_payload(payload)


class DirectBus:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    async def publish(self, name: str, payload: Payload) -> None:
        route = self.routes.get(name)
        if route:
            await call_asyncio(route, payload)

    async def drain(self) -> None:
        return None


class AsyncioQueueBus:
    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.queue: asyncio.Queue[tuple[Route, Payload]] = asyncio.Queue(maxsize=BUFFER)

    async def work(self) -> None:
        queue = self.queue
        while True:
            route, payload = await queue.get()
            await call_asyncio(route, payload)
            queue.task_done()

    async def publish(self, name: str, payload: Payload) -> None:
        route = self.routes.get(name)
        if route:
            await self.queue.put((route, payload))

    async def drain(self) -> None:
        await self.queue.join()


class ContractQueueBus(AsyncioQueueBus):
    """The bare queue doing the per-event work every aevents publish must do, and no more.

    Each publish makes the orjson round trip (receivers see what a journal would
    hand back) and builds a frozen attrs event with a time-sortable id and a UTC
    timestamp. No name validation, routing cache, isolation, retries or
    cancellation checks: it prices that fixed cost, so aevents' ratio
    to it is the price of everything else.
    """

    async def publish(self, name: str, payload: Payload) -> None:
        route = self.routes.get(name)
        if route:
            body = orjson.loads(orjson.dumps(payload))
            stamp = (time.time_ns() << 24) | (next(_sequence) & 0xFFFFFF)
            event = _ContractEvent(
                stamp.to_bytes(11, "big").hex(), name, body, datetime.now(UTC), {}
            )
            await self.queue.put((route, event.payload))


@attrs.frozen(slots=True)
class _ContractEvent:
    id: str
    name: str
    payload: Any
    occurred_at: datetime
    metadata: Any


_sequence = itertools.count()


class AnyioStreamBus:
    def __init__(self, routes: dict[str, Route], nowait: bool) -> None:
        import anyio

        self.routes = routes
        self.nowait = nowait
        self.send, self.receive = anyio.create_memory_object_stream[tuple[Route, Payload]](BUFFER)
        self.finished = anyio.Event()
        self.running = 0

    async def work_naive(self, receive: Any) -> None:
        async with receive:
            async for route, payload in receive:
                await call_anyio(route, payload)

    async def work_nowait(self, receive: Any) -> None:
        import anyio

        async with receive:
            while True:
                try:
                    route, payload = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        route, payload = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                await call_anyio(route, payload)

    async def worker(self, receive: Any) -> None:
        self.running += 1
        try:
            await (self.work_nowait(receive) if self.nowait else self.work_naive(receive))
        finally:
            self.running -= 1
            if not self.running:
                self.finished.set()

    async def publish(self, name: str, payload: Payload) -> None:
        route = self.routes.get(name)
        if not route:
            return
        if self.nowait:
            import anyio

            try:
                self.send.send_nowait((route, payload))
            except anyio.WouldBlock:
                await self.send.send((route, payload))
        else:
            await self.send.send((route, payload))

    async def drain(self) -> None:
        """Close the stream and wait for the workers to finish it (a stream has no join)."""
        await self.send.aclose()
        await self.finished.wait()


@dataclass
class AsyncioFloor(System):
    queued: bool = False
    contract: bool = False  # do aevents' minimum per-event work (see ContractQueueBus)

    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        return asyncio.run(main())  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @asynccontextmanager
    async def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AsyncIterator[Bus]:
        routes = build_routes(subscriptions, names)
        if not self.queued:
            yield DirectBus(routes)
            return
        bus = ContractQueueBus(routes) if self.contract else AsyncioQueueBus(routes)
        workers = [asyncio.create_task(bus.work()) for _ in range(WORKERS)]
        try:
            yield bus
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


@dataclass
class AnyioFloor(System):
    nowait: bool = False

    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        import anyio

        return anyio.run(main, backend="asyncio")

    @asynccontextmanager
    async def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AsyncIterator[Bus]:
        import anyio

        bus = AnyioStreamBus(build_routes(subscriptions, names), self.nowait)
        async with anyio.create_task_group() as tasks:
            with bus.receive:
                for _ in range(WORKERS):
                    tasks.start_soon(bus.worker, bus.receive.clone())
            try:
                yield bus
            finally:
                bus.send.close()


_NOT_DURABLE = {
    "durable": "no journal (see the sqlite-* floors)",
    "durable-normal": "no journal (see the sqlite-* floors)",
    "durable-shared": "no journal (see the sqlite-* floors)",
}

SYSTEMS: list[System] = [
    AsyncioFloor(
        name="direct",
        family="floor",
        description="ceiling: the producer awaits each receiver directly, no queue (asyncio)",
        semantics=Semantics(mode="inline", bounded="n/a", isolated="no", durable="no"),
        unsupported=dict(_NOT_DURABLE),
        startup_code=STARTUP_CODE.replace("{module}", "asyncio"),
        queued=False,
    ),
    AsyncioFloor(
        name="asyncio-queue",
        family="floor",
        description=f"bare asyncio.Queue(maxsize={BUFFER}) + {WORKERS} worker tasks, join()",
        semantics=Semantics(mode="queued", bounded="yes", isolated="no", durable="no"),
        unsupported=dict(_NOT_DURABLE),
        startup_code=STARTUP_CODE.replace("{module}", "asyncio"),
        queued=True,
        batches=True,  # one put per event: what a batch publish is measured against
    ),
    AsyncioFloor(
        name="asyncio-queue-contract",
        family="floor",
        description=(
            f"bare asyncio.Queue(maxsize={BUFFER}) + {WORKERS} workers, each publish doing the "
            "minimum per-event work of aevents: orjson round trip + frozen attrs event "
            "(sortable id, UTC)"
        ),
        semantics=Semantics(mode="queued", bounded="yes", isolated="no", durable="no"),
        unsupported=dict(_NOT_DURABLE),
        startup_code=STARTUP_CODE.replace("{module}", "asyncio"),
        queued=True,
        contract=True,
    ),
    AnyioFloor(
        name="anyio-stream",
        family="floor",
        description=(
            f"anyio memory object stream({BUFFER}) + {WORKERS} workers, naive "
            "`await send` / `async for` (asyncio backend)"
        ),
        semantics=Semantics(mode="queued", bounded="yes", isolated="no", durable="no"),
        unsupported=dict(_NOT_DURABLE),
        startup_code=STARTUP_CODE.replace("{module}", "anyio"),
        nowait=False,
    ),
    AnyioFloor(
        name="anyio-stream-nowait",
        family="floor",
        description=(
            f"anyio memory object stream({BUFFER}) + {WORKERS} workers, "
            "send_nowait / receive_nowait, await only on WouldBlock (asyncio backend)"
        ),
        semantics=Semantics(mode="queued", bounded="yes", isolated="no", durable="no"),
        unsupported=dict(_NOT_DURABLE),
        startup_code=STARTUP_CODE.replace("{module}", "anyio"),
        nowait=True,
    ),
]
