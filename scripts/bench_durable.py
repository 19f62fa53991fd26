"""Durable figures the benchmark suite does not cover: one publisher, and a big replay.

    python scripts/bench_durable.py single [--events N] [--synchronous FULL|NORMAL]
    python scripts/bench_durable.py replay [--pending N]

``single``: one task awaiting each durable publish in turn (every publish waits
for its own commit), published-to-delivered events per second, median of 5.

``replay``: a journal holding N pending deliveries (written by a first
process), then a fresh process that starts an EventRuntime on it and drains;
prints the time from entering the runtime to drained and the process's peak
RSS before and after. Each phase runs in its own process so that the peak
RSS belongs to the replay alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio

import aevents
from aevents._event import new_event_id

PAYLOAD = {
    "user_id": 48213977,
    "email": "ada.lovelace@example.com",
    "name": "Ada Lovelace",
    "tags": ["beta", "newsletter", "premium"],
    "address": {"city": "London", "postcode": "NW1 6XE", "country": "GB"},
}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _counting_registry(name: str) -> tuple[aevents.Registry, list[int]]:
    """A registry with one receiver on ``name`` that counts into the returned cell."""
    registry, delivered = aevents.Registry(), [0]

    async def receiver(event: aevents.Event) -> None:
        delivered[0] += 1

    registry.subscribe(name, receiver, id="receiver")
    return registry, delivered


async def _single(path: str, events: int, synchronous: str) -> float:
    registry, delivered = _counting_registry("bench:durable:single")
    store = aevents.SQLiteStore(path, synchronous=synchronous)
    async with aevents.EventRuntime(registry, store=store) as runtime:
        started = time.perf_counter()
        for _ in range(events):
            await runtime.publish("bench:durable:single", payload=PAYLOAD)
        await runtime.drain()
        elapsed = time.perf_counter() - started
    if delivered[0] != events:
        raise SystemExit(f"delivered {delivered[0]} of {events}")
    return events / elapsed


async def _fill(path: str, pending: int) -> None:
    """Write `pending` events with one pending delivery each, as a crashed run would leave."""
    store = aevents.SQLiteStore(path, synchronous="NORMAL")
    await store.open()
    try:
        async with anyio.create_task_group() as tasks:
            for first in range(256):

                async def append(first: int = first) -> None:
                    for number in range(first, pending, 256):
                        event = aevents.Event(
                            id=new_event_id(),
                            name="bench:durable:replay",
                            payload={**PAYLOAD, "n": number},
                            occurred_at=datetime.now(UTC),
                            metadata={},
                        )
                        await store.append(event, ["receiver"])

                tasks.start_soon(append)
    finally:
        await store.close()


async def _replay(path: str, pending: int) -> None:
    registry, delivered = _counting_registry("bench:durable:replay")
    before = _peak_rss_mib()
    started = time.perf_counter()
    async with aevents.EventRuntime(registry, store=aevents.SQLiteStore(path)) as runtime:
        await runtime.drain()
    elapsed = time.perf_counter() - started
    if delivered[0] != pending:
        raise SystemExit(f"replayed {delivered[0]} of {pending}")
    print(
        f"replayed {pending:,} pending deliveries in {elapsed:.1f} s "
        f"({pending / elapsed:,.0f}/s); peak RSS {before:.0f} MiB before start, "
        f"{_peak_rss_mib():.0f} MiB after"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    single = sub.add_parser("single")
    single.add_argument("--events", type=int, default=5000)
    single.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    replay = sub.add_parser("replay")
    replay.add_argument("--pending", type=int, default=1_000_000)
    replay.add_argument("--phase", choices=["fill", "replay"], help=argparse.SUPPRESS)
    replay.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.command == "single":
        rates = []
        for _ in range(5):
            with tempfile.TemporaryDirectory() as directory:
                path = str(Path(directory) / "journal.db")
                rates.append(anyio.run(_single, path, args.events, args.synchronous))
        print(
            f"single publisher, synchronous={args.synchronous}: median "
            f"{statistics.median(rates):,.0f} events/s (min {min(rates):,.0f}, "
            f"max {max(rates):,.0f}) over 5 runs of {args.events:,}"
        )
    elif args.phase == "fill":
        anyio.run(_fill, args.path, args.pending)
    elif args.phase == "replay":
        anyio.run(_replay, args.path, args.pending)
    else:
        with tempfile.TemporaryDirectory() as directory:
            path = str(Path(directory) / "journal.db")
            script = [sys.executable, __file__, "replay", "--pending", str(args.pending)]
            started = time.perf_counter()
            subprocess.run([*script, "--phase", "fill", "--path", path], check=True)
            size = os.path.getsize(path) / 2**20
            print(
                f"wrote {args.pending:,} pending deliveries ({size:.0f} MiB) in "
                f"{time.perf_counter() - started:.0f} s"
            )
            subprocess.run([*script, "--phase", "replay", "--path", path], check=True)


if __name__ == "__main__":
    main()
