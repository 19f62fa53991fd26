"""What ordering keys cost: throughput with 1, 100 and 100,000 distinct keys against none.

    python -m benchmarks.keys                       # 5 interleaved repetitions, 200k events
    python -m benchmarks.keys --events 20000 --repeat 1   # a smoke run

Workload 1's shape (one async receiver, the 411-byte sign-up payload, 8
workers, a 1,024-delivery buffer) with ``key=`` cycling over N distinct keys.
Each measurement runs in a fresh interpreter (``--measure``), the variants are
interleaved and rotated per repetition, and the report gives medians and the
ratio to the unkeyed run. The target: under 25% overhead from 100 keys up.

With one key every delivery waits for the one before it, so throughput is one
receiver's, not eight workers': that is the price of total order, not overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

VARIANTS: dict[str, int | None] = {
    "no key": None,
    "1 key": 1,
    "100 keys": 100,
    "100k keys": 100_000,
}
GOAL_OVERHEAD = 0.25


def measure(distinct: int | None, events: int, backend: str) -> float:
    """Publish ``events`` events and drain; return events per second."""
    import anyio

    import aevents
    from benchmarks.payload import make_payload
    from benchmarks.systems.base import BUFFER, WORKERS

    registry = aevents.Registry()
    delivered = [0]
    count = distinct or 1
    last_seq = [-1] * count  # the guard: each key's events arrive in publish order
    out_of_order = [0]

    async def receiver(event: aevents.Event) -> None:
        delivered[0] += 1
        if event.key is not None:
            seq = event.payload["seq"]
            if last_seq[seq % count] >= seq:  # key number seq % count, as published
                out_of_order[0] += 1
            last_seq[seq % count] = seq

    registry.subscribe("bench:user:created", receiver, id="receiver")
    keys = None if distinct is None else [f"user:{index}" for index in range(distinct)]
    payloads = [make_payload(seq) for seq in range(events)]

    async def main() -> float:
        async with aevents.EventRuntime(registry, workers=WORKERS, buffer=BUFFER) as runtime:
            publish = runtime.publish
            started = time.perf_counter()
            if keys is None:
                for payload in payloads:
                    await publish("bench:user:created", payload=payload)
            else:
                for seq, payload in enumerate(payloads):
                    await publish("bench:user:created", payload=payload, key=keys[seq % count])
            await runtime.drain()
            elapsed = time.perf_counter() - started
            if runtime.stats().active_keys:
                raise RuntimeError("lanes left after drain")
        return elapsed

    elapsed = anyio.run(main, backend=backend)
    if delivered[0] != events or out_of_order[0]:
        raise RuntimeError(f"delivered {delivered[0]} of {events}, {out_of_order[0]} out of order")
    return events / elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.keys", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.measure is not None:
        distinct = VARIANTS[args.measure]
        print(json.dumps(measure(distinct, args.events, args.backend)))
        return 0
    names = list(VARIANTS)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(args.repeat):
        order = names[repetition % len(names) :] + names[: repetition % len(names)]
        for name in order:
            completed = subprocess.run(
                [
                    sys.executable,
                    *("-m", "benchmarks.keys", "--measure", name),
                    *("--events", str(args.events), "--backend", args.backend),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rates[name].append(float(completed.stdout.strip().splitlines()[-1]))
    base = statistics.median(rates["no key"])
    report: dict[str, Any] = {"events": args.events, "repeat": args.repeat, "variants": {}}
    print(f"{args.events:,} events, {args.repeat} repetitions, {args.backend}, medians")
    print(f"{'variant':<10} {'events/s':>10} {'min-max':>21} {'vs no key':>10}")
    for name in names:
        median = statistics.median(rates[name])
        ratio = median / base
        goal = ""
        if VARIANTS[name] is not None and VARIANTS[name] >= 100:  # type: ignore[operator]
            met = 1 - ratio < GOAL_OVERHEAD
            goal = "  goal <25% overhead: " + ("met" if met else "NOT met")
        low, high = min(rates[name]), max(rates[name])
        print(f"{name:<10} {median:>10,.0f} {low:>10,.0f}-{high:<10,.0f} {ratio:>9.2f}x{goal}")
        report["variants"][name] = {"median": median, "rates": rates[name], "ratio": ratio}
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
