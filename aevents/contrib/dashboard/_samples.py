"""The counters over time: a bounded ring of samples, rates, and the chart drawn from them.

The dashboard samples the runtime's ``stats()`` when a page is served (a page
left open refreshes itself, and so keeps sampling), at most once per
``interval`` seconds. Counters only grow, so the rate between any two samples
is exact however far apart they are; the ring keeps the last ``size``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Sequence

import attrs

from ... import RuntimeStats

__all__ = ["Chart", "Sample", "Samples", "chart"]


@attrs.frozen(slots=True)
class Sample:
    """The runtime's counters at one moment."""

    at: float
    """``time.monotonic()`` when taken."""
    wall: float
    """``time.time()`` when taken."""
    published: int
    delivered: int
    failed: int
    dead: int


class Samples:
    """The ring of samples of one runtime; a different or restarted one starts it over."""

    def __init__(self, size: int, interval: float) -> None:
        self.interval = interval
        self._ring: deque[Sample] = deque(maxlen=size)
        self._owner: int | None = None

    def take(self, stats: RuntimeStats, owner: int, *, now: float | None = None) -> None:
        """Add a sample of ``stats``: the newest sample is always the latest reading, and
        the ones before it are at least ``interval`` apart (a newer reading replaces a
        newest one that came less than ``interval`` after the one before it)."""
        at = time.monotonic() if now is None else now
        sample = Sample(at, time.time(), stats.published, stats.delivered, stats.failed, stats.dead)
        ring = self._ring
        if owner != self._owner or (ring and sample.published < ring[-1].published):
            ring.clear()
            self._owner = owner
        elif len(ring) >= 2 and ring[-1].at - ring[-2].at < self.interval:
            ring[-1] = sample
            return
        ring.append(sample)

    def rate(self, field: str, window: float) -> float | None:
        """Per second over about the last ``window`` seconds; None with fewer than two samples."""
        if len(self._ring) < 2:
            return None
        last = self._ring[-1]
        first = next((s for s in self._ring if last.at - s.at <= window), last)
        if first is last:
            first = self._ring[-2]
        span = last.at - first.at
        if span <= 0:
            return None
        change: int = getattr(last, field) - getattr(first, field)
        return change / span

    def span(self) -> float:
        """Seconds between the oldest sample kept and the newest."""
        return self._ring[-1].at - self._ring[0].at if len(self._ring) > 1 else 0.0

    def __len__(self) -> int:
        return len(self._ring)

    def samples(self) -> list[Sample]:
        """The samples, oldest first."""
        return list(self._ring)


@attrs.frozen(slots=True)
class Chart:
    """An SVG chart's numbers: polyline points per series, and its scale."""

    width: int
    height: int
    delivered: str
    failed: str
    top: float
    """The rate at the top of the chart, per second."""
    seconds: float
    """The time the chart spans."""


def chart(samples: Sequence[Sample], *, width: int = 640, height: int = 140) -> Chart | None:
    """Deliveries and failed attempts per second between samples; None below three samples."""
    if len(samples) < 3:
        return None
    pairs = list(itertools.pairwise(samples))
    start, end = samples[1].at, samples[-1].at
    span = max(end - start, 1e-9)
    rates = [
        (
            later.at,
            (later.delivered - earlier.delivered) / max(later.at - earlier.at, 1e-9),
            (later.failed - earlier.failed) / max(later.at - earlier.at, 1e-9),
        )
        for earlier, later in pairs
    ]
    top = _nice(max(max(d, f) for _, d, f in rates))

    def points(index: int) -> str:
        return " ".join(
            f"{(at - start) / span * width:.1f},{height - rate[index - 1] / top * height:.1f}"
            for at, *rate in rates
        )

    return Chart(width, height, points(1), points(2), top, end - samples[0].at)


def _nice(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten at or above ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns
