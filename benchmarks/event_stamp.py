"""What building an event costs, and what reading its ``id`` and ``occurred_at`` adds.

    python -m benchmarks.event_stamp                           # this checkout
    python -m benchmarks.event_stamp --compare ../other-checkout --repeat 9

Each case is timed with ``timeit`` (``--number`` loops, the median of five) in a
fresh interpreter per repetition; with ``--compare`` the two checkouts run
alternately, in an order that flips each repetition, and the report gives the
median nanoseconds per event of each and their ratio (this / other: below 1 is
faster). A published event may compute ``id`` and ``occurred_at`` on first
read, so a receiver that reads them pays for them once: the cases price each
read separately, then a second read, which must come from a cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETUP = """
from datetime import UTC, datetime
from aevents import Event
from aevents._event import make_event, _make_event, new_event_id
payload = {"user_id": 48213977, "seq": 1}
metadata = {}
made = make_event("bench:user:created", payload, metadata)
made.id, made.occurred_at
moment = datetime.now(UTC)
event_id = new_event_id()
body = made.to_json()
"""

#: name -> statement timed per event; the first is what every publish pays.
CASES: dict[str, str] = {
    "make_event, read nothing": 'make_event("bench:user:created", payload, metadata)',
    "make_event + first .id": 'make_event("bench:user:created", payload, metadata).id',
    "make_event + first .occurred_at": (
        'make_event("bench:user:created", payload, metadata).occurred_at'
    ),
    "make_event + both": (
        'e = make_event("bench:user:created", payload, metadata); e.id; e.occurred_at'
    ),
    "make_event + to_json": 'make_event("bench:user:created", payload, metadata).to_json()',
    "second .id (cached)": "made.id",
    "second .occurred_at (cached)": "made.occurred_at",
    ".name (a plain field)": "made.name",
    "hash + == of a made event": "hash(made); made == made",
    "Event(...) explicit": 'Event(event_id, "bench:user:created", payload, moment, metadata)',
    "_make_event explicit (stores)": (
        '_make_event(event_id, "bench:user:created", payload, moment, metadata)'
    ),
    "Event.from_json": "Event.from_json(body)",
    "new_event_id()": "new_event_id()",
}


def measure(number: int) -> dict[str, float]:
    """Nanoseconds per run of each case in this interpreter: the median of five timings."""
    results = {}
    for name, statement in CASES.items():
        timer = timeit.Timer(statement, SETUP)
        timings = timer.repeat(5, number)
        results[name] = statistics.median(timings) / number * 1e9
    return results


def _run(source: Path, number: int) -> dict[str, float]:
    """One repetition in a fresh interpreter that imports aevents from ``source``."""
    completed = subprocess.run(
        [sys.executable, __file__, "--measure", str(source), "--number", str(number)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(source)},
    )
    results: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.event_stamp", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per checkout")
    parser.add_argument("--number", type=int, default=100_000, help="loops per timing")
    parser.add_argument("--compare", type=Path, help="another checkout of aevents to time too")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one run
    args = parser.parse_args(argv)
    if args.measure is not None:
        import aevents

        if not Path(aevents.__file__).resolve().is_relative_to(args.measure):
            raise SystemExit(f"imported {aevents.__file__}, not the one in {args.measure}")
        print(json.dumps(measure(args.number)))
        return 0
    sources = {"this": ROOT}
    if args.compare is not None:
        sources["other"] = args.compare.resolve()
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in sources}
    for repetition in range(args.repeat):
        order = list(sources) if repetition % 2 == 0 else list(reversed(sources))
        for label in order:
            samples[label].append(_run(sources[label], args.number))
    medians = {
        label: {case: statistics.median(run[case] for run in runs) for case in CASES}
        for label, runs in samples.items()
    }
    print(f"ns per event, median of {args.repeat} interpreters x 5 timings x {args.number:,}")
    header = f"{'case':<34} {'this':>8}"
    if "other" in medians:
        header += f" {'other':>8} {'this/other':>10}"
    print(header)
    for case in CASES:
        line = f"{case:<34} {medians['this'][case]:>8.1f}"
        if "other" in medians:
            other = medians["other"][case]
            line += f" {other:>8.1f} {medians['this'][case] / other:>10.2f}"
        print(line)
    if args.json:
        print(json.dumps({"sources": {k: str(v) for k, v in sources.items()}, "ns": medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
