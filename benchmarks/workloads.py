"""The workloads: what is measured, at which size, and the driver that measures it.

Drivers run inside a worker subprocess (`benchmarks.worker`), one (system, workload) pair per
process. Each one builds its subscriptions, opens the system, times the producer loop plus
`drain()`, then checks the exact delivery count *before* the system is closed (so work done
while shutting down can never count as done in time). A mismatch raises `BenchmarkError`.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.payload import Sink, make_payload, make_small_payload, seq_sum
from benchmarks.systems.base import BenchmarkError, Payload, Subscription, System

ONE_NAME = "user:account:created"
FANOUT = 10
ROUTED_NAMES = 1000
LATENCY_RATE = 5000  # events per second
SLOW_RECEIVER_NS = 3000  # the flooded receiver burns 3 µs of CPU per event
DURABLE_PUBLISHERS = 256
BATCH = 100  # events per publish_many in the batch workload

Result = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    scale: float = 1.0  # multiply the raw value by this for display
    digits: int = 0


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    description: str
    full: int
    quick: int
    metrics: tuple[Metric, ...]
    driver: Callable[[System, int], Result]
    max_repeat: int | None = None  # cap on --repeat for the slow ones

    @property
    def primary(self) -> Metric:
        return self.metrics[0]

    def size(self, quick: bool) -> int:
        return self.quick if quick else self.full


# --- shared timing loop -------------------------------------------------------------------------


def _timed(
    system: System,
    subscriptions: Sequence[Subscription],
    names: Sequence[str],
    n: int,
    sink: Sink,
    expected: int,
    expected_seq: int | None,
    marks: dict[int, float] | None = None,
    payload: Callable[[int], Payload] = make_payload,
) -> float:
    """Publish n events round-robin over `names`, drain, verify; return the elapsed seconds.

    `marks` maps a publish count to a slot that receives the seconds elapsed when that many
    events had been published (the routing workload times its cold first pass with it).
    """
    count = len(names)
    mark_at = set(marks or ())

    async def main() -> float:
        async with system.open(subscriptions, names) as bus:
            publish = bus.publish
            gc.collect()
            started = time.perf_counter()
            for seq in range(n):
                await publish(names[seq % count], payload(seq))
                if mark_at and seq + 1 in mark_at and marks is not None:
                    marks[seq + 1] = time.perf_counter() - started
            await bus.drain()
            elapsed = time.perf_counter() - started
            sink.verify(system.name, expected, expected_seq)
        return elapsed

    return system.run(main)


def throughput(system: System, n: int) -> Result:
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.hit)]
    elapsed = _timed(system, subscriptions, [ONE_NAME], n, sink, n, seq_sum(n))
    return {"rate": n / elapsed, "seconds": elapsed}


def throughput_small(system: System, n: int) -> Result:
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.hit)]
    elapsed = _timed(
        system, subscriptions, [ONE_NAME], n, sink, n, seq_sum(n), payload=make_small_payload
    )
    return {"rate": n / elapsed, "seconds": elapsed}


def throughput_batch(system: System, n: int) -> Result:
    """1b in batches of `BATCH` events: one `publish_many` per batch where the bus has one,
    else one `publish` per event. The payloads of a batch are built inside the timed loop."""
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.hit)]

    async def main() -> float:
        async with system.open(subscriptions, [ONE_NAME]) as bus:
            publish, publish_many = bus.publish, getattr(bus, "publish_many", None)
            gc.collect()
            started = time.perf_counter()
            for start in range(0, n, BATCH):
                batch = [make_small_payload(seq) for seq in range(start, min(n, start + BATCH))]
                if publish_many is not None:
                    await publish_many(ONE_NAME, batch)
                else:
                    for payload in batch:
                        await publish(ONE_NAME, payload)
            await bus.drain()
            elapsed = time.perf_counter() - started
            sink.verify(system.name, n, seq_sum(n))
        return elapsed

    elapsed = system.run(main)
    return {"rate": n / elapsed, "seconds": elapsed}


def fanout(system: System, n: int) -> Result:
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.hit) for _ in range(FANOUT)]
    expected = n * FANOUT
    elapsed = _timed(system, subscriptions, [ONE_NAME], n, sink, expected, seq_sum(n) * FANOUT)
    return {"rate": expected / elapsed, "events_per_s": n / elapsed, "seconds": elapsed}


def routed_names() -> list[str]:
    return [f"tenant{index}:user:created" for index in range(ROUTED_NAMES)]


def routing(system: System, n: int) -> Result:
    """1,000 names, each with one exact receiver and one matching wildcard pattern."""
    sink = Sink()
    names = routed_names()
    subscriptions = [Subscription(name, sink.hit) for name in names]
    for index in range(ROUTED_NAMES):
        pattern = f"tenant{index}:*:created" if index % 2 == 0 else f"tenant{index}:**"
        subscriptions.append(Subscription(pattern, sink.hit))
    marks = {ROUTED_NAMES: 0.0}
    elapsed = _timed(system, subscriptions, names, n, sink, 2 * n, 2 * seq_sum(n), marks)
    first_pass = marks[ROUTED_NAMES]
    return {
        "rate": n / elapsed,
        "first_pass_ms": first_pass * 1000,
        "warm_rate": (n - ROUTED_NAMES) / max(elapsed - first_pass, 1e-9),
        "deliveries_per_s": 2 * n / elapsed,
        "seconds": elapsed,
    }


def sync_inline(system: System, n: int) -> Result:
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.hit, kind="sync-inline")]
    elapsed = _timed(system, subscriptions, [ONE_NAME], n, sink, n, seq_sum(n))
    return {"rate": n / elapsed, "seconds": elapsed}


def sync_thread(system: System, n: int) -> Result:
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.hit_threadsafe, kind="sync-thread")]
    elapsed = _timed(system, subscriptions, [ONE_NAME], n, sink, n, seq_sum(n))
    return {"rate": n / elapsed, "seconds": elapsed}


def _percentile(ordered: Sequence[int], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return float(ordered[index])


def latency(system: System, n: int) -> Result:
    """Publish at LATENCY_RATE; each receiver measures now - the publish timestamp."""
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.latency)]
    interval = 1.0 / LATENCY_RATE

    async def main() -> float:
        async with system.open(subscriptions, [ONE_NAME]) as bus:
            publish = bus.publish
            gc.collect()
            started = time.perf_counter()
            seq = 0
            while seq < n:
                due = min(n, int((time.perf_counter() - started) * LATENCY_RATE) + 1)
                while seq < due:
                    payload = make_payload(seq)
                    payload["t0"] = time.perf_counter_ns()
                    await publish(ONE_NAME, payload)
                    seq += 1
                await system.sleep(max(0.0, started + seq * interval - time.perf_counter()))
            await bus.drain()
            elapsed = time.perf_counter() - started
            sink.verify(system.name, n, seq_sum(n))
        return elapsed

    elapsed = system.run(main)
    ordered = sorted(sink.latencies_ns)
    return {
        "p50": _percentile(ordered, 0.50) / 1000,
        "p99": _percentile(ordered, 0.99) / 1000,
        "max": ordered[-1] / 1000,
        "achieved_rate": n / elapsed,
    }


# --- memory under a flood ----------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler(threading.Thread):
    """Samples RSS every 5 ms (the GIL is released while it sleeps)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.005):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return max(self.peak, _rss())


def memory(system: System, n: int) -> Result:
    """A slow receiver flooded by a producer publishing n events as fast as it is allowed."""
    sink = Sink(slow_ns=SLOW_RECEIVER_NS)
    subscriptions = [Subscription(ONE_NAME, sink.slow)]
    measured: dict[str, float] = {}

    async def main() -> None:
        async with system.open(subscriptions, [ONE_NAME]) as bus:
            publish = bus.publish
            gc.collect()
            baseline = _rss()
            sampler = _PeakSampler()
            sampler.start()
            started = time.perf_counter()
            for seq in range(n):
                await publish(ONE_NAME, make_payload(seq))
            published = time.perf_counter()
            await bus.drain()
            elapsed = time.perf_counter() - started
            peak = sampler.stop()
            sink.verify(system.name, n, seq_sum(n))
            measured.update(
                growth=(peak - baseline) / 2**20,
                baseline=baseline / 2**20,
                peak=peak / 2**20,
                publish_seconds=published - started,
                seconds=elapsed,
            )

    system.run(main)
    return measured


# --- start-up ------------------------------------------------------------------------------------

STARTUP_WRAPPER = """
import time as _time
_started = _time.perf_counter()
{code}
_elapsed = _time.perf_counter() - _started
import json as _json
print("BENCH-STARTUP " + _json.dumps({{"seconds": _elapsed, "count": count}}))
"""


def startup(system: System, n: int) -> Result:
    """Import the library and create n subscriptions, in a fresh interpreter."""
    code = STARTUP_WRAPPER.format(code=system.startup_code.format(n=n))
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    if completed.returncode:
        raise BenchmarkError(f"{system.name} start-up snippet failed:\n{completed.stderr}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith("BENCH-STARTUP "))
    import json

    result = json.loads(line.removeprefix("BENCH-STARTUP "))
    if result["count"] != n:
        raise BenchmarkError(f"{system.name}: {result['count']} subscriptions, expected {n}")
    return {"ms": result["seconds"] * 1000}


# --- durable ---------------------------------------------------------------------------------


def _durable(system: System, n: int, synchronous: str, *, shared: bool = False) -> Result:
    open_durable = getattr(system, "open_durable", None)
    if open_durable is None:
        raise BenchmarkError(f"{system.name} has no durable mode")
    sink = Sink()
    subscriptions = [Subscription(ONE_NAME, sink.hit)]
    directory = tempfile.mkdtemp(prefix="aevents-bench-")
    path = os.path.join(directory, "events.db")

    async def main() -> float:
        import anyio

        options = {"shared": True} if shared else {}
        async with open_durable(subscriptions, path, synchronous, **options) as bus:
            publish = bus.publish

            async def publisher(first: int) -> None:
                for seq in range(first, n, DURABLE_PUBLISHERS):
                    await publish(ONE_NAME, make_payload(seq))

            gc.collect()
            started = time.perf_counter()
            async with anyio.create_task_group() as tasks:
                for first in range(min(DURABLE_PUBLISHERS, n)):
                    tasks.start_soon(publisher, first)
            await bus.drain()
            elapsed = time.perf_counter() - started
            sink.verify(system.name, n, seq_sum(n))
        return elapsed

    try:
        elapsed = system.run(main)
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # the database and any sidecar files
    return {"rate": n / elapsed, "seconds": elapsed, "directory": os.path.dirname(directory)}


def durable_full(system: System, n: int) -> Result:
    return _durable(system, n, "FULL")


def durable_normal(system: System, n: int) -> Result:
    return _durable(system, n, "NORMAL")


def durable_shared(system: System, n: int) -> Result:
    return _durable(system, n, "FULL", shared=True)


# --- the catalogue -----------------------------------------------------------------------------

EVENTS_PER_S = Metric("rate", "rate", "events/s", higher_is_better=True)
DELIVERIES_PER_S = Metric("rate", "rate", "deliveries/s", higher_is_better=True)

WORKLOADS: dict[str, Workload] = {
    workload.key: workload
    for workload in (
        Workload(
            "throughput",
            "1. One name, one async receiver",
            "single producer publishes n events to one name; publish → delivered",
            full=100_000,
            quick=10_000,
            metrics=(EVENTS_PER_S,),
            driver=throughput,
        ),
        Workload(
            "throughput-small",
            "1b. One name, one async receiver, small payload",
            "as 1 with a two-field payload (about 30 bytes of JSON) instead of 411 bytes",
            full=100_000,
            quick=10_000,
            metrics=(EVENTS_PER_S,),
            driver=throughput_small,
        ),
        Workload(
            "throughput-batch",
            f"1c. One name, one async receiver, small payload, batches of {BATCH}",
            f"as 1b, published {BATCH} at a time with publish_many where the system has it "
            "(aevents); asyncio-queue, its comparison, puts one event at a time",
            full=100_000,
            quick=10_000,
            metrics=(EVENTS_PER_S,),
            driver=throughput_batch,
        ),
        Workload(
            "fanout",
            f"2. Fan-out to {FANOUT} async receivers",
            f"n events to one name with {FANOUT} receivers; rate counts deliveries",
            full=30_000,
            quick=3_000,
            metrics=(DELIVERIES_PER_S,),
            driver=fanout,
        ),
        Workload(
            "routing",
            f"3. Routing: {ROUTED_NAMES:,} names + {ROUTED_NAMES:,} wildcard patterns",
            f"events round-robin over {ROUTED_NAMES:,} names; each has one exact receiver and "
            "one matching `*`/`**` pattern (pre-expanded for systems without patterns); "
            f"1st pass = publishing the first {ROUTED_NAMES:,} events, one per name (cold caches)",
            full=50_000,
            quick=5_000,
            metrics=(
                EVENTS_PER_S,
                Metric("warm_rate", "after 1st pass", "events/s", higher_is_better=True),
                Metric("first_pass_ms", "1st pass", "ms", higher_is_better=False, digits=1),
            ),
            driver=routing,
        ),
        Workload(
            "sync-inline",
            "4a. Sync receiver, inline on the loop",
            "one cheap sync receiver run on the event loop",
            full=100_000,
            quick=10_000,
            metrics=(EVENTS_PER_S,),
            driver=sync_inline,
        ),
        Workload(
            "sync-thread",
            "4b. Sync receiver, in a worker thread",
            "one sync receiver run off the loop in a thread per delivery",
            full=20_000,
            quick=2_000,
            metrics=(EVENTS_PER_S,),
            driver=sync_thread,
        ),
        Workload(
            "latency",
            f"5. Latency at {LATENCY_RATE:,} events/s",
            "paced producer; timestamp taken just before publish, measured in the receiver",
            full=10_000,
            quick=2_500,
            metrics=(
                Metric("p99", "p99", "µs", higher_is_better=False, digits=1),
                Metric("p50", "p50", "µs", higher_is_better=False, digits=1),
                Metric("max", "max", "µs", higher_is_better=False),
            ),
            driver=latency,
        ),
        Workload(
            "durable",
            "6a. Durable publish (SQLite, synchronous=FULL)",
            f"{DURABLE_PUBLISHERS} concurrent publishers, each awaiting a durable publish; "
            "then delivered to one receiver; aevents has the file alone (exclusive=True)",
            full=20_000,
            quick=2_000,
            metrics=(EVENTS_PER_S,),
            driver=durable_full,
        ),
        Workload(
            "durable-normal",
            "6b. Durable publish (SQLite, synchronous=NORMAL)",
            "as 6a with synchronous=NORMAL (WAL: durable against a process crash, not power loss)",
            full=20_000,
            quick=2_000,
            metrics=(EVENTS_PER_S,),
            driver=durable_normal,
        ),
        Workload(
            "durable-shared",
            "6c. Durable publish, shared store (SQLite, synchronous=FULL)",
            "as 6a on the store as processes share it (SQLiteStore's default): each delivery "
            "is leased, its attempt recorded as started, then settled",
            full=20_000,
            quick=2_000,
            metrics=(EVENTS_PER_S,),
            driver=durable_shared,
        ),
        Workload(
            "memory",
            "7. Memory: slow receiver flooded",
            f"producer publishes n events as fast as allowed; the receiver burns "
            f"{SLOW_RECEIVER_NS / 1000:g} µs of CPU each; RSS growth over the pre-flood baseline",
            full=1_000_000,
            quick=100_000,
            metrics=(
                Metric("growth", "RSS growth", "MiB", higher_is_better=False, digits=1),
                Metric("peak", "peak RSS", "MiB", higher_is_better=False, digits=1),
                Metric("seconds", "time", "s", higher_is_better=False, digits=2),
            ),
            driver=memory,
            max_repeat=2,
        ),
        Workload(
            "startup",
            "8. Start-up: import + 1,000 subscriptions",
            "fresh interpreter: import the library and create 1,000 subscriptions",
            full=1_000,
            quick=1_000,
            metrics=(Metric("ms", "time", "ms", higher_is_better=False, digits=1),),
            driver=startup,
        ),
    )
}
