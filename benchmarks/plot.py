"""`python -m benchmarks.plot results.json`: one PNG per workload in benchmarks/results/.

Horizontal bars of each system's median with min-max whiskers; aevents-asyncio is
highlighted. Uses matplotlib's Agg backend, so it needs no display.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def plot_workload(
    key: str, info: dict[str, Any], cells: dict[str, Any], baseline: str, output: Path, stem: str
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = info["metrics"][0]
    rows = [
        (name, cell["metrics"][metric["key"]])
        for name, cell in cells.items()
        if cell["status"] == "ok" and metric["key"] in cell["metrics"]
    ]
    if not rows:
        return None
    names = [name for name, _ in rows]
    medians = [stats["median"] for _, stats in rows]
    low = [stats["median"] - stats["min"] for _, stats in rows]
    high = [stats["max"] - stats["median"] for _, stats in rows]
    colours = ["tab:orange" if name.startswith("aevents") else "tab:blue" for name in names]
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
    positions = list(range(len(rows)))[::-1]
    axes.barh(positions, medians, xerr=[low, high], color=colours, capsize=3)
    axes.set_yticks(positions, names)
    for label in axes.get_yticklabels():
        if label.get_text() == baseline:
            label.set_fontweight("bold")
    spread = max(medians) / max(min(value for value in medians if value > 0), 1e-12)
    if spread > 50:
        axes.set_xscale("log")
    better = "higher" if metric["higher_is_better"] else "lower"
    axes.set_xlabel(f"{metric['label']} ({metric['unit']}), median and min-max; {better} is better")
    axes.set_title(info["title"], loc="left")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    path = output / f"{stem}-{key}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot")
    parser.add_argument("results", type=Path, help="a JSON file written by python -m benchmarks")
    parser.add_argument("--output", type=Path, help="directory (default benchmarks/results/)")
    args = parser.parse_args(argv)
    document = json.loads(args.results.read_text())
    output = args.output or RESULTS
    output.mkdir(parents=True, exist_ok=True)
    baseline = document["options"]["baseline"]
    for key, info in document["workloads"].items():
        cells = document["summary"].get(key, {})
        path = plot_workload(key, info, cells, baseline, output, args.results.stem)
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
