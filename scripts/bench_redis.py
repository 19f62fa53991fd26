"""Publish-and-consume through aevents on Redis against raw coredis XADD/XREADGROUP/XACK loops.

    python scripts/bench_redis.py [--url redis://127.0.0.1:6379/0] [--events 5000]
                                  [--processes 1] [--repeat 3]
                                  [--systems raw,store,runtime,runtime-ahead]
                                  [--batches 1,32,256] [--count]

For each batch size (1, 32, 256), each process publishes a batch and waits until it
was consumed, then repeats:

* ``raw``: XADD of the batch (pipelined), XREADGROUP of the batch and XACK of it.
* ``store``: RedisStore's calls alone: ``publish``, a claim that starts the batch in
  the same call, then a settle as done, as a runtime's fleet calls the store when its
  workers can take the whole batch: three round trips, as the raw loop's.
* ``runtime``: the whole runtime, an ``EventRuntime`` on ``RedisStore`` with one fleet
  receiver that counts what it saw: ``publish`` (batch 1) or ``publish_many`` of the
  batch, then wait until the receiver saw all of it; the runtime's claim loop, workers,
  starts, settles and wake listener run as they would in production.
* ``runtime-ahead``: the same with ``start_ahead=`` the batch size, so that the runtime
  records the starts of a whole batch in one call, as the raw loop's ``XREADGROUP``
  counts a delivery for the whole batch it reads (a process that dies counts an attempt
  for each of them, there and here).

With ``--processes N`` N processes run at once on one store (one receiver each;
the raw loops one stream each), started together. The systems alternate
``--repeat`` times (the order rotates each repetition); printed are the medians of
events/s (all processes), of the p50 and p99 of the round trip per batch, and of
the ratio to the raw loop of the same repetition, then each repetition's ratio.
``--count`` also prints the server's commands per batch of each system, from
``INFO commandstats`` before and after each run (the whole server's: run it alone),
and for the runtime the scripts it ran by name. Run on an idle machine; each run uses
a fresh key prefix and deletes it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio
import coredis

import aevents
from aevents import RedisStore
from aevents._event import make_event
from aevents._store import Completed, Route, new_consumer_id

# events, seconds, round trip of each batch, scripts run by name (runtime only)
Result = tuple[int, float, list[float], dict[str, int]]


class CountingStore(RedisStore):
    """A RedisStore that counts the scripts it runs, by name (for ``--count``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[str, int] = {}

    async def _run(self, name: str, args: Any, doing: str) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        return await super()._run(name, args, doing)


async def runtime_round_trips(
    url: str, prefix: str, index: int, batch: int, events: int, at: float
) -> Result:
    return await _runtime_round_trips(url, prefix, index, batch, events, at, start_ahead=None)


async def runtime_ahead_round_trips(
    url: str, prefix: str, index: int, batch: int, events: int, at: float
) -> Result:
    return await _runtime_round_trips(url, prefix, index, batch, events, at, start_ahead=batch)


async def _runtime_round_trips(
    url: str,
    prefix: str,
    index: int,
    batch: int,
    events: int,
    at: float,
    *,
    start_ahead: int | None,
) -> Result:
    seen = 0
    target = 0
    reached = anyio.Event()
    registry = aevents.Registry()

    @registry.subscribe(f"bench{index}:*", id=f"count{index}")
    async def count(event: aevents.Event) -> None:
        nonlocal seen
        seen += 1
        if seen >= target:
            reached.set()

    store = CountingStore(url, prefix=prefix, retention=None)
    name = f"bench{index}:event"
    async with aevents.EventRuntime(registry, store=store, start_ahead=start_ahead) as runtime:
        times = []
        await anyio.sleep(max(at - time.time(), 0))
        calls_before = dict(store.calls)
        began_all = time.perf_counter()
        for round_ in range(events // batch):
            payloads = [{"n": n} for n in range(batch)]
            began = time.perf_counter()
            target = (round_ + 1) * batch
            reached = anyio.Event()
            if batch == 1:
                await runtime.publish(name, payload=payloads[0])
            else:
                await runtime.publish_many(name, payloads)
            if seen < target:
                await reached.wait()
            times.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - began_all
        calls = {k: v - calls_before.get(k, 0) for k, v in store.calls.items()}
        assert seen == (events // batch) * batch, (seen, events)
    return (events // batch) * batch, elapsed, times, calls


async def aevents_round_trips(
    url: str, prefix: str, index: int, batch: int, events: int, at: float
) -> Result:
    store = RedisStore(url, prefix=prefix, retention=None)
    await store.open()
    try:
        consumer = new_consumer_id()
        receiver = f"r{index}"
        await store.register(consumer, [Route("**", receiver)], ttl=60)
        times = []
        await anyio.sleep(max(at - time.time(), 0))
        began_all = time.perf_counter()
        for _ in range(events // batch):
            sent = [(make_event("bench:event", {"n": n}, {}), [receiver]) for n in range(batch)]
            began = time.perf_counter()
            await store.publish(sent)
            claims, started = await store.claim_and_start(consumer, batch, lease=30, start=batch)
            assert started == claims
            await store.settle(consumer, [Completed(claim) for claim in claims])
            times.append(time.perf_counter() - began)
            assert len(claims) == batch
        return (events // batch) * batch, time.perf_counter() - began_all, times, {}
    finally:
        await store.close()


async def raw_round_trips(
    url: str, prefix: str, index: int, batch: int, events: int, at: float
) -> Result:
    client: Any = coredis.Redis.from_url(url)
    key = "{" + prefix + "}:stream" + str(index)
    async with client:
        await client.xgroup_create(key, "g", "$", mkstream=True)
        times = []
        await anyio.sleep(max(at - time.time(), 0))
        began_all = time.perf_counter()
        for _ in range(events // batch):
            bodies = [make_event("bench:event", {"n": n}, {}).to_json() for n in range(batch)]
            began = time.perf_counter()
            async with client.pipeline(transaction=False) as pipe:
                for body in bodies:
                    pipe.xadd(key, {"b": body})
            read = await client.xreadgroup("g", "c", streams={key: ">"}, count=batch)
            ids = [entry.identifier for entry in read[key.encode()]]
            await client.xack(key, "g", ids)
            times.append(time.perf_counter() - began)
        return (events // batch) * batch, time.perf_counter() - began_all, times, {}


LOOPS = {
    "raw": raw_round_trips,
    "store": aevents_round_trips,
    "runtime": runtime_round_trips,
    "runtime-ahead": runtime_ahead_round_trips,
}


def _child(
    system: str, url: str, prefix: str, index: int, batch: int, events: int, at: float
) -> Result:
    import logging

    logging.getLogger("aevents").setLevel(logging.ERROR)  # the appendonly warning, each run
    return anyio.run(LOOPS[system], url, prefix, index, batch, events, at)


async def _commandstats(url: str) -> dict[str, int]:
    client: Any = coredis.Redis.from_url(url)
    async with client:
        info = await client.info("commandstats")
    return {
        str(name).removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if isinstance(value, dict)
    }


async def _delete(url: str, prefix: str) -> None:
    store = RedisStore(url, prefix=prefix)
    await store.open()
    try:
        await store.delete_all()
    finally:
        await store.close()


def run(
    pool: ProcessPoolExecutor, system: str, args: Any, batch: int, events: int
) -> tuple[float, float, float]:
    """events/s of all processes together, p50 and p99 (ms) of their round trips."""
    prefix = "bench-" + os.urandom(4).hex()
    at = time.time() + 1.5  # every process has opened its client by then
    before = anyio.run(_commandstats, args.url) if args.count else {}
    futures = [
        pool.submit(_child, system, args.url, prefix, index, batch, events, at)
        for index in range(args.processes)
    ]
    results = [future.result() for future in futures]
    if args.count:
        after = anyio.run(_commandstats, args.url)
        batches = sum(count for count, _, _, _ in results) / batch
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
        delta.pop("info", None)
        shown = ", ".join(
            f"{k} {v / batches:.2f}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1])
        )
        scripts: dict[str, int] = {}
        for _, _, _, calls in results:
            for name, value in calls.items():
                scripts[name] = scripts.get(name, 0) + value
        by_name = ", ".join(
            f"{k} {v / batches:.2f}" for k, v in sorted(scripts.items(), key=lambda kv: -kv[1])
        )
        print(f"        {system} batch {batch}, per batch: {shown}")
        if by_name:
            print(f"        {system} scripts per batch: {by_name}")
    anyio.run(_delete, args.url, prefix)
    total = sum(count for count, _, _, _ in results)
    seconds = max(elapsed for _, elapsed, _, _ in results)
    times = sorted(t for _, _, each, _ in results for t in each)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return total / seconds, statistics.median(times) * 1000, p99 * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=5000, help="per process and batch size")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", default="raw,store,runtime,runtime-ahead")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--count", action="store_true", help="commands per batch")
    args = parser.parse_args()
    import logging

    logging.getLogger("aevents").setLevel(logging.ERROR)  # the appendonly warning, each run
    names = ["raw", *(name for name in args.systems.split(",") if name != "raw")]
    print(f"processes {args.processes}, repeat {args.repeat} (medians)")
    print("batch  system         events/s   p50 ms   p99 ms   ratio  (each repetition)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        for batch in (int(b) for b in args.batches.split(",")):
            events = args.events if batch > 1 else min(args.events, 2000)
            rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
            for repetition in range(args.repeat):
                shift = repetition % len(names)
                for name in names[shift:] + names[:shift]:
                    rows[name].append(run(pool, name, args, batch, events))
            for name, found in rows.items():
                rate, p50, p99 = (statistics.median(column) for column in zip(*found, strict=True))
                ratios = [ours[0] / raw[0] for ours, raw in zip(found, rows["raw"], strict=True)]
                each = " ".join(f"{ratio:.2f}" for ratio in ratios)
                print(
                    f"{batch:5}  {name:13} {rate:10.0f} {p50:8.2f} {p99:8.2f}   "
                    f"{statistics.median(ratios):.2f}x  ({each})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
