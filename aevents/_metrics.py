"""Metrics: delivery counters and histograms per subscription, kept by a middleware.

``Metrics`` is an ordinary ``Middleware`` (``EventRuntime(metrics=True)``
installs one first): it times each attempt with the delivery hooks, hears
what became of failed deliveries through the outcome hooks, and keeps, per
(pattern, receiver id), how many deliveries were routed, delivered, failed,
retried, dead-lettered and dropped, a histogram of attempt durations and one
of delivery latency (from the event's ``occurred_at`` to the start of its
first attempt). ``snapshot()`` returns all of it as frozen values;
``aevents.contrib.prometheus`` exposes it for scraping.

The hot path is one ``count`` call per attempt, about 0.2 µs (the runtime
calls it directly, without ``before_delivery``, when ``Metrics`` is the only
delivery middleware and the receiver a plain async one): once
a subscription has been seen it creates nothing but the floats it adds up,
each subscription owning one flat list of numbers, and a bucket is found by
bisecting a tuple of bounds. Hooks run on
the event loop's thread only, so there are no locks; ``snapshot()`` may be
called from another thread (a Prometheus scrape): it copies each table and
list in one step that no other thread can interleave with, so a figure may
trail another by the one attempt being counted, never more.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from time import perf_counter, time
from types import MappingProxyType
from typing import Any, Final

import attrs

from ._delivery import DeliveryInfo
from ._event import Event
from ._exceptions import ConfigurationError
from ._middleware import Middleware
from ._policy import DeadLetter

__all__ = ["DEFAULT_BUCKETS", "DeliveryMetrics", "Histogram", "Metrics", "MetricsSnapshot"]

DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds in seconds, Prometheus style (1-2.5-5 steps) from 5 µs to a minute.

An in-process delivery takes microseconds, so the bounds start far below
Prometheus' default 5 ms. Values above the last bound land in the ``+Inf`` bucket.
"""

# The layout of one subscription's list of numbers (see Metrics.after_delivery).
(
    _FAILED,  # attempts that raised an Exception
    _CANCELLED,  # attempts cut short by a cancellation (shutdown)
    _DROPPED,  # deliveries on_dropped reported
    _RETRIED,
    _DEAD,
    _UNSTARTED,  # of the dropped, those dropped before their first attempt
    _LATER_ATTEMPTS,  # retries run; every other attempt was a delivery's first
    _NEXT_SAMPLE,  # perf_counter() after which the next first attempt's latency is taken
    _DURATION_SUM,
    _LATENCY_SUM,
) = range(10)
_BUCKETS_AT: Final = 10


@attrs.frozen(slots=True)
class Histogram:
    """A histogram of seconds: counts per bucket, their sum, and the bucket bounds.

    ``counts[i]`` counts values in ``(bounds[i - 1], bounds[i]]``; the last
    count, one more than there are bounds, is the ``+Inf`` bucket. Counts are
    per bucket, not cumulative: ``itertools.accumulate(counts)`` gives
    Prometheus' ``le`` form, which ``aevents.contrib.prometheus`` exports.
    Read it from a snapshot: ``MetricsSnapshot`` already sums the histograms
    per receiver, per pattern and in all.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """Estimate the ``q`` quantile (0 to 1) as Prometheus' ``histogram_quantile`` does.

        Interpolates linearly inside the bucket the quantile falls in; a
        quantile in the ``+Inf`` bucket is reported as the last bound. NaN when
        nothing was recorded.
        """
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must be between 0 and 1, got {q!r}")
        total = self.count
        if not total:
            return math.nan
        rank, below = q * total, 0
        for index, count in enumerate(self.counts):
            if count and below + count >= rank:
                if index == len(self.bounds):
                    return self.bounds[-1]
                lower = self.bounds[index - 1] if index else 0.0
                return lower + (self.bounds[index] - lower) * (rank - below) / count
            below += count
        return self.bounds[-1]  # pragma: no cover - rank never exceeds the total


@attrs.frozen(slots=True)
class DeliveryMetrics:
    """What happened to the deliveries of one subscription, receiver or pattern.

    Deliveries count (event, receiver) pairs; ``failed`` counts attempts, so a
    delivery retried twice and then delivered counts 1 delivered, 2 failed and
    2 retried. Every delivery ends delivered, dead or dropped, or is still
    queued, running or waiting to retry.
    """

    published: int
    """Deliveries routed here (one per event, per matching subscription), counted
    when the first attempt ends, or when shutdown drops a delivery that never began."""
    delivered: int
    """Attempts whose receiver returned."""
    failed: int
    """Attempts that raised or timed out."""
    retried: int
    """Failed attempts that were scheduled to run again."""
    dead: int
    """Deliveries that ran out of attempts and became dead letters."""
    dropped: int
    """Deliveries that shutdown cut short (in flight) or left unrun (queued,
    waiting to retry), and dead letters evicted past ``max_dead_letters``."""
    duration: Histogram
    """How long each attempt ran, in seconds, whatever its outcome."""
    latency: Histogram
    """Seconds from the event's ``occurred_at`` to the start of the delivery's
    first attempt: the time it waited for the journal, the buffer and a worker.
    Sampled: see ``Metrics``. Retries are left out, since their wait is the
    backoff the policy asked for."""


def _frozen_map(value: Mapping[Any, DeliveryMetrics]) -> Mapping[Any, DeliveryMetrics]:
    return MappingProxyType(dict(value))


@attrs.frozen(slots=True)
class MetricsSnapshot:
    """Every subscription's ``DeliveryMetrics`` at one moment, and their sums.

    ``subscriptions`` is keyed by ``(pattern, receiver_id)``; ``by_receiver``
    and ``by_pattern`` add up the subscriptions of each receiver id and of each
    pattern. A subscription appears once it has had an attempt.
    """

    subscriptions: Mapping[tuple[str, str], DeliveryMetrics] = attrs.field(converter=_frozen_map)
    by_receiver: Mapping[str, DeliveryMetrics] = attrs.field(converter=_frozen_map)
    by_pattern: Mapping[str, DeliveryMetrics] = attrs.field(converter=_frozen_map)
    total: DeliveryMetrics


class Metrics(Middleware):
    """Delivery counters and histograms per subscription; read them with ``snapshot()``.

    Counters and the duration histogram count every attempt. The latency
    histogram is a sample, because reading an event's time costs as much as
    all the rest: per subscription, the first attempt that ends at least
    ``latency_interval`` seconds after the last sampled one is measured.
    Below a thousand deliveries a second per subscription that is every one
    of them; above, about a thousand a second.

    ``EventRuntime(metrics=True)`` (or ``metrics=Metrics(...)``) installs it as
    the first middleware, so that it also sees the attempts another
    middleware's ``before_delivery`` fails, and its durations include the
    other middleware's hooks.

    Args:
        buckets: The histograms' upper bounds in seconds, ascending. Default:
            22 bounds from 5 µs to 60 s in Prometheus' 1-2.5-5 steps, since an
            in-process delivery takes microseconds.
        latency_interval: Seconds between latency samples per subscription.
            Default 0.001; ``0`` measures every first attempt, at about 0.3 µs
            more per delivery.

    Attributes:
        buckets: The bounds in use, as a tuple of floats.
        latency_interval: The interval in use, in seconds.

    Raises:
        ConfigurationError: ``buckets`` are not ascending positive numbers, or
            ``latency_interval`` is negative.
    """

    def __init__(
        self, buckets: Sequence[float] = DEFAULT_BUCKETS, *, latency_interval: float = 0.001
    ) -> None:
        try:
            bounds = tuple(float(bound) for bound in buckets)
        except (TypeError, ValueError):
            bounds = ()
        if (
            not bounds
            or any(not 0 < bound < math.inf for bound in bounds)
            or any(lower >= upper for lower, upper in pairwise(bounds))
        ):
            raise ConfigurationError(
                "Metrics",
                f"buckets must be finite, positive, ascending numbers, got {buckets!r}",
            )
        if not (isinstance(latency_interval, int | float) and 0 <= latency_interval < math.inf):
            raise ConfigurationError(
                "Metrics", f"latency_interval must be >= 0 seconds, got {latency_interval!r}"
            )
        self.buckets = bounds
        self.latency_interval = float(latency_interval)
        self._size = len(bounds) + 1
        self._latency_at = _BUCKETS_AT + self._size
        self._template: list[float] = [0] * (_BUCKETS_AT + 2 * self._size)
        self._template[_NEXT_SAMPLE] = -math.inf
        self._template[_DURATION_SUM] = self._template[_LATENCY_SUM] = 0.0
        # pattern -> receiver id -> the subscription's numbers; only ever grows
        self._records: dict[str, dict[str, list[float]]] = {}

    def __repr__(self) -> str:
        count = sum(len(receivers) for receivers in self._records.values())
        return f"<Metrics subscriptions={count}>"

    # ------------------------------------------------------------------ hooks (the hot path)

    def before_delivery(self, delivery: DeliveryInfo) -> float:
        """The attempt's start, on the monotonic clock."""
        return perf_counter()

    def after_delivery(
        self, delivery: DeliveryInfo, state: float, error: BaseException | None
    ) -> None:
        """Count the attempt, time it, and now and then sample a first attempt's latency."""
        # delivery[3], [1], [2], [0]: pattern, receiver id, attempt, event
        self.count(delivery[3], delivery[1], delivery[2], delivery[0], state, error)

    def count(
        self,
        pattern: str,
        receiver_id: str,
        attempt: int,
        event: Event,
        started: float,
        error: BaseException | None,
    ) -> None:
        """``after_delivery`` without a ``DeliveryInfo``: an attempt that began at
        ``started`` (``time.perf_counter()``) just ended.

        For the runtime only, not part of the API: it calls this directly when
        this is its only delivery middleware and the receiver is a plain async
        one, so the attempt costs no ``before_delivery`` call and no
        ``DeliveryInfo``.
        """
        end = perf_counter()
        duration = end - started
        try:
            record = self._records[pattern][receiver_id]
        except KeyError:
            record = self._record(pattern, receiver_id)
        record[_DURATION_SUM] += duration
        record[_BUCKETS_AT + bisect_left(self.buckets, duration)] += 1
        if error is not None:
            record[_FAILED if isinstance(error, Exception) else _CANCELLED] += 1
        if attempt != 1:  # a retry: its wait was the backoff, not a latency
            record[_LATER_ATTEMPTS] += 1
        elif end >= record[_NEXT_SAMPLE]:
            record[_NEXT_SAMPLE] = end + self.latency_interval
            # The wall clock now, less the attempt's run time, is when it started.
            latency = time() - duration - event.occurred_at.timestamp()
            record[_LATENCY_SUM] += latency
            record[self._latency_at + bisect_left(self.buckets, latency)] += 1

    def on_retry(self, delivery: DeliveryInfo, error: BaseException, delay: float) -> None:
        """A failed attempt was scheduled to run again after ``delay`` seconds."""
        self._find(delivery)[_RETRIED] += 1

    def on_dead_letter(self, delivery: DeliveryInfo, letter: DeadLetter) -> None:
        """A delivery ran out of attempts and became ``letter``."""
        self._find(delivery)[_DEAD] += 1

    def on_dropped(self, delivery: DeliveryInfo) -> None:
        """A delivery was left unrun at shutdown, or its dead letter was evicted.

        Not called for an attempt that shutdown cancelled: ``after_delivery``
        counts that one, with the cancellation as its error.
        """
        record = self._find(delivery)
        record[_DROPPED] += 1
        if delivery.attempt == 1:
            record[_UNSTARTED] += 1

    def _find(self, delivery: DeliveryInfo) -> list[float]:
        record = self._records.get(delivery.pattern, {}).get(delivery.receiver_id)
        if record is None:
            record = self._record(delivery.pattern, delivery.receiver_id)
        return record

    def _record(self, pattern: str, receiver_id: str) -> list[float]:
        receivers = self._records.get(pattern)
        if receivers is None:
            receivers = self._records[pattern] = {}
        record = receivers[receiver_id] = list(self._template)
        return record

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> MetricsSnapshot:
        """Every subscription's figures now, as frozen values."""
        subscriptions: dict[tuple[str, str], DeliveryMetrics] = {}
        # dict.copy(), not list(d.items()): a garbage collection in the middle of the
        # latter can run finalizers, and so let the loop's thread add a key under it.
        for pattern, receivers in self._records.copy().items():
            for receiver_id, record in receivers.copy().items():
                subscriptions[pattern, receiver_id] = self._freeze(record[:])
        by_receiver: dict[str, DeliveryMetrics] = {}
        by_pattern: dict[str, DeliveryMetrics] = {}
        for (pattern, receiver_id), figures in subscriptions.items():
            _add_to(by_receiver, receiver_id, figures)
            _add_to(by_pattern, pattern, figures)
        return MetricsSnapshot(
            subscriptions=subscriptions,
            by_receiver=by_receiver,
            by_pattern=by_pattern,
            total=_sum(subscriptions.values(), self._freeze(list(self._template))),
        )

    def _freeze(self, record: list[float]) -> DeliveryMetrics:
        size, bounds = self._size, self.buckets
        durations = tuple(int(count) for count in record[_BUCKETS_AT : _BUCKETS_AT + size])
        latencies = tuple(int(count) for count in record[self._latency_at :])
        attempts = sum(durations)  # every attempt is timed, whatever its outcome
        failed, cancelled = int(record[_FAILED]), int(record[_CANCELLED])
        return DeliveryMetrics(
            published=attempts - int(record[_LATER_ATTEMPTS]) + int(record[_UNSTARTED]),
            delivered=attempts - failed - cancelled,
            failed=failed,
            retried=int(record[_RETRIED]),
            dead=int(record[_DEAD]),
            dropped=cancelled + int(record[_DROPPED]),
            duration=Histogram(bounds, durations, record[_DURATION_SUM]),
            latency=Histogram(bounds, latencies, record[_LATENCY_SUM]),
        )


# Sums for MetricsSnapshot: functions here, not ``+`` on the values, so that the
# values stay plain records to read and the arithmetic stays out of the API.


def _add_histograms(first: Histogram, second: Histogram) -> Histogram:
    counts = tuple(mine + theirs for mine, theirs in zip(first.counts, second.counts, strict=True))
    return Histogram(first.bounds, counts, first.sum + second.sum)


def _add(first: DeliveryMetrics, second: DeliveryMetrics) -> DeliveryMetrics:
    return DeliveryMetrics(
        published=first.published + second.published,
        delivered=first.delivered + second.delivered,
        failed=first.failed + second.failed,
        retried=first.retried + second.retried,
        dead=first.dead + second.dead,
        dropped=first.dropped + second.dropped,
        duration=_add_histograms(first.duration, second.duration),
        latency=_add_histograms(first.latency, second.latency),
    )


def _add_to(table: dict[str, DeliveryMetrics], key: str, figures: DeliveryMetrics) -> None:
    known = table.get(key)
    table[key] = figures if known is None else _add(known, figures)


def _sum(figures: Iterable[DeliveryMetrics], zero: DeliveryMetrics) -> DeliveryMetrics:
    total = zero
    for each in figures:
        total = _add(total, each)
    return total
