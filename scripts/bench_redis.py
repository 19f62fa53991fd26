"""Publish-and-consume through RedisStore against raw coredis XADD/XREADGROUP/XACK loops.

    python scripts/bench_redis.py [--url redis://127.0.0.1:6379/0] [--events 5000]

For each batch size (1, 32, 256), one process publishes a batch and consumes it
(claim, start, settle as done), as a runtime's fleet calls the store; the raw
loop does XADD of the batch, XREADGROUP of the batch and XACK of it. Prints
events/s, p50 and p99 of the round trip per batch, and the ratio to the raw loop.
Run on an idle machine; each run uses a fresh key prefix and deletes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import anyio
import coredis

from aevents import RedisStore
from aevents._event import make_event
from aevents._store import Completed, Route, new_consumer_id


def _summary(seconds: list[float], events: int) -> tuple[float, float, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return events / sum(seconds), statistics.median(ordered) * 1000, p99 * 1000


async def aevents_round_trips(url: str, batch: int, events: int) -> tuple[float, float, float]:
    store = RedisStore(url, prefix="bench-" + os.urandom(4).hex(), retention=None)
    await store.open()
    try:
        consumer = new_consumer_id()
        await store.register(consumer, [Route("**", "r")], ttl=60)
        times = []
        for _ in range(events // batch):
            sent = [(make_event("bench:event", {"n": n}, {}), ["r"]) for n in range(batch)]
            began = time.perf_counter()
            await store.publish(sent)
            claims = await store.claim(consumer, batch, lease=30)
            await store.start(consumer, claims)
            await store.settle(consumer, [Completed(claim) for claim in claims])
            times.append(time.perf_counter() - began)
            assert len(claims) == batch
        return _summary(times, (events // batch) * batch)
    finally:
        await store.delete_all()
        await store.close()


async def raw_round_trips(url: str, batch: int, events: int) -> tuple[float, float, float]:
    client: Any = coredis.Redis.from_url(url)
    key = "{bench-raw-" + os.urandom(4).hex() + "}:stream"
    async with client:
        await client.xgroup_create(key, "g", "$", mkstream=True)
        times = []
        try:
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
        finally:
            await client.delete([key])
        return _summary(times, (events // batch) * batch)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args()
    print("batch  system    events/s   p50 ms   p99 ms   ratio")
    for batch in (1, 32, 256):
        events = args.events if batch > 1 else min(args.events, 2000)
        raw = await raw_round_trips(args.url, batch, events)
        ours = await aevents_round_trips(args.url, batch, events)
        for name, (rate, p50, p99) in (("raw", raw), ("aevents", ours)):
            ratio = rate / raw[0]
            print(f"{batch:5}  {name:8} {rate:10.0f} {p50:8.2f} {p99:8.2f}   {ratio:.2f}x")


if __name__ == "__main__":
    anyio.run(main)
