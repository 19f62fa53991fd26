"""Publish and consume many events through EventRuntime on RedisStore, and watch Redis.

    python scripts/bench_redis_bounds.py [--url redis://127.0.0.1:6379/0] [--events 1000000]
                                         [--batch 1000] [--window 20000] [--retention 10]
                                         [--receivers 1] [--every 1.0] [--prune-every 0]

One runtime publishes with ``publish_many`` in batches of ``--batch`` and consumes
(fleet receivers that count), keeping at most ``--window`` events published but not
yet done, so the backlog stays bounded by the workload and what grows is what the
store keeps. The store runs with ``retention=--retention`` seconds; its own pass
prunes done events about once a minute. ``--prune-every S`` also calls
``RedisStore.prune()`` every S seconds from another store, as an operator's cron
would. Every ``--every`` seconds it samples ``XLEN`` of the events stream and of each
receiver's stream, the deliveries pending and done, and ``INFO memory``
``used_memory``; it prints the samples (one line every ten) and then the maxima and
the memory growth. Run it on an idle server: ``used_memory`` is the whole server's.
The key prefix is fresh and deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

import aevents
from aevents import RedisStore

Sample = tuple[
    float, int, list[int], int, int, int
]  # t, events XLEN, receivers, pending, done, memory


async def sample(store: RedisStore, receivers: list[str]) -> tuple[int, list[int], int, int, int]:
    keys = store.keys

    async def read(client: Any) -> tuple[int, list[int], int]:
        events = int(await client.xlen(keys.events))
        streams = [int(await client.xlen(keys.receiver(r))) for r in receivers]
        info = await client.info("memory")
        return events, streams, int(info["used_memory"])

    events, streams, memory = await store._call(read, "sample")
    stats = await store.stats()
    return events, streams, stats.pending, stats.done, memory


async def run(args: argparse.Namespace) -> None:
    prefix = "bench-bounds-" + os.urandom(4).hex()
    receivers = [f"count{i}" for i in range(args.receivers)]
    done = 0
    registry = aevents.Registry()

    async def count(event: aevents.Event) -> None:
        nonlocal done
        done += 1

    for receiver in receivers:
        registry.subscribe("bounds:*", count, id=receiver)
    retention = timedelta(seconds=args.retention)
    store = RedisStore(args.url, prefix=prefix, retention=retention)
    watch = RedisStore(args.url, prefix=prefix, retention=None)
    samples: list[Sample] = []
    total = args.events * len(receivers)
    began = time.monotonic()
    await watch.open()
    try:
        baseline = (await sample(watch, receivers))[4]

        async def sampler() -> None:
            while True:
                events, streams, pending, finished, memory = await sample(watch, receivers)
                at = time.monotonic() - began
                samples.append((at, events, streams, pending, finished, memory))
                if len(samples) % 10 == 1:
                    print(
                        f"{at:7.1f} s  events XLEN {events:>9,}  receivers XLEN"
                        f" {max(streams):>9,}  pending {pending:>9,}  done {finished:>10,}"
                        f"  used_memory {memory / 2**20:8.1f} MiB",
                        flush=True,
                    )
                await anyio.sleep(args.every)

        async def pruner() -> None:
            while True:
                await anyio.sleep(args.prune_every)
                await watch.prune(older_than=datetime.now(UTC) - retention)

        async with anyio.create_task_group() as group:
            group.start_soon(sampler)
            if args.prune_every:
                group.start_soon(pruner)
            async with aevents.EventRuntime(registry, store=store, workers=16) as runtime:
                for start in range(0, args.events, args.batch):
                    while (start * len(receivers)) - done > args.window * len(receivers):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    size = min(args.batch, args.events - start)
                    await runtime.publish_many(
                        "bounds:event", [{"n": n} for n in range(start, start + size)]
                    )
                while done < total:  # noqa: ASYNC110 (a cheap poll of a counter)
                    await anyio.sleep(0.01)
            elapsed = time.monotonic() - began
            group.cancel_scope.cancel()
        events, streams, pending, finished, memory = await sample(watch, receivers)
        samples.append((elapsed, events, streams, pending, finished, memory))
    finally:
        await watch.delete_all()
        await watch.close()
    peak = max(samples, key=lambda s: s[5])
    print()
    print(f"{args.events:,} events x {len(receivers)} receivers in {elapsed:.1f} s")
    print(f"  ({total / elapsed:,.0f} deliveries/s), window {args.window:,} events")
    print(f"max XLEN of the events stream:     {max(s[1] for s in samples):>12,}")
    print(f"max XLEN of a receiver's stream:   {max(max(s[2]) for s in samples):>12,}")
    print(f"events stream XLEN at the end:     {samples[-1][1]:>12,}")
    print(f"used_memory before:                {baseline / 2**20:>12.1f} MiB")
    print(f"used_memory at its peak:           {peak[5] / 2**20:>12.1f} MiB at {peak[0]:.0f} s")
    print(f"used_memory at the end:            {samples[-1][5] / 2**20:>12.1f} MiB")
    growth = (samples[-1][5] - baseline) / 2**20
    print(f"growth over the run:               {growth:>12.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per publish_many")
    parser.add_argument("--window", type=int, default=20_000, help="events ahead of the done")
    parser.add_argument("--retention", type=float, default=10.0, help="seconds")
    parser.add_argument("--receivers", type=int, default=1)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--prune-every", type=float, default=0.0, help="seconds; 0: never")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()
    anyio.run(run, args, backend=args.backend)


if __name__ == "__main__":
    main()
