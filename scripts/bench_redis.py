"""Publish-and-consume through RedisStore against raw coredis XADD/XREADGROUP/XACK loops.

    python scripts/bench_redis.py [--url redis://127.0.0.1:6379/0] [--events 5000]
                                  [--processes 1] [--repeat 3]

For each batch size (1, 32, 256), each process publishes a batch and consumes it
(a claim that starts the batch in the same call, then a settle as done), as a
runtime's fleet calls the store when its workers can take the whole batch: three
round trips, as the raw loop's XADD of the batch (pipelined), XREADGROUP of the
batch and XACK of it.
With ``--processes N`` N processes run at once on one store (one receiver each;
the raw loops one stream each), started together. Raw and aevents runs alternate
``--repeat`` times; printed are the medians of events/s (all processes), of the
p50 and p99 of the round trip per batch, and of the ratio to the raw loop of the
same repetition. Run on an idle machine; each run uses a fresh key prefix and
deletes it.
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

from aevents import RedisStore
from aevents._event import make_event
from aevents._store import Completed, Route, new_consumer_id

Result = tuple[int, float, list[float]]  # events, seconds, round trip of each batch


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
        return (events // batch) * batch, time.perf_counter() - began_all, times
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
        return (events // batch) * batch, time.perf_counter() - began_all, times


def _child(
    system: str, url: str, prefix: str, index: int, batch: int, events: int, at: float
) -> Result:
    loop = raw_round_trips if system == "raw" else aevents_round_trips
    return anyio.run(loop, url, prefix, index, batch, events, at)


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
    at = time.time() + 1.0  # every process has opened its client by then
    futures = [
        pool.submit(_child, system, args.url, prefix, index, batch, events, at)
        for index in range(args.processes)
    ]
    results = [future.result() for future in futures]
    anyio.run(_delete, args.url, prefix)
    total = sum(count for count, _, _ in results)
    seconds = max(elapsed for _, elapsed, _ in results)
    times = sorted(t for _, _, each in results for t in each)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return total / seconds, statistics.median(times) * 1000, p99 * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=5000, help="per process and batch size")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"processes {args.processes}, repeat {args.repeat} (medians)")
    print("batch  system    events/s   p50 ms   p99 ms   ratio")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        for batch in (1, 32, 256):
            events = args.events if batch > 1 else min(args.events, 2000)
            rows: dict[str, list[tuple[float, float, float]]] = {"raw": [], "aevents": []}
            ratios = []
            for _ in range(args.repeat):
                raw = run(pool, "raw", args, batch, events)
                ours = run(pool, "aevents", args, batch, events)
                rows["raw"].append(raw)
                rows["aevents"].append(ours)
                ratios.append(ours[0] / raw[0])
            for name, found in rows.items():
                rate, p50, p99 = (statistics.median(column) for column in zip(*found, strict=True))
                ratio = 1.0 if name == "raw" else statistics.median(ratios)
                print(f"{batch:5}  {name:8} {rate:10.0f} {p50:8.2f} {p99:8.2f}   {ratio:.2f}x")


if __name__ == "__main__":
    main()
