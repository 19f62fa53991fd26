"""The publish path of a runtime on a shared store: two checkouts, interleaved in one run.

    python scripts/bench_fleet_publish.py --old ../main --rounds 9

Each round runs one measurement per checkout (``--old`` and ``--new``, the
latter this checkout by default), each in a fresh interpreter from the
checkout's own ``.venv``, alternating which goes first. A measurement is
``--events`` sequential ``await runtime.publish()`` calls on a runtime with a
``MemoryStore`` and ``consume=False``, each event routed to one receiver; a
consumer that runs that receiver is registered in the store, so the runtime
has a live consumer to compare its routes with. It prints the median rate of
each side and the ratio new/old.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """
import sys, time, anyio
from aevents import EventRuntime, MemoryStore, Registry
from aevents._store import Route, new_consumer_id

async def main(count):
    store = MemoryStore()
    await store.open()
    await store.register(new_consumer_id(), [Route("orders:*", "billing")], ttl=600)
    registry = Registry()

    async def billing(event):
        pass

    registry.subscribe("orders:*", billing, id="billing")
    async with EventRuntime(registry, store=store, consume=False, buffer=count) as runtime:
        for n in range(1000):  # warm up
            await runtime.publish("orders:paid", payload={"n": n})
        started = time.perf_counter()
        for n in range(count):
            await runtime.publish("orders:paid", payload={"n": n})
        elapsed = time.perf_counter() - started
    print(count / elapsed)

anyio.run(main, int(sys.argv[1]), backend=sys.argv[2])
"""


def _measure(checkout: Path, events: int, backend: str) -> float:
    result = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", MEASURE, str(events), backend],
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--json", action="store_true", help="print the rates as JSON")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"old": [], "new": []}
    for round_ in range(args.rounds):
        order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
        for side in order:
            checkout = args.old if side == "old" else args.new
            rates[side].append(_measure(checkout, args.events, args.backend))
    old, new = statistics.median(rates["old"]), statistics.median(rates["new"])
    if args.json:
        json.dump({"old": rates["old"], "new": rates["new"]}, sys.stdout)
        print()
    print(
        f"publish on a shared MemoryStore ({args.backend}, {args.events} events, median of "
        f"{args.rounds}): old {old:,.0f}/s  new {new:,.0f}/s  new/old {new / old:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
