"""Every system the benchmarks compare, by name, in table order."""

from __future__ import annotations

from benchmarks.systems import aevents_runtime, durable, floors, peers
from benchmarks.systems.base import (
    BenchmarkError,
    Bus,
    Semantics,
    Subscription,
    System,
    Unavailable,
)

SYSTEMS: dict[str, System] = {
    system.name: system
    for system in (
        *aevents_runtime.SYSTEMS,
        *floors.SYSTEMS,
        *peers.SYSTEMS,
        *durable.SYSTEMS,
    )
}

#: Every ratio in the report is relative to this system.
BASELINE = "aevents-asyncio"

__all__ = [
    "BASELINE",
    "SYSTEMS",
    "BenchmarkError",
    "Bus",
    "Semantics",
    "Subscription",
    "System",
    "Unavailable",
]
