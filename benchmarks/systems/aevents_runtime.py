"""aevents itself, on asyncio, on asyncio with uvloop, and on trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from benchmarks.systems.base import (
    BUFFER,
    WORKERS,
    BenchmarkError,
    Bus,
    Payload,
    Semantics,
    Subscription,
    System,
)

T = TypeVar("T")

SEMANTICS = Semantics(mode="queued", bounded="yes", isolated="yes", durable="yes")

STARTUP_CODE = """
import aevents
{backend_import}
registry = aevents.Registry()
async def on_event(event):
    pass
for index in range({n}):
    registry.subscribe(f"tenant{{index}}:user:created", on_event)
count = len(registry)
"""


def make_receiver(subscription: Subscription) -> Callable[[Any], Any]:
    on_payload = subscription.on_payload
    if subscription.kind == "async":

        async def receiver(event: Any) -> None:
            on_payload(event.payload)

        return receiver

    def sync_receiver(event: Any) -> None:
        on_payload(event.payload)

    return sync_receiver


class AeventsBus:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    async def publish(self, name: str, payload: Payload) -> None:
        await self.runtime.publish(name, payload=payload)

    async def drain(self) -> None:
        await self.runtime.drain()
        stats = self.runtime.stats()
        if stats.failed or stats.dead:
            raise BenchmarkError(f"aevents reported failures: {stats!r}")


@dataclass
class AeventsSystem(System):
    backend: str = "asyncio"
    backend_options: dict[str, Any] = field(default_factory=dict)

    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        import anyio

        return anyio.run(main, backend=self.backend, backend_options=self.backend_options)

    @asynccontextmanager
    async def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AsyncIterator[Bus]:
        import aevents

        registry = aevents.Registry()
        for index, subscription in enumerate(subscriptions):
            options: dict[str, Any] = {"id": f"r{index}"}
            if subscription.kind == "sync-inline":
                options["inline"] = True
            registry.subscribe(subscription.pattern, make_receiver(subscription), **options)
        async with aevents.EventRuntime(registry, workers=WORKERS, buffer=BUFFER) as runtime:
            yield AeventsBus(runtime)

    @asynccontextmanager
    async def open_durable(
        self, subscriptions: Sequence[Subscription], path: str, synchronous: str
    ) -> AsyncIterator[Bus]:
        """The runtime with aevents' SQLite journal (raises Unavailable if not in this build)."""
        import aevents
        from benchmarks.systems.base import Unavailable

        if not hasattr(aevents, "SQLiteStore"):
            raise Unavailable("not available in this build (aevents.SQLiteStore is missing)")
        registry = aevents.Registry()
        for index, subscription in enumerate(subscriptions):
            registry.subscribe(subscription.pattern, make_receiver(subscription), id=f"r{index}")
        store = aevents.SQLiteStore(path, synchronous=synchronous)
        async with aevents.EventRuntime(
            registry, workers=WORKERS, buffer=BUFFER, store=store
        ) as runtime:
            yield AeventsBus(runtime)


def _system(name: str, backend: str, options: dict[str, Any], imports: str, note: str) -> System:
    return AeventsSystem(
        name=name,
        family="aevents",
        description=f"aevents EventRuntime(workers={WORKERS}, buffer={BUFFER}) {note}",
        semantics=SEMANTICS,
        patterns=True,
        unsupported=(
            {}
            if name == "aevents-asyncio"
            else {
                "durable": "durable runs measured on aevents-asyncio only",
                "durable-normal": "durable runs measured on aevents-asyncio only",
            }
        ),
        startup_code=STARTUP_CODE.replace("{backend_import}", imports),
        backend=backend,
        backend_options=options,
    )


SYSTEMS: list[System] = [
    _system("aevents-asyncio", "asyncio", {}, "", "on asyncio"),
    _system("aevents-uvloop", "asyncio", {"use_uvloop": True}, "import uvloop", "on uvloop"),
    _system("aevents-trio", "trio", {}, "import trio", "on trio"),
]
