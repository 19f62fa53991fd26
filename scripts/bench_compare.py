"""Compare two checkouts of aevents with the benchmark suite, interleaved, in one run.

    python scripts/bench_compare.py --old ../aevents-old --rounds 5 \
        --workloads throughput,throughput-small,fanout --systems aevents-asyncio

Each checkout runs its own ``python -m benchmarks`` from its own ``.venv``
(``--old`` and ``--new``, the latter this checkout by default), one repetition
at a time, alternating old and new and swapping which goes first every round,
so that both see the same machine. It prints the median rate of each
(workload, system) pair for both sides and the ratio new/old. ``--keys N`` adds
``benchmarks.keys`` (W1 with ordering keys, N events) to each round.
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
            pair = f"{result['workload']} / {result['system']}"
            if metrics.get("rate") is not None:
                rates[pair] = metrics["rate"]
            else:  # the latency workload: its percentiles, in µs (lower is better)
                for percentile in ("p50", "p99"):
                    if metrics.get(percentile) is not None:
                        rates[f"{pair} {percentile} µs"] = metrics[percentile]
    return rates


def _run_keys(checkout: Path, events: int) -> dict[str, float]:
    """One repetition of ``benchmarks.keys`` (W1 with ordering keys) in ``checkout``."""
    result = subprocess.run(
        [
            str(checkout / ".venv" / "bin" / "python"),
            "-m",
            "benchmarks.keys",
            "--events",
            str(events),
            "--repeat",
            "1",
            "--json",
        ],
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        f"keys / {variant}": figures["median"] for variant, figures in report["variants"].items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="throughput,throughput-small,fanout")
    parser.add_argument("--systems", default="aevents-asyncio")
    parser.add_argument("--quick", action="store_true", help="the suite's small sizes")
    parser.add_argument(
        "--keys",
        type=int,
        default=0,
        metavar="EVENTS",
        help="also run benchmarks.keys (ordering keys) with this many events; no workloads "
        "of the suite when --workloads is empty",
    )
    options = parser.parse_args()
    extra = ["--quick"] if options.quick else []
    sides = {"old": options.old.resolve(), "new": options.new.resolve()}
    rates: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for round_number in range(options.rounds):
        order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
        for side in order:
            measured: dict[str, float] = {}
            if options.workloads:
                measured |= _run(sides[side], options.workloads, options.systems, extra)
            if options.keys:
                measured |= _run_keys(sides[side], options.keys)
            for pair, rate in measured.items():
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
