"""What every system adapter provides, and the few helpers they share.

An adapter turns one event library (or one hand-written floor) into a `Bus`:
subscribe receivers, publish a payload under a name, drain. The workloads in
`benchmarks.workloads` are written once against `Bus`, so every system runs
exactly the same producer loop and the same receiver body.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")

Payload = dict[str, Any]
OnPayload = Callable[[Payload], None]
Kind = Literal["async", "sync-inline", "sync-thread"]

#: Same sizing for aevents and for the hand-written queue floors.
WORKERS = 8
BUFFER = 1024

#: Workloads that publish in batches: run only by systems with ``batches=True``.
BATCH_WORKLOADS = ("throughput-batch",)


class BenchmarkError(RuntimeError):
    """An adapter did not do what the workload asked; its timing must not count."""


class Unavailable(Exception):  # a status, not a failure
    """The system cannot run this workload in this build (reported, never timed)."""


@dataclass(frozen=True)
class Semantics:
    """What a system promises; shown next to every figure so speed is read in context."""

    mode: str  # "inline": publish awaits the receivers; "queued": workers; "task": a task per call
    bounded: str  # does memory stay bounded when receivers are slower than the producer?
    isolated: str  # does a raising receiver leave other receivers / the producer unaffected?
    durable: str  # can accepted events survive a crash?


@dataclass(frozen=True)
class Subscription:
    """One receiver the workload wants: `on_payload` is the shared body every system calls."""

    pattern: str
    on_payload: OnPayload
    kind: Kind = "async"


class Bus(Protocol):
    """A started system, ready to accept publishes."""

    async def publish(self, name: str, payload: Payload) -> None: ...

    # A bus may also have ``async def publish_many(name, payloads)``: the batch workloads
    # use it when it exists, and call ``publish`` once per payload otherwise.

    async def drain(self) -> None:
        """Return once every delivery of every accepted publish has finished."""


@dataclass
class System(ABC):
    """One row of the result tables."""

    name: str
    family: str  # "aevents", "floor", "peer", "durable floor"
    description: str
    semantics: Semantics
    patterns: bool = False  # native `*` / `**` patterns (else the workload pre-expands them)
    #: workload key -> why this system does not run it (shown as "n/a" in the table)
    unsupported: dict[str, str] = field(default_factory=dict)
    #: workload key -> fraction of the workload size this (slow) system runs
    scale: dict[str, float] = field(default_factory=dict)
    #: Python code run in a fresh interpreter by the start-up workload; `{n}` is the number of
    #: subscriptions; it must leave the number of live subscriptions in `count`.
    startup_code: str = ""
    #: runs the batch workloads (`BATCH_WORKLOADS`): with its bus's `publish_many` if it has
    #: one, else one `publish` per event (the comparison a batch is measured against)
    batches: bool = False

    def supports(self, workload: str) -> str | None:
        """None if this system runs `workload`, else the reason it does not."""
        if workload in BATCH_WORKLOADS and not self.batches:
            return "batch workloads run on aevents and asyncio-queue only"
        return self.unsupported.get(workload)

    def size(self, workload: str, n: int) -> int:
        return max(1, int(n * self.scale.get(workload, 1.0)))

    @abstractmethod
    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        """Run `main` on this system's event loop (asyncio, uvloop or trio)."""

    @abstractmethod
    def open(
        self, subscriptions: Sequence[Subscription], names: Sequence[str]
    ) -> AbstractAsyncContextManager[Bus]:
        """Subscribe, start the system and yield a `Bus`; stop it on exit.

        `names` lists every name the workload will publish, so systems without
        patterns can pre-expand the workload's patterns to exact names.
        """

    async def sleep(self, seconds: float) -> None:
        """Sleep on this system's loop (the paced-latency workload uses it)."""
        import anyio

        await anyio.sleep(seconds)


@dataclass
class AsyncioSystem(System):
    """A system that runs on a plain ``asyncio.run`` loop (the peers, the SQLite floors)."""

    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        import asyncio

        async def entry() -> T:
            return await main()

        return asyncio.run(entry())

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(seconds)


# --- pattern matching for systems that have no patterns ---------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    segments = re.split(r"[:.]", pattern)
    for index, segment in enumerate(segments):
        separator = "" if index == 0 else "[:.]"
        if segment == "**":
            # zero or more segments, including their separators
            parts.append(f"(?:{separator}[^:.]+)*" if index else "(?:[^:.]+(?:[:.][^:.]+)*)?")
        elif segment == "*":
            parts.append(f"{separator}[^:.]+")
        else:
            parts.append(separator + re.escape(segment))
    return re.compile("".join(parts) + r"\Z")


def expand(pattern: str, names: Iterable[str]) -> list[str]:
    """The exact names among `names` that `pattern` matches (`*` one segment, `**` any)."""
    if "*" not in pattern:
        return [pattern]
    regex = _pattern_regex(pattern)
    return [name for name in names if regex.match(name)]


def exact_routes(
    subscriptions: Sequence[Subscription], names: Sequence[str]
) -> dict[str, list[Subscription]]:
    """Name -> subscriptions, with patterns pre-expanded over the names the workload uses."""
    routes: dict[str, list[Subscription]] = {}
    for subscription in subscriptions:
        for name in expand(subscription.pattern, names):
            routes.setdefault(name, []).append(subscription)
    return routes
