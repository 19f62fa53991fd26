"""Other Python event libraries, each driven the way its documentation suggests.

- blinker: one `Signal` per name (a `Namespace`), `await signal.send_async(...)`; sync
  receivers go through `_sync_wrapper` (inline, or `asyncio.to_thread`).
- Django signals: one `Signal` per name, `await signal.asend(...)` after `settings.configure()`;
  async receivers run under `asyncio.gather`, sync ones under `sync_to_async`.
- pyee: `AsyncIOEventEmitter.emit`, which schedules one task per async handler (fire and
  forget); `wait_for_complete()` drains.
- bubus: `EventBus.dispatch(event)` of a pydantic `BaseEvent`; the bus refuses new events past
  100 pending (queued events count twice), so the producer keeps a window of dispatched
  events and awaits the oldest when it is full; `wait_until_idle()` drains.

None of them has `*`/`**` patterns; the routing workload pre-expands the patterns to exact
names for them (so they pay for exact-name dispatch only).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from benchmarks.systems.base import (
    AsyncioSystem,
    BenchmarkError,
    Bus,
    Payload,
    Semantics,
    Subscription,
    System,
    exact_routes,
)

T = TypeVar("T")

_NOT_DURABLE = {
    "durable": "no journal",
    "durable-normal": "no journal",
    "durable-shared": "no journal",
}


# --- blinker -------------------------------------------------------------------------------


def _blinker_receiver(subscription: Subscription) -> Callable[..., Any]:
    on_payload = subscription.on_payload
    if subscription.kind == "async":

        async def receiver(sender: Any, payload: Payload) -> None:
            on_payload(payload)

        return receiver

    def sync_receiver(sender: Any, payload: Payload) -> None:
        on_payload(payload)

    return sync_receiver


def _inline_wrapper(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return call


def _thread_wrapper(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(function, *args, **kwargs)

    return call


class BlinkerBus:
    def __init__(self, signals: dict[str, Any], wrapper: Callable[..., Any] | None) -> None:
        self.signals = signals
        self.wrapper = wrapper

    async def publish(self, name: str, payload: Payload) -> None:
        signal = self.signals.get(name)
        if signal is not None:
            await signal.send_async(None, _sync_wrapper=self.wrapper, payload=payload)

    async def drain(self) -> None:
        return None


@dataclass
class BlinkerSystem(AsyncioSystem):
    @asynccontextmanager
    async def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AsyncIterator[Bus]:
        import blinker

        namespace = blinker.Namespace()
        signals: dict[str, Any] = {}
        kinds = {subscription.kind for subscription in subscriptions}
        for name, subs in exact_routes(subscriptions, names).items():
            signal = signals[name] = namespace.signal(name)
            for subscription in subs:
                signal.connect(_blinker_receiver(subscription), weak=False)
        wrapper = _thread_wrapper if "sync-thread" in kinds else _inline_wrapper
        yield BlinkerBus(signals, wrapper)


# --- Django signals ------------------------------------------------------------------------


def _django_receiver(subscription: Subscription) -> Callable[..., Any]:
    on_payload = subscription.on_payload
    if subscription.kind == "async":

        async def receiver(sender: Any, payload: Payload, **kwargs: Any) -> None:
            on_payload(payload)

        return receiver

    def sync_receiver(sender: Any, payload: Payload, **kwargs: Any) -> None:
        on_payload(payload)

    return sync_receiver


class DjangoBus:
    def __init__(self, signals: dict[str, Any]) -> None:
        self.signals = signals

    async def publish(self, name: str, payload: Payload) -> None:
        signal = self.signals.get(name)
        if signal is not None:
            await signal.asend(sender=None, payload=payload)

    async def drain(self) -> None:
        return None


@dataclass
class DjangoSystem(AsyncioSystem):
    @asynccontextmanager
    async def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AsyncIterator[Bus]:
        from django.conf import settings

        if not settings.configured:
            settings.configure()
        from django.dispatch import Signal

        signals: dict[str, Any] = {}
        for name, subs in exact_routes(subscriptions, names).items():
            signal = signals[name] = Signal()
            for index, subscription in enumerate(subs):
                signal.connect(
                    _django_receiver(subscription), weak=False, dispatch_uid=f"{name}#{index}"
                )
        yield DjangoBus(signals)


# --- pyee ------------------------------------------------------------------------------------


def _pyee_receiver(subscription: Subscription) -> Callable[..., Any]:
    on_payload = subscription.on_payload
    if subscription.kind == "async":

        async def receiver(payload: Payload) -> None:
            on_payload(payload)

        return receiver

    def sync_receiver(payload: Payload) -> None:
        on_payload(payload)

    return sync_receiver


class PyeeBus:
    def __init__(self, emitter: Any) -> None:
        self.emitter = emitter
        self.errors: list[BaseException] = []
        emitter.on("error", self.errors.append)

    async def publish(self, name: str, payload: Payload) -> None:
        self.emitter.emit(name, payload)

    async def drain(self) -> None:
        await self.emitter.wait_for_complete()
        if self.errors:
            raise BenchmarkError(f"pyee handlers failed: {self.errors[:3]!r}")


@dataclass
class PyeeSystem(AsyncioSystem):
    @asynccontextmanager
    async def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AsyncIterator[Bus]:
        from pyee.asyncio import AsyncIOEventEmitter

        emitter = AsyncIOEventEmitter()
        for name, subs in exact_routes(subscriptions, names).items():
            for subscription in subs:
                emitter.on(name, _pyee_receiver(subscription))
        yield PyeeBus(emitter)


# --- bubus -----------------------------------------------------------------------------------

#: bubus refuses a dispatch once 100 events are pending; stay under it and await the oldest.
BUBUS_WINDOW = 40


def _bubus_type(name: str) -> str:
    """bubus event types are Python identifiers; map `tenant1:user:created` to one."""
    return "E_" + name.replace(":", "_").replace(".", "_").replace("-", "_")


def _bubus_receiver(subscription: Subscription, index: int) -> Callable[..., Any]:
    on_payload = subscription.on_payload
    # bubus keys results by handler name and warns on duplicates: give each one its own name.
    if subscription.kind == "async":

        async def receiver(event: Any) -> None:
            on_payload(event.payload)

        receiver.__name__ = receiver.__qualname__ = f"receiver_{index}"
        return receiver

    def sync_receiver(event: Any) -> None:
        on_payload(event.payload)

    sync_receiver.__name__ = sync_receiver.__qualname__ = f"sync_receiver_{index}"
    return sync_receiver


class BubusBus:
    def __init__(self, bus: Any, event_class: type[Any]) -> None:
        self.bus = bus
        self.event_class = event_class
        self.window: deque[Any] = deque()
        self.types: dict[str, str] = {}

    async def publish(self, name: str, payload: Payload) -> None:
        event_type = self.types.get(name)
        if event_type is None:
            event_type = self.types[name] = _bubus_type(name)
        window = self.window
        while len(window) >= BUBUS_WINDOW:
            await window.popleft()
        window.append(self.bus.dispatch(self.event_class(event_type=event_type, payload=payload)))

    async def drain(self) -> None:
        while self.window:
            await self.window.popleft()
        await self.bus.wait_until_idle()


@dataclass
class BubusSystem(AsyncioSystem):
    @asynccontextmanager
    async def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AsyncIterator[Bus]:
        import logging

        from bubus import BaseEvent, EventBus

        logging.getLogger("bubus").setLevel(logging.WARNING)

        class BenchEvent(BaseEvent[None]):  # type: ignore[misc]  # bubus ships no types
            payload: dict[str, Any]

        bus = EventBus(name="bench")
        index = 0
        for name, subs in exact_routes(subscriptions, names).items():
            for subscription in subs:
                bus.on(_bubus_type(name), _bubus_receiver(subscription, index))
                index += 1
        try:
            yield BubusBus(bus, BenchEvent)
        finally:
            await bus.stop(timeout=1, clear=True)


BLINKER_STARTUP = """
import blinker
namespace = blinker.Namespace()
async def on_event(sender, **kwargs):
    pass
for index in range({n}):
    namespace.signal(f"tenant{{index}}:user:created").connect(on_event)
count = sum(len(signal.receivers) for signal in namespace.values())
"""

DJANGO_STARTUP = """
from django.conf import settings
settings.configure()
from django.dispatch import Signal
async def on_event(sender, **kwargs):
    pass
signals = {{}}
for index in range({n}):
    signal = signals[f"tenant{{index}}:user:created"] = Signal()
    signal.connect(on_event)
count = sum(len(signal.receivers) for signal in signals.values())
"""

PYEE_STARTUP = """
from pyee.asyncio import AsyncIOEventEmitter
emitter = AsyncIOEventEmitter()
async def on_event(payload):
    pass
for index in range({n}):
    emitter.on(f"tenant{{index}}:user:created", on_event)
count = sum(len(emitter.listeners(name)) for name in emitter.event_names())
"""

BUBUS_STARTUP = """
from bubus import BaseEvent, EventBus
bus = EventBus(name="startup")
async def on_event(event):
    pass
for index in range({n}):
    bus.on(f"tenant{{index}}_user_created", on_event)
count = sum(len(handlers) for handlers in bus.handlers.values())
"""

SYSTEMS: list[System] = [
    BlinkerSystem(
        name="blinker",
        family="peer",
        description="blinker Signal.send_async (one signal per name, receivers awaited in turn)",
        semantics=Semantics(mode="inline", bounded="n/a", isolated="no", durable="no"),
        unsupported=dict(_NOT_DURABLE),
        startup_code=BLINKER_STARTUP,
    ),
    DjangoSystem(
        name="django",
        family="peer",
        description="Django Signal.asend (async receivers under asyncio.gather)",
        semantics=Semantics(mode="inline", bounded="n/a", isolated="no", durable="no"),
        unsupported={
            **_NOT_DURABLE,
            "sync-inline": "asend always runs sync receivers in a thread (sync_to_async)",
        },
        scale={"memory": 0.2},
        startup_code=DJANGO_STARTUP,
    ),
    PyeeSystem(
        name="pyee",
        family="peer",
        description="pyee AsyncIOEventEmitter.emit (a fire-and-forget task per async handler)",
        semantics=Semantics(mode="task", bounded="no", isolated="yes", durable="no"),
        unsupported={
            **_NOT_DURABLE,
            "sync-thread": "AsyncIOEventEmitter calls sync handlers inline only",
        },
        startup_code=PYEE_STARTUP,
    ),
    BubusSystem(
        name="bubus",
        family="peer",
        description=(
            "bubus EventBus.dispatch of a pydantic BaseEvent (serial run loop); the producer "
            f"awaits the oldest event when {BUBUS_WINDOW} are pending (the bus refuses more)"
        ),
        semantics=Semantics(mode="queued", bounded="yes", isolated="yes", durable="no"),
        unsupported={
            **_NOT_DURABLE,
            "sync-thread": "bubus runs sync handlers inline on the loop only",
        },
        scale={
            "throughput": 0.05,
            "throughput-small": 0.05,
            "fanout": 0.05,
            "routing": 0.05,
            "sync-inline": 0.05,
            "latency": 0.1,
            "memory": 0.01,
        },
        startup_code=BUBUS_STARTUP,
    ),
]
