"""The dashboard's ring of samples: rates from counters, a restart, and the chart's numbers."""

from __future__ import annotations

import pytest

from aevents import RuntimeStats
from aevents.contrib.dashboard._samples import Samples, chart


def stats(published: int, delivered: int = 0, failed: int = 0) -> RuntimeStats:
    return RuntimeStats(
        published=published,
        unrouted=0,
        delivered=delivered,
        failed=failed,
        retried=0,
        dead=0,
        dropped=0,
        queued=0,
        in_flight=0,
        retrying=0,
    )


def test_a_rate_is_the_change_over_the_window_per_second() -> None:
    """From the oldest sample inside the window to the newest; None with one sample."""
    samples = Samples(size=100, interval=1.0)
    samples.take(stats(0), owner=1, now=0.0)
    assert samples.rate("published", 60) is None
    for second in range(1, 121):
        samples.take(stats(second * 10, delivered=second * 5), owner=1, now=float(second))
    assert samples.rate("published", 60) == pytest.approx(10.0)
    assert samples.rate("delivered", 300) == pytest.approx(5.0)


def test_samples_are_an_interval_apart_but_the_newest_is_the_latest_reading() -> None:
    """A reading too soon after the one before replaces it; the ring keeps the newest ``size``."""
    samples = Samples(size=3, interval=5.0)
    seen = []
    for at in (0.0, 1.0, 5.0, 10.0, 15.0, 16.0, 17.0):
        samples.take(stats(int(at)), owner=1, now=at)
        seen.append([sample.at for sample in samples.samples()])
    assert seen == [
        [0.0],
        [0.0, 1.0],
        [0.0, 5.0],
        [0.0, 5.0, 10.0],
        [5.0, 10.0, 15.0],
        [10.0, 15.0, 16.0],
        [10.0, 15.0, 17.0],
    ]


def test_another_or_a_restarted_runtime_starts_the_ring_over() -> None:
    """Counters that go back, or another runtime, would give negative rates: start over."""
    samples = Samples(size=10, interval=0.0)
    samples.take(stats(100), owner=1, now=0.0)
    samples.take(stats(5), owner=1, now=1.0)
    assert len(samples) == 1
    samples.take(stats(50), owner=2, now=2.0)
    assert [sample.published for sample in samples.samples()] == [50]


def test_the_chart_scales_to_a_round_top_and_needs_three_samples() -> None:
    """Points run left to right over the span; the top is 1, 2 or 5 times a power of ten."""
    samples = Samples(size=10, interval=0.0)
    samples.take(stats(0), owner=1, now=0.0)
    samples.take(stats(0, delivered=30), owner=1, now=1.0)
    assert chart(samples.samples()) is None
    samples.take(stats(0, delivered=60, failed=3), owner=1, now=2.0)
    drawn = chart(samples.samples(), width=100, height=50)
    assert drawn is not None
    assert drawn.top == 50.0
    assert drawn.delivered == "0.0,20.0 100.0,20.0"
    assert drawn.failed == "0.0,50.0 100.0,47.0"
    assert drawn.seconds == 2.0
