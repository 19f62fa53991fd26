"""What each page shows, read from a runtime and its store (through the store protocols)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from ... import AeventsError, EventRuntime, Histogram
from ..._inspect import RoutingReport, inspect_routes
from ..._store._protocol import Backlog, Consumer, Lease, LeasedStore, StoreStats, shared
from .._operations import Filters, filter_letters, pretty_json, redact

__all__ = [
    "Filters",
    "Fleet",
    "ReceiverLatency",
    "age",
    "describe_store",
    "duration",
    "filter_letters",
    "latencies",
    "now",
    "pretty_json",
    "read_fleet",
    "routes_report",
    "store_kind",
    "store_stats",
]


def describe_store(runtime: EventRuntime) -> str:
    """The store as its ``repr`` names it (which hides a URL's password), redacted again."""
    return "none (in memory)" if runtime.store is None else redact(repr(runtime.store))


def store_kind(runtime: EventRuntime) -> str:
    """``"leased"``, ``"journal"`` or ``"none"``."""
    if runtime.store is None:
        return "none"
    return "leased" if shared(runtime.store) else "journal"


async def store_stats(runtime: EventRuntime) -> tuple[StoreStats | None, str | None]:
    """The store's counts, or the error that reading them raised (redacted)."""
    store = runtime.store
    if store is None:
        return None, None
    try:
        return await store.stats(), None
    except AeventsError as error:
        return None, redact(str(error))


NOTHING = "\N{EN DASH}"  # shown for a figure that does not exist


def duration(seconds: float | None) -> str:
    """Seconds as a short human figure: ``12 µs``, ``3.4 ms``, ``1.2 s``, ``5 min``."""
    if seconds is None or math.isnan(seconds):
        return NOTHING
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def age(moment: datetime | None, now: datetime) -> str:
    """How long ago ``moment`` was."""
    return NOTHING if moment is None else duration(max((now - moment).total_seconds(), 0.0))


@attrs.frozen(slots=True)
class ReceiverLatency:
    """One receiver's figures from ``runtime.metrics``."""

    receiver_id: str
    delivered: int
    failed: int
    dead: int
    latency: tuple[str, str, str]
    """p50, p90, p99 of the wait before the first attempt."""
    duration: tuple[str, str, str]
    """p50, p90, p99 of an attempt's run time."""


def _quantiles(histogram: Histogram) -> tuple[str, str, str]:
    q50, q90, q99 = (duration(histogram.quantile(q)) for q in (0.5, 0.9, 0.99))
    return q50, q90, q99


def latencies(runtime: EventRuntime) -> list[ReceiverLatency] | None:
    """Per receiver, from the metrics; None when the runtime keeps none."""
    metrics = runtime.stats().metrics
    if metrics is None:
        return None
    return [
        ReceiverLatency(
            receiver_id,
            figures.delivered,
            figures.failed,
            figures.dead,
            _quantiles(figures.latency),
            _quantiles(figures.duration),
        )
        for receiver_id, figures in sorted(metrics.by_receiver.items())
    ]


@attrs.frozen(slots=True)
class Fleet:
    """What a shared store says of its consumers, leases and backlog."""

    consumers: list[Consumer]
    leases: list[Lease]
    backlog: list[Backlog]
    held_keys: dict[tuple[str, str], str]


async def read_fleet(store: LeasedStore) -> Fleet:
    return Fleet(
        await store.consumers(),
        await store.leases(),
        await store.backlog(),
        await store.held_keys(),
    )


async def routes_report(runtime: EventRuntime) -> RoutingReport:
    """``inspect_routes`` of the runtime's registry, against the live consumers when shared."""
    consumers: Sequence[Consumer] | None = None
    if shared(runtime.store) and isinstance(runtime.store, LeasedStore):
        try:
            consumers = await runtime.store.consumers()
        except AeventsError:
            consumers = None
    return inspect_routes(runtime.registry, consumers=consumers)


def now() -> datetime:
    return datetime.now(UTC)
