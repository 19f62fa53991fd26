"""aevents itself, on asyncio, on asyncio with uvloop, and on trio.

Plus two instrumented variants on asyncio, to price observability against
``aevents-asyncio`` on workloads 1, 1b and 2: ``-metrics`` runs with an
``aevents.Metrics`` middleware, ``-tracing`` with ``aevents.contrib.otel.Tracing``
on an OpenTelemetry SDK tracer provider that records every span and exports
none (what instrumentation costs before any exporter does).
"""

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

#: The workloads the instrumented variants run: enough to price them, no more.
INSTRUMENTED_WORKLOADS = ("throughput", "throughput-small", "fanout")

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

    async def publish_many(self, name: str, payloads: list[Payload]) -> None:
        await self.runtime.publish_many(name, payloads)

    async def drain(self) -> None:
        await self.runtime.drain()
        stats = self.runtime.stats()
        if stats.failed or stats.dead:
            raise BenchmarkError(f"aevents reported failures: {stats!r}")


def instrumentation(kind: str) -> list[Any]:
    """The middleware of an instrumented variant ("" for none)."""
    if kind == "metrics":
        import aevents

        return [aevents.Metrics()]
    if kind == "tracing":
        from benchmarks.systems.base import Unavailable

        try:
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError:
            raise Unavailable("needs opentelemetry-sdk (pip install -e '.[test]')") from None
        from aevents.contrib.otel import Tracing

        return [Tracing(TracerProvider())]
    return []


@dataclass
class AeventsSystem(System):
    backend: str = "asyncio"
    backend_options: dict[str, Any] = field(default_factory=dict)
    instrument: str = ""  # "metrics" or "tracing": the variant's middleware

    def supports(self, workload: str) -> str | None:
        if self.instrument and workload not in INSTRUMENTED_WORKLOADS:
            return f"instrumented variants run {', '.join(INSTRUMENTED_WORKLOADS)} only"
        return super().supports(workload)

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
        async with aevents.EventRuntime(
            registry,
            workers=WORKERS,
            buffer=BUFFER,
            middleware=instrumentation(self.instrument),
        ) as runtime:
            yield AeventsBus(runtime)

    @asynccontextmanager
    async def open_durable(
        self,
        subscriptions: Sequence[Subscription],
        path: str,
        synchronous: str,
        *,
        shared: bool = False,
    ) -> AsyncIterator[Bus]:
        """The runtime on aevents' SQLiteStore (raises Unavailable if not in this build):
        the one process that has the file (``exclusive=True``), or, with ``shared``, the
        store as processes share it (the default store: leases, claims, started attempts)."""
        import aevents
        from benchmarks.systems.base import Unavailable

        if not hasattr(aevents, "SQLiteStore"):
            raise Unavailable("not available in this build (aevents.SQLiteStore is missing)")
        registry = aevents.Registry()
        for index, subscription in enumerate(subscriptions):
            registry.subscribe(subscription.pattern, make_receiver(subscription), id=f"r{index}")
        store = aevents.SQLiteStore(path, synchronous=synchronous, exclusive=not shared)
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
                "durable-shared": "durable runs measured on aevents-asyncio only",
            }
        ),
        startup_code=STARTUP_CODE.replace("{backend_import}", imports),
        backend=backend,
        backend_options=options,
        batches=True,
    )


def _instrumented(kind: str, note: str) -> System:
    return AeventsSystem(
        name=f"aevents-asyncio-{kind}",
        family="aevents",
        description=f"aevents EventRuntime(workers={WORKERS}, buffer={BUFFER}) on asyncio {note}",
        semantics=SEMANTICS,
        patterns=True,
        startup_code=STARTUP_CODE.replace("{backend_import}", ""),
        instrument=kind,
    )


SYSTEMS: list[System] = [
    _system("aevents-asyncio", "asyncio", {}, "", "on asyncio"),
    _system("aevents-uvloop", "asyncio", {"use_uvloop": True}, "import uvloop", "on uvloop"),
    _system("aevents-trio", "trio", {}, "import trio", "on trio"),
    _instrumented("metrics", "with the Metrics middleware"),
    _instrumented("tracing", "with Tracing on an SDK tracer provider that exports nothing"),
]
