"""Compare two checkouts of aevents with the benchmark suite, interleaved, in one run.

    python scripts/bench_compare.py --old ../aevents-old --rounds 5 \
        --workloads throughput,throughput-small,fanout --systems aevents-asyncio

Each checkout runs its own ``python -m benchmarks`` from its own ``.venv``
(``--old`` and ``--new``, the latter this checkout by default), one repetition
at a time, alternating old and new and swapping which goes first every round,
so that both see the same machine. It prints the median rate of each
(workload, system) pair for both sides and the ratio new/old.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(checkout: Path, workloads: str, systems: str, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "run.json"
        subprocess.run(
            [
                str(checkout / ".venv" / "bin" / "python"),
                "-m",
                "benchmarks",
                "--workloads",
                workloads,
                "--systems",
                systems,
                "--repeat",
                "1",
                "--no-progress",
                "--output",
                str(output),
                *extra,
            ],
            cwd=checkout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        report = json.loads(output.read_text())
    rates: dict[str, float] = {}
    for result in report["runs"]:
        if result["status"] == "ok":
            metrics = result["metrics"]
            value = metrics.get("rate", metrics.get("p50_us"))
            rates[f"{result['workload']} / {result['system']}"] = value
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="throughput,throughput-small,fanout")
    parser.add_argument("--systems", default="aevents-asyncio")
    parser.add_argument("--quick", action="store_true", help="the suite's small sizes")
    options = parser.parse_args()
    extra = ["--quick"] if options.quick else []
    sides = {"old": options.old.resolve(), "new": options.new.resolve()}
    rates: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for round_number in range(options.rounds):
        order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
        for side in order:
            for pair, rate in _run(sides[side], options.workloads, options.systems, extra).items():
                rates[side].setdefault(pair, []).append(rate)
        print(f"round {round_number + 1} of {options.rounds} done", file=sys.stderr)
    print(f"| pair | old median | new median | new/old | rounds: {options.rounds} |")
    print("|---|---|---|---|---|")
    for pair in sorted(rates["new"]):
        old = statistics.median(rates["old"].get(pair, [float("nan")]))
        new = statistics.median(rates["new"][pair])
        print(f"| {pair} | {old:,.0f} | {new:,.0f} | {new / old:.3f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
