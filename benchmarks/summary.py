"""Reduce raw outcomes to medians and ranges, and evaluate the project's performance goals.

Pure data in, pure data out (no printing), so the table, the JSON file and the plots all
read the same numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.runner import Outcome
from benchmarks.systems import BASELINE
from benchmarks.workloads import WORKLOADS

Summary = dict[str, dict[str, dict[str, Any]]]  # workload -> system -> cell


def summarize(outcomes: Sequence[Outcome], sizes: Mapping[str, int] | None = None) -> Summary:
    """workload -> system -> {status, n, size, reason, metrics: key -> {median, min, max, ...}}.

    `sizes` gives each workload's nominal n, so a system that ran a smaller n shows it.
    """
    summary: Summary = {}
    for outcome in outcomes:
        job = outcome.job
        cell = summary.setdefault(job.workload, {}).setdefault(
            job.system,
            {
                "status": outcome.status,
                "n": job.n,
                "size": (sizes or {}).get(job.workload, job.n),
                "samples": [],
                "reasons": [],
            },
        )
        if outcome.status == "skipped":
            continue
        if outcome.status == "ok":
            cell["samples"].append(outcome.metrics)
        else:
            cell["reasons"].append(outcome.reason)
        # any error poisons the cell: a broken adapter must never look fast
        if outcome.status == "error" or cell["status"] != "error":
            cell["status"] = outcome.status
    for cells in summary.values():
        for cell in cells.values():
            samples: list[dict[str, Any]] = cell.pop("samples")
            reasons: list[str] = cell.pop("reasons")
            cell["reason"] = reasons[0] if reasons else ""
            cell["repetitions"] = len(samples)
            cell["metrics"] = _reduce(samples) if cell["status"] == "ok" else {}
    return summary


def _reduce(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = [key for key, value in samples[0].items() if isinstance(value, int | float)]
    reduced: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = [float(sample[key]) for sample in samples]
        reduced[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "samples": values,
        }
    return reduced


def median(summary: Summary, workload: str, system: str, metric: str) -> float | None:
    cell = summary.get(workload, {}).get(system)
    if not cell or cell["status"] != "ok" or metric not in cell["metrics"]:
        return None
    return float(cell["metrics"][metric]["median"])


def ratio(summary: Summary, workload: str, system: str, metric: str) -> float | None:
    """system median / BASELINE median (None when either is missing or the base is ~0)."""
    value = median(summary, workload, system, metric)
    base = median(summary, workload, BASELINE, metric)
    if value is None or base is None or abs(base) < 1e-9:
        return None
    return value / base


@dataclass(frozen=True)
class Goal:
    """A target from the issues; shown, never asserted."""

    source: str
    text: str
    workload: str
    metric: str
    target: float
    higher_is_better: bool
    versus: str | None = None  # compare aevents / versus instead of the absolute value
    #: compare the system's variant (its name + this suffix) / the system itself
    variant: str | None = None

    def measure(self, summary: Summary, system: str) -> float | None:
        if self.variant is not None:
            value = median(summary, self.workload, system + self.variant, self.metric)
            other = median(summary, self.workload, system, self.metric)
            return None if value is None or not other else value / other
        value = median(summary, self.workload, system, self.metric)
        if value is None or self.versus is None:
            return value
        other = median(summary, self.workload, self.versus, self.metric)
        if other is None or other == 0:
            return None
        return value / other

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.target if self.higher_is_better else value < self.target


#: Flat means the growth stays under this many MiB whatever the number of publishes.
FLAT_MIB = 16.0

GOALS: tuple[Goal, ...] = (
    Goal("issue 2", "1 name/1 receiver ≥ 500k events/s", "throughput", "rate", 500_000, True),
    Goal(
        "issues 2, 4",
        "1 name/1 receiver ≥ 0.6x asyncio-queue",
        "throughput",
        "rate",
        0.6,
        True,
        versus="asyncio-queue",
    ),
    Goal(
        "issue 2",
        "1b small payload ≥ 500k events/s",
        "throughput-small",
        "rate",
        500_000,
        True,
    ),
    Goal(
        "issue 2",
        "1b small payload ≥ 0.6x asyncio-queue",
        "throughput-small",
        "rate",
        0.6,
        True,
        versus="asyncio-queue",
    ),
    Goal(
        "issue 14",
        "1c publish_many, batches of 100 ≥ 0.7x asyncio-queue one put per event (goal 1.0x)",
        "throughput-batch",
        "rate",
        0.7,
        True,
        versus="asyncio-queue",
    ),
    Goal(
        "(context)",
        "1 name/1 receiver vs the queue doing the contract's work",
        "throughput",
        "rate",
        0.6,
        True,
        versus="asyncio-queue-contract",
    ),
    Goal("issue 2", "fan-out 10 ≥ 1M deliveries/s", "fanout", "rate", 1_000_000, True),
    Goal("issue 2", "latency p99 < 100 µs at 5k/s", "latency", "p99", 100.0, False),
    Goal(
        "issue 7",
        "metrics overhead < 10% (1 name/1 receiver, metrics on ÷ off ≥ 0.9x)",
        "throughput",
        "rate",
        0.9,
        True,
        variant="-metrics",
    ),
    Goal(
        "(context)",
        "metrics overhead on fan-out 10 (on ÷ off)",
        "fanout",
        "rate",
        0.9,
        True,
        variant="-metrics",
    ),
    Goal(
        "issue 2",
        f"RSS flat under flood (growth < {FLAT_MIB:g} MiB)",
        "memory",
        "growth",
        FLAT_MIB,
        False,
    ),
    Goal("issue 4", "1 name/1 receiver ≥ 7x pyee", "throughput", "rate", 7.0, True, versus="pyee"),
    Goal(
        "issue 4",
        "1 name/1 receiver ≥ 100x bubus",
        "throughput",
        "rate",
        100.0,
        True,
        versus="bubus",
    ),
    Goal(
        "issue 4",
        "1 name/1 receiver > naive anyio stream",
        "throughput",
        "rate",
        1.0,
        True,
        versus="anyio-stream",
    ),
)

AEVENTS_SYSTEMS = ("aevents-asyncio", "aevents-uvloop", "aevents-trio")


def evaluate_goals(summary: Summary) -> list[dict[str, Any]]:
    rows = []
    for goal in GOALS:
        if goal.workload not in WORKLOADS:
            continue
        results = {}
        for system in AEVENTS_SYSTEMS:
            value = goal.measure(summary, system)
            results[system] = {"value": value, "met": goal.met(value)}
        rows.append(
            {
                "source": goal.source,
                "goal": goal.text,
                "workload": goal.workload,
                "metric": goal.metric,
                "target": goal.target,
                "relative_to": goal.versus
                or (goal.variant and f"the same system without {goal.variant}"),
                "higher_is_better": goal.higher_is_better,
                "results": results,
            }
        )
    return rows
