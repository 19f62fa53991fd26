"""Prometheus exposition of a runtime's metrics (``pip install 'aevents[prometheus]'``).

::

    from aevents.contrib.prometheus import register

    async with aevents.EventRuntime(metrics=True) as runtime:
        register(runtime)          # on prometheus_client's default REGISTRY

Each scrape reads ``runtime.stats()`` and the runtime's ``Metrics`` snapshot;
nothing is copied between scrapes and the runtime's hot path never touches
``prometheus_client``. A scrape may run on another thread (``start_http_server``).

Per subscription, labelled ``receiver`` and ``pattern``:
``aevents_deliveries_total`` (routed), ``aevents_deliveries_delivered_total``,
``aevents_deliveries_dead_total``, ``aevents_deliveries_dropped_total``,
``aevents_attempts_failed_total``, ``aevents_attempts_retried_total``, and the
histograms ``aevents_delivery_duration_seconds`` and
``aevents_delivery_latency_seconds``. Runtime-wide: the counters
``aevents_events_published_total`` and ``aevents_events_unrouted_total``, and the
gauges ``aevents_deliveries_queued``, ``aevents_deliveries_in_flight`` and
``aevents_deliveries_retrying``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import accumulate

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    if error.name is None or error.name.partition(".")[0] != "prometheus_client":
        raise
    raise ImportError(
        "aevents.contrib.prometheus needs prometheus-client: pip install 'aevents[prometheus]'"
    ) from error

from .._exceptions import ConfigurationError
from .._metrics import DeliveryMetrics, Histogram, Metrics
from .._runtime import EventRuntime

__all__ = ["RuntimeCollector", "register"]

_LABELS = ("receiver", "pattern")

# (name, help, field of DeliveryMetrics), in exposition order
_COUNTERS = (
    (
        "aevents_deliveries",
        "Deliveries routed to the subscription: one per event, per matching subscription.",
        "published",
    ),
    ("aevents_deliveries_delivered", "Deliveries whose receiver returned.", "delivered"),
    (
        "aevents_deliveries_dead",
        "Deliveries that ran out of attempts and became dead letters.",
        "dead",
    ),
    (
        "aevents_deliveries_dropped",
        "Deliveries that shutdown cut short or left unrun, and evicted dead letters.",
        "dropped",
    ),
    ("aevents_attempts_failed", "Attempts that raised or timed out.", "failed"),
    (
        "aevents_attempts_retried",
        "Failed attempts that were scheduled to run again.",
        "retried",
    ),
)


class RuntimeCollector(Collector):
    """A ``prometheus_client`` collector over one runtime and its ``Metrics``."""

    def __init__(self, runtime: EventRuntime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        """The families, without samples: lets a registry check names without a scrape."""
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        """One scrape: the runtime's counters and gauges, and every subscription's figures."""
        return self._families(self.metrics.snapshot().subscriptions)

    def _families(
        self, subscriptions: Mapping[tuple[str, str], DeliveryMetrics] | None
    ) -> Iterator[Metric]:
        stats = self.runtime.stats() if subscriptions is not None else None
        yield CounterMetricFamily(
            "aevents_events_published",
            "Events accepted by publish, routed or not.",
            value=None if stats is None else stats.published,
        )
        yield CounterMetricFamily(
            "aevents_events_unrouted",
            "Accepted events that no receiver matched.",
            value=None if stats is None else stats.unrouted,
        )
        for name, documentation, field in _COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=_LABELS)
            for labels, figures in (subscriptions or {}).items():
                family.add_metric((labels[1], labels[0]), getattr(figures, field))
            yield family
        duration = HistogramMetricFamily(
            "aevents_delivery_duration_seconds",
            "How long each attempt ran, whatever its outcome.",
            labels=_LABELS,
        )
        latency = HistogramMetricFamily(
            "aevents_delivery_latency_seconds",
            "From the event's occurred_at to its delivery's first attempt (sampled).",
            labels=_LABELS,
        )
        for (pattern, receiver_id), figures in (subscriptions or {}).items():
            _add_histogram(duration, (receiver_id, pattern), figures.duration)
            _add_histogram(latency, (receiver_id, pattern), figures.latency)
        yield duration
        yield latency
        for name, documentation, value in (
            ("aevents_deliveries_queued", "Deliveries waiting for a worker.", "queued"),
            ("aevents_deliveries_in_flight", "Deliveries a worker is running.", "in_flight"),
            (
                "aevents_deliveries_retrying",
                "Failed deliveries waiting for their next attempt.",
                "retrying",
            ),
        ):
            yield GaugeMetricFamily(
                name, documentation, value=None if stats is None else getattr(stats, value)
            )


def _add_histogram(
    family: HistogramMetricFamily, labels: tuple[str, str], histogram: Histogram
) -> None:
    # Prometheus' buckets count every value at or below their bound.
    cumulative = list(accumulate(histogram.counts))
    buckets = [
        (repr(bound), float(count))  # shortest round-trip form
        for bound, count in zip(histogram.bounds, cumulative, strict=False)
    ]
    buckets.append(("+Inf", float(cumulative[-1])))
    family.add_metric(labels, buckets, histogram.sum)


def register(
    runtime: EventRuntime,
    registry: CollectorRegistry = REGISTRY,
    *,
    metrics: Metrics | None = None,
) -> RuntimeCollector:
    """Expose ``runtime``'s stats and metrics on a Prometheus registry.

    Each scrape reads ``runtime.stats()`` and the metrics snapshot. One runtime
    per registry: a second one would repeat the same series names.

    Args:
        runtime: The runtime to expose.
        registry: The Prometheus registry. Default ``prometheus_client.REGISTRY``,
            which ``prometheus_client.start_http_server()`` serves.
        metrics: The metrics to read. Default ``None``: the runtime's
            (``EventRuntime(metrics=True)``), or else the ``aevents.Metrics``
            among its middleware.

    Returns:
        The collector, to ``registry.unregister()`` it.

    Raises:
        ConfigurationError: No metrics were given and the runtime has none.
    """
    if metrics is None:
        found = [each for each in runtime.middleware if isinstance(each, Metrics)]
        if runtime.metrics is not None:
            found.insert(0, runtime.metrics)
        if not found:
            raise ConfigurationError(
                "aevents.contrib.prometheus.register",
                f"{runtime!r} has no aevents.Metrics middleware to expose; "
                "create it with EventRuntime(metrics=True)",
            )
        metrics = found[0]
    collector = RuntimeCollector(runtime, metrics)
    registry.register(collector)
    return collector
