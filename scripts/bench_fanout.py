"""Workload 2 (fan-out to 10 async receivers) against blinker, two ways that a shared
machine disturbs less than ``python -m benchmarks``.

    python scripts/bench_fanout.py pairs [--events 5000] [--pairs 40] [--receivers 10]
    python scripts/bench_fanout.py instructions [--receivers 10]   # needs valgrind

``pairs`` runs aevents and blinker one after the other, ``--pairs`` times in one
process (which goes first alternates), and prints the median of each pair's
ratio aevents/blinker: drift in the machine slower than one pair cancels out.

``instructions`` counts CPU instructions with ``valgrind --tool=callgrind``: each
system runs once with 1,000 events and once with 6,000, in fresh processes with
``PYTHONHASHSEED=0``, and the difference over 5,000 is the count per event,
start-up excluded. The count repeats to within about 0.5% and does not depend
on what else the machine does; it does not see cache misses or mispredicted
branches, so read a change of a few percent in it as a direction, not as time.

Both use the suite's workload: the 411-byte payload, made fresh per event; each
receiver reads it; aevents on its defaults (8 workers, a buffer of 1,024),
blinker's ``send_async`` with its receivers inline. Both check that every
delivery happened.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.payload import make_payload  # noqa: E402

NAME = "user:account:created"


async def run_aevents(events: int, receivers: int) -> float:
    import aevents

    seen = [0]

    registry = aevents.Registry()
    for index in range(receivers):

        async def receiver(event: aevents.Event) -> None:
            seen[0] += event.payload["seq"]

        registry.subscribe(NAME, receiver, id=f"r{index}")
    async with aevents.EventRuntime(registry) as runtime:
        publish = runtime.publish
        gc.collect()
        started = time.perf_counter()
        for seq in range(events):
            await publish(NAME, payload=make_payload(seq))
        await runtime.drain()
        elapsed = time.perf_counter() - started
    _check(seen[0], events, receivers)
    return events * receivers / elapsed


async def run_blinker(events: int, receivers: int) -> float:
    import blinker

    seen = [0]
    signal = blinker.Namespace().signal(NAME)
    kept = []
    for _ in range(receivers):

        async def receiver(sender: object, payload: dict[str, int]) -> None:
            seen[0] += payload["seq"]

        kept.append(receiver)  # blinker holds receivers weakly
        signal.connect(receiver)
    gc.collect()
    started = time.perf_counter()
    for seq in range(events):
        await signal.send_async(None, _sync_wrapper=None, payload=make_payload(seq))
    elapsed = time.perf_counter() - started
    _check(seen[0], events, receivers)
    return events * receivers / elapsed


def _check(seen: int, events: int, receivers: int) -> None:
    expected = receivers * events * (events - 1) // 2
    if seen != expected:
        raise SystemExit(f"the receivers saw {seen}, expected {expected}")


def pairs(events: int, count: int, receivers: int) -> None:
    ratios = []
    for index in range(count):
        if index % 2:
            ours = anyio.run(run_aevents, events, receivers)
            theirs = anyio.run(run_blinker, events, receivers)
        else:
            theirs = anyio.run(run_blinker, events, receivers)
            ours = anyio.run(run_aevents, events, receivers)
        ratios.append(ours / theirs)
    ratios.sort()
    print(
        f"aevents/blinker, fan-out to {receivers}, {count} pairs of {events} events: "
        f"median {statistics.median(ratios):.3f} "
        f"(quartiles {ratios[len(ratios) // 4]:.3f} to {ratios[3 * len(ratios) // 4]:.3f})"
    )


def _instructions(system: str, events: int, receivers: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "once",
        system,
        f"--events={events}",
        f"--receivers={receivers}",
    ]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def instructions(receivers: int) -> None:
    for system in ("aevents", "blinker"):
        few = _instructions(system, 1000, receivers)
        many = _instructions(system, 6000, receivers)
        print(f"{system}: {(many - few) / 5000:,.0f} CPU instructions per event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("pairs", "instructions", "once"))
    parser.add_argument("system", nargs="?", choices=("aevents", "blinker"))
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--receivers", type=int, default=10)
    options = parser.parse_args()
    if options.mode == "pairs":
        pairs(options.events, options.pairs, options.receivers)
    elif options.mode == "instructions":
        instructions(options.receivers)
    else:  # one run, for valgrind to count
        run = run_aevents if options.system == "aevents" else run_blinker
        anyio.run(run, options.events, options.receivers)


if __name__ == "__main__":
    main()
