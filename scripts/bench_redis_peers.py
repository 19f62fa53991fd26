"""Publish-and-consume on Redis: aevents RedisStore beside taskiq-redis and FastStream.

    python scripts/bench_redis_peers.py [--url redis://127.0.0.1:6379/0] [--events 2048]
                                        [--batches 1,32] [--repeat 3]

Each system publishes a batch of events, waits until its consumer has run every one
of them, and repeats, in one asyncio process (taskiq and FastStream run on asyncio):

* ``raw``: coredis ``XADD`` of the batch (pipelined), ``XREADGROUP COUNT batch`` and
  ``XACK``: the floor, keeping nothing else.
* ``aevents``: ``EventRuntime`` on ``RedisStore`` with one fleet receiver:
  ``publish`` (batch 1) or ``publish_many``; its runtime claims, starts, runs and
  settles each delivery (attempts, leases, dead letters, trimming).
* ``taskiq``: ``RedisStreamBroker`` (taskiq-redis) and a ``taskiq`` ``Receiver`` in
  the same process running one task; the batch is published as concurrent ``kiq``
  calls (taskiq has no batch publish). Its ``XACK`` follows each task.
* ``faststream``: ``RedisBroker`` with a ``StreamSub`` consumer group subscriber; the
  batch as concurrent ``publish(stream=...)`` calls. It acknowledges each message
  after its handler.

Systems alternate ``--repeat`` times for each batch size (the order rotates); printed
are the medians of events/s and of the ratio to the raw loop of the same repetition.
Every run uses fresh keys and deletes them. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import coredis

import aevents
from aevents import RedisStore

Run = Callable[[str, int, int], Awaitable[float]]  # url, batch, events -> seconds


class Counter:
    """Counts runs of a receiver; ``wait(n)`` returns once ``n`` ran."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    async def wait(self, target: int) -> None:
        self.target = target
        if self.count < target:
            self.reached = asyncio.Event()
            if self.count < target:
                await self.reached.wait()


async def run_raw(url: str, batch: int, events: int) -> float:
    stream = "bench-peers-raw-" + os.urandom(4).hex()
    client: Any = coredis.Redis.from_url(url)
    async with client:
        await client.xgroup_create(stream, "g", "$", mkstream=True)
        began = time.perf_counter()
        for _ in range(events // batch):
            async with client.pipeline(transaction=False) as pipe:
                for n in range(batch):
                    pipe.xadd(stream, {"n": str(n)})
            read = await client.xreadgroup("g", "c", streams={stream: ">"}, count=batch)
            ids = [entry.identifier for entry in read[stream.encode()]]
            assert len(ids) == batch
            await client.xack(stream, "g", ids)
        elapsed = time.perf_counter() - began
        await client.delete([stream])
    return elapsed


async def run_aevents(url: str, batch: int, events: int) -> float:
    prefix = "bench-peers-" + os.urandom(4).hex()
    counter = Counter()
    registry = aevents.Registry()

    @registry.subscribe("bench:*", id="count")
    async def count(event: aevents.Event) -> None:
        counter.hit()

    store = RedisStore(url, prefix=prefix, retention=None)
    try:
        async with aevents.EventRuntime(registry, store=store) as runtime:
            began = time.perf_counter()
            for round_ in range(events // batch):
                if batch == 1:
                    await runtime.publish("bench:event", payload={"n": round_})
                else:
                    await runtime.publish_many("bench:event", [{"n": n} for n in range(batch)])
                await counter.wait((round_ + 1) * batch)
            elapsed = time.perf_counter() - began
    finally:
        cleanup = RedisStore(url, prefix=prefix)
        await cleanup.open()
        await cleanup.delete_all()
        await cleanup.close()
    return elapsed


async def run_taskiq(url: str, batch: int, events: int) -> float:
    from taskiq.receiver import Receiver
    from taskiq_redis import RedisStreamBroker

    queue = "bench-peers-taskiq-" + os.urandom(4).hex()
    counter = Counter()
    broker = RedisStreamBroker(url, queue_name=queue, xread_block=100, xread_count=batch)

    @broker.task(task_name="count")
    async def count(n: int) -> None:
        counter.hit()

    await broker.startup()
    receiver = Receiver(broker, run_startup=False, max_async_tasks=100)
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    try:
        began = time.perf_counter()
        for round_ in range(events // batch):
            await asyncio.gather(*(count.kiq(n) for n in range(batch)))
            await counter.wait((round_ + 1) * batch)
        elapsed = time.perf_counter() - began
    finally:
        finish.set()
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        client: Any = coredis.Redis.from_url(url)
        async with client:
            await client.delete([queue])
        await broker.shutdown()
    return elapsed


async def run_faststream(url: str, batch: int, events: int) -> float:
    from faststream.redis import RedisBroker, StreamSub

    stream = "bench-peers-faststream-" + os.urandom(4).hex()
    counter = Counter()
    quiet = logging.getLogger("bench-peers-faststream")  # no line per message
    quiet.setLevel(logging.WARNING)
    broker = RedisBroker(url, logger=quiet)

    @broker.subscriber(stream=StreamSub(stream, group="g", consumer="c", polling_interval=100))
    async def count(message: dict[str, int]) -> None:
        counter.hit()

    await broker.start()
    try:
        began = time.perf_counter()
        for round_ in range(events // batch):
            await asyncio.gather(*(broker.publish({"n": n}, stream=stream) for n in range(batch)))
            await counter.wait((round_ + 1) * batch)
        elapsed = time.perf_counter() - began
    finally:
        await broker.stop()
        client: Any = coredis.Redis.from_url(url)
        async with client:
            await client.delete([stream])
    return elapsed


SYSTEMS: dict[str, Run] = {
    "raw": run_raw,
    "aevents": run_aevents,
    "taskiq": run_taskiq,
    "faststream": run_faststream,
}


async def main_async(args: argparse.Namespace) -> None:
    names = list(SYSTEMS)
    print(f"{args.events} events per run, repeat {args.repeat} (medians)")
    print(f"{'batch':>5}  {'system':<10} {'events/s':>9}  {'ratio to raw':>12}")
    for batch in args.batches:
        events = max(args.events // batch, 1) * batch if batch > 1 else args.events // 4
        rates: dict[str, list[float]] = {name: [] for name in names}
        ratios: dict[str, list[float]] = {name: [] for name in names}
        for repetition in range(args.repeat):
            order = names[repetition % len(names) :] + names[: repetition % len(names)]
            measured = {
                name: events / await SYSTEMS[name](args.url, batch, events) for name in order
            }
            for name in names:
                rates[name].append(measured[name])
                ratios[name].append(measured[name] / measured["raw"])
        for name in names:
            rate, ratio = statistics.median(rates[name]), statistics.median(ratios[name])
            print(f"{batch:>5}  {name:<10} {rate:>9,.0f}  {ratio:>11.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=2048, help="per run (a quarter at batch 1)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    logging.getLogger("aevents").setLevel(logging.ERROR)  # the appendonly warning, each run
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
