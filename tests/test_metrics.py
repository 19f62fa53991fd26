"""Metrics: per-subscription counters and histograms kept by a delivery middleware."""

from __future__ import annotations

import math
import sys
import threading
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
import pytest
from anyio import wait_all_tasks_blocked

from aevents import (
    ConfigurationError,
    DeliveryInfo,
    Event,
    EventRuntime,
    Histogram,
    Metrics,
    Middleware,
    Registry,
    RetryPolicy,
)
from aevents._metrics import DEFAULT_BUCKETS

pytestmark = pytest.mark.anyio

ONCE = RetryPolicy(attempts=1)
TWICE = RetryPolicy(attempts=2, initial_delay=0, jitter=0)
COUNT = 2000


async def test_counts_each_subscription_and_adds_them_up_by_receiver_and_pattern(
    registry: Registry,
) -> None:
    """One receiver under two patterns and two receivers under one pattern add up both ways."""

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:*", receiver, id="orders")
    registry.subscribe("order:placed", receiver, id="orders")
    registry.subscribe("order:*", receiver, id="audit")
    metrics = Metrics()
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        await runtime.publish("order:placed")
        await runtime.publish("order:shipped")
        await runtime.publish("order:shipped")
        with anyio.fail_after(5):
            await runtime.drain()
    snapshot = metrics.snapshot()
    published = {key: figures.published for key, figures in snapshot.subscriptions.items()}
    assert published == {
        ("order:placed", "orders"): 1,
        ("order:*", "orders"): 2,
        ("order:*", "audit"): 3,
    }
    assert {key: figures.delivered for key, figures in snapshot.by_receiver.items()} == {
        "orders": 3,
        "audit": 3,
    }
    assert {key: figures.delivered for key, figures in snapshot.by_pattern.items()} == {
        "order:placed": 1,
        "order:*": 5,
    }
    assert snapshot.total.published == snapshot.total.delivered == 6
    assert snapshot.total.duration.count == 6
    assert snapshot.total.failed == snapshot.total.dropped == 0


async def test_a_failed_then_retried_delivery_counts_its_attempts_and_one_delivery(
    registry: Registry,
) -> None:
    """Two attempts are timed and one failed, but it is one delivery, routed once."""
    attempts: list[int] = []

    async def flaky(event: Event) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("try again")

    registry.subscribe("mail:send", flaky, id="flaky", retry=TWICE)
    metrics = Metrics(latency_interval=0)
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        await runtime.publish("mail:send")
        with anyio.fail_after(5):
            await runtime.drain()
    figures = metrics.snapshot().by_receiver["flaky"]
    assert (figures.published, figures.delivered, figures.failed) == (1, 1, 1)
    assert figures.duration.count == 2
    assert figures.latency.count == 1  # the retry's wait is its backoff, not a latency


async def test_an_attempt_cut_short_by_shutdown_counts_as_dropped(registry: Registry) -> None:
    """The cancellation reaches after_delivery: dropped, neither delivered nor failed."""
    started = anyio.Event()

    async def stuck(event: Event) -> None:
        started.set()
        await anyio.sleep_forever()

    registry.subscribe("job:stuck", stuck, id="stuck")
    metrics = Metrics()
    async with EventRuntime(registry, middleware=[metrics], shutdown_timeout=0) as runtime:
        await runtime.publish("job:stuck")
        with anyio.fail_after(5):
            await started.wait()
    figures = metrics.snapshot().by_receiver["stuck"]
    assert (figures.published, figures.delivered, figures.failed, figures.dropped) == (1, 0, 0, 1)
    assert runtime.stats().dropped == 1


async def test_latency_covers_the_wait_for_a_busy_worker(registry: Registry) -> None:
    """An event queued behind a slow delivery has at least that wait as its latency."""
    started, release = anyio.Event(), anyio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await release.wait()

    async def quick(event: Event) -> None:
        pass

    registry.subscribe("job:slow", slow, id="slow")
    registry.subscribe("job:quick", quick, id="quick")
    metrics = Metrics(latency_interval=0)
    async with EventRuntime(registry, workers=1, middleware=[metrics]) as runtime:
        await runtime.publish("job:slow")
        with anyio.fail_after(5):
            await started.wait()
        await runtime.publish("job:quick")
        await anyio.sleep(0.05)  # time passing is the point here, not synchronisation
        release.set()
        with anyio.fail_after(5):
            await runtime.drain()
    latency = metrics.snapshot().by_receiver["quick"].latency
    assert latency.count == 1
    assert 0.04 <= latency.sum < 5  # uvloop's timers may wake a millisecond early
    assert sum(latency.counts[: DEFAULT_BUCKETS.index(0.025) + 1]) == 0


async def test_latency_is_sampled_once_per_interval_while_counters_count_all(
    registry: Registry,
) -> None:
    """With an hour between samples only the first latency is taken; every delivery counts."""

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("job:run", receiver, id="receiver")
    metrics = Metrics(latency_interval=3600)
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        for _ in range(3):
            await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    figures = metrics.snapshot().by_receiver["receiver"]
    assert (figures.published, figures.delivered, figures.duration.count) == (3, 3, 3)
    assert figures.latency.count == 1


async def test_a_duration_lands_in_the_first_bucket_whose_bound_covers_it(
    registry: Registry,
) -> None:
    """A receiver that takes about 50 ms is counted under le=1.0, not le=0.01."""

    async def slow(event: Event) -> None:
        await anyio.sleep(0.05)

    registry.subscribe("job:slow", slow, id="slow")
    metrics = Metrics(buckets=(0.01, 1.0))
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        await runtime.publish("job:slow")
        with anyio.fail_after(5):
            await runtime.drain()
    duration = metrics.snapshot().by_receiver["slow"].duration
    assert duration.bounds == (0.01, 1.0)
    assert duration.counts == (0, 1, 0)
    assert 0.04 <= duration.sum < 1.0  # uvloop's timers may wake a millisecond early


async def test_sync_receivers_on_worker_threads_are_timed_and_counted(
    registry: Registry,
) -> None:
    """A sync receiver's attempt, on a worker thread, is counted like an async one."""

    def audit(event: Event) -> None:
        if event.payload["fail"]:
            raise ValueError("refused")

    registry.subscribe("order:placed", audit, id="audit", retry=ONCE)
    metrics = Metrics()
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        await runtime.publish("order:placed", payload={"fail": False})
        await runtime.publish("order:placed", payload={"fail": True})
        with anyio.fail_after(5):
            await runtime.drain()
    figures = metrics.snapshot().by_receiver["audit"]
    assert (figures.published, figures.delivered, figures.failed) == (2, 1, 1)


async def test_an_attempt_a_later_middleware_refuses_is_counted_when_metrics_is_first(
    registry: Registry,
) -> None:
    """A before_delivery that raises after Metrics' own still reaches Metrics as a failure."""

    class Refuse(Middleware):
        def before_delivery(self, delivery: DeliveryInfo) -> None:
            raise LookupError("no tenant")

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:placed", receiver, id="receiver", retry=TWICE)
    metrics = Metrics()
    async with EventRuntime(registry, middleware=[metrics, Refuse()]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    figures = metrics.snapshot().by_receiver["receiver"]
    assert (figures.published, figures.delivered, figures.failed) == (1, 0, 2)


async def test_a_snapshot_is_a_frozen_value_that_later_deliveries_leave_alone(
    registry: Registry,
) -> None:
    """Deliveries after a snapshot change the next snapshot only."""

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("job:run", receiver, id="receiver")
    metrics = Metrics()
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
        before = metrics.snapshot()
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    assert before.total.delivered == 1
    assert metrics.snapshot().total.delivered == 2
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        before.total = before.total  # type: ignore[misc]
    with pytest.raises(TypeError):
        before.by_receiver["other"] = before.total  # type: ignore[index]


async def test_snapshots_taken_on_another_thread_during_deliveries_never_fail(
    registry: Registry,
) -> None:
    """A scrape thread reads while subscriptions appear and garbage is collected; all adds up."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                metrics.snapshot()
            except BaseException as error:  # collected, then asserted on the loop
                errors.append(error)

    class Cycle:  # garbage whose collection runs Python code, in the middle of anything
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            [None for _ in range(3)]

    async def receiver(event: Event) -> None:
        Cycle()

    for index in range(COUNT):
        registry.subscribe(f"load:{index}", receiver, id=f"receiver-{index}")
    metrics = Metrics()
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over often, in the middle of a snapshot
    try:
        runtime = EventRuntime(registry, middleware=[metrics])
        async with runtime, anyio.create_task_group() as tasks:
            tasks.start_soon(partial(anyio.to_thread.run_sync, scrape))
            for index in range(COUNT):  # each publish adds a subscription's record
                await runtime.publish(f"load:{index}")
                await anyio.lowlevel.checkpoint()
            with anyio.fail_after(10):
                await runtime.drain()
            stop.set()
    finally:
        sys.setswitchinterval(switch_interval)
    assert errors == []
    snapshot = metrics.snapshot()
    assert len(snapshot.subscriptions) == COUNT
    assert snapshot.total.delivered == COUNT


def test_histogram_counts_and_estimates_quantiles_like_prometheus() -> None:
    """``count`` adds up the buckets; ``quantile()`` interpolates inside the bucket."""
    histogram = Histogram(bounds=(1.0, 2.0, 4.0), counts=(2, 4, 2, 0), sum=17.0)
    assert histogram.count == 8
    assert histogram.quantile(0.5) == pytest.approx(1.5)
    assert histogram.quantile(1.0) == pytest.approx(4.0)
    assert histogram.quantile(0.0) == 0.0
    assert Histogram((1.0,), (0, 3), 9.0).quantile(0.5) == 1.0  # +Inf: the last bound
    assert math.isnan(Histogram((1.0,), (0, 0), 0.0).quantile(0.5))
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram.quantile(1.5)


def test_snapshot_values_are_records_to_read_not_to_add() -> None:
    """Histograms and figures have no arithmetic: a snapshot has done the sums already."""
    histogram = Histogram((1.0, 2.0), (1, 0, 2), 7.0)
    with pytest.raises(TypeError):
        histogram + histogram  # type: ignore[operator]
    assert not hasattr(histogram, "cumulative")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"buckets": ()}, "buckets"),
        ({"buckets": (0.1, 0.01)}, "buckets"),
        ({"buckets": (0.0, 1.0)}, "buckets"),
        ({"buckets": (1.0, math.inf)}, "buckets"),
        ({"buckets": ("fast",)}, "buckets"),
        ({"latency_interval": -1}, "latency_interval"),
        ({"latency_interval": math.nan}, "latency_interval"),
    ],
)
def test_nonsense_buckets_or_intervals_are_refused(options: dict[str, Any], problem: str) -> None:
    """Bounds must be positive, finite and ascending; the interval a number of seconds."""
    with pytest.raises(ConfigurationError, match=problem):
        Metrics(**options)


# ---------------------------------------------------------------- with the runtime's help


async def test_retries_and_dead_letters_are_counted_per_subscription(registry: Registry) -> None:
    """A delivery failing both attempts counts one retry and one dead letter."""

    async def broken(event: Event) -> None:
        raise ValueError("broken")

    registry.subscribe("job:run", broken, id="broken", retry=TWICE)
    metrics = Metrics()
    async with EventRuntime(registry, middleware=[metrics]) as runtime:
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    figures = metrics.snapshot().by_receiver["broken"]
    assert (figures.failed, figures.retried, figures.dead) == (2, 1, 1)
    assert (stats.failed, stats.retried, stats.dead) == (2, 1, 1)


async def test_deliveries_left_queued_at_shutdown_count_as_dropped(registry: Registry) -> None:
    """Queued deliveries never run are dropped and routed; the in-flight one is dropped too."""

    async def stuck(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe("job:stuck", stuck, id="stuck")
    metrics = Metrics()
    async with EventRuntime(
        registry, workers=1, middleware=[metrics], shutdown_timeout=0
    ) as runtime:
        for _ in range(3):
            await runtime.publish("job:stuck")
        await wait_all_tasks_blocked()
    figures = metrics.snapshot().by_receiver["stuck"]
    assert (figures.published, figures.dropped) == (3, 3)
    assert runtime.stats().dropped == 3


async def test_an_evicted_dead_letter_counts_as_dropped_for_its_receiver(
    registry: Registry,
) -> None:
    """Past max_dead_letters the oldest letter is evicted: dead, and now dropped too."""

    async def broken(event: Event) -> None:
        raise ValueError("broken")

    registry.subscribe("job:run", broken, id="broken", retry=ONCE)
    metrics = Metrics()
    async with EventRuntime(registry, middleware=[metrics], max_dead_letters=1) as runtime:
        await runtime.publish("job:run")
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    figures = metrics.snapshot().by_receiver["broken"]
    assert (figures.dead, figures.dropped) == (2, 1)
    assert runtime.stats().dropped == 1


async def test_metrics_true_runs_first_and_is_read_from_the_runtime(registry: Registry) -> None:
    """EventRuntime(metrics=True) puts a Metrics before the other middleware, as runtime.metrics."""

    class Other(Middleware):
        def after_delivery(
            self, delivery: DeliveryInfo, state: object, error: BaseException | None
        ) -> None:
            pass

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("job:run", receiver, id="receiver")
    other = Other()
    async with EventRuntime(registry, metrics=True, middleware=[other]) as runtime:
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    assert isinstance(runtime.metrics, Metrics)
    assert runtime.middleware == (runtime.metrics, other)
    assert runtime.metrics.snapshot().by_receiver["receiver"].delivered == 1
    assert EventRuntime(registry).metrics is None


@pytest.mark.parametrize("metrics", ["yes", 1, None, Histogram((1.0,), (0, 0), 0.0)])
def test_the_metrics_argument_is_a_bool_or_a_metrics(metrics: object) -> None:
    """Anything else is refused when the runtime is built."""
    with pytest.raises(ConfigurationError, match="metrics must be True, False or an aevents"):
        EventRuntime(metrics=metrics)  # type: ignore[arg-type]


async def test_runtime_stats_carry_the_metrics_snapshot(registry: Registry) -> None:
    """stats().metrics is the snapshot with metrics on, and None with them off."""

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:placed", receiver, id="receiver")
    async with EventRuntime(registry, metrics=True) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        snapshot = runtime.stats().metrics
    assert snapshot is not None
    assert snapshot.by_receiver["receiver"].delivered == 1
    async with EventRuntime(registry) as runtime:
        assert runtime.stats().metrics is None


class _Subclassed(Metrics):
    """A Metrics subclass: the runtime goes through its hooks, never the shortcut."""


class _Passing(Middleware):
    def before_delivery(self, delivery: DeliveryInfo) -> None:
        return None


@pytest.mark.parametrize(
    ("build", "shortcut"),
    [
        pytest.param(lambda: (Metrics(latency_interval=0),), True, id="metrics-alone"),
        pytest.param(lambda: (_Subclassed(latency_interval=0),), False, id="subclass"),
        pytest.param(
            lambda: (Metrics(latency_interval=0), _Passing()), False, id="with-another-middleware"
        ),
    ],
)
async def test_the_counting_shortcut_counts_what_the_hooks_count(
    registry: Registry, build: Any, shortcut: bool
) -> None:
    """Alone, a plain Metrics is counted by the worker without its hooks; the figures for
    deliveries, failures, retries, dead letters and cancellations match the hooks' path."""
    calls: dict[str, int] = {}
    gate = anyio.Event()

    async def flaky(event: Event) -> None:
        calls[event.id] = calls.get(event.id, 0) + 1
        if event.payload["n"] % 3 == 0 and calls[event.id] == 1:
            raise ConnectionError("again")

    async def broken(event: Event) -> None:
        raise ValueError("never works")

    async def stuck(event: Event) -> None:
        gate.set()
        await anyio.sleep_forever()

    registry.subscribe("job:run", flaky, id="flaky", retry=TWICE)
    registry.subscribe("job:fail", broken, id="broken", retry=TWICE)
    registry.subscribe("job:stuck", stuck, id="stuck")
    middleware = build()
    metrics = middleware[0]
    async with EventRuntime(registry, middleware=middleware, shutdown_timeout=0) as runtime:
        assert (runtime._middleware.count is not None) is shortcut
        for n in range(30):
            await runtime.publish("job:run", payload={"n": n})
        await runtime.publish("job:fail")
        with anyio.fail_after(5):
            await runtime.drain()
        await runtime.publish("job:stuck")
        with anyio.fail_after(5):
            await gate.wait()
    snapshot = metrics.snapshot()
    flaky_figures = snapshot.by_receiver["flaky"]
    assert (flaky_figures.published, flaky_figures.delivered) == (30, 30)
    assert (flaky_figures.failed, flaky_figures.retried) == (10, 10)
    assert flaky_figures.duration.count == 40
    assert flaky_figures.latency.count == 30  # every first attempt, none of the retries
    broken_figures = snapshot.by_receiver["broken"]
    assert (broken_figures.failed, broken_figures.retried, broken_figures.dead) == (2, 1, 1)
    assert broken_figures.duration.count == 2
    stuck_figures = snapshot.by_receiver["stuck"]
    assert (stuck_figures.delivered, stuck_figures.failed, stuck_figures.dropped) == (0, 0, 1)
    assert stuck_figures.duration.count == 1  # the cancelled attempt was timed
