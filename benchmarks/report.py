"""Rich tables: one per workload (median, min-max, ratio to aevents-asyncio), then the targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.summary import Summary, evaluate_goals, ratio
from benchmarks.systems import BASELINE, SYSTEMS
from benchmarks.workloads import Metric, Workload


def fmt(value: float | None, metric: Metric) -> str:
    if value is None:
        return "—"
    value *= metric.scale
    if metric.unit.endswith("/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
    return f"{value:,.{metric.digits}f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.2f}x" if value >= 0.01 else f"{value:.4f}x"


def _status_text(cell: dict[str, Any]) -> Text:
    status = cell["status"]
    if status == "unsupported":
        return Text(f"n/a: {cell['reason']}", style="dim")
    if status == "unavailable":
        return Text(cell["reason"], style="yellow")
    return Text(f"ERROR: {cell['reason']}", style="bold red")


def workload_table(workload: Workload, summary: Summary, systems: Sequence[str]) -> Table:
    primary = workload.primary
    table = Table(
        title=f"{workload.title}  [dim]({workload.description})[/dim]",
        title_justify="left",
        caption=(
            f"median and min-max over repetitions; ratio = system ÷ {BASELINE} on "
            f"{primary.label} ({'higher' if primary.higher_is_better else 'lower'} is better)"
        ),
        caption_justify="left",
        expand=False,
    )
    table.add_column("system", no_wrap=True)
    table.add_column("mode")
    table.add_column("bounded")
    table.add_column("isolated")
    table.add_column("durable")
    table.add_column("n", justify="right")
    table.add_column(f"{primary.label} ({primary.unit})", justify="right", style="bold")
    table.add_column("min-max", justify="right")
    table.add_column(f"x {BASELINE}", justify="right")
    for metric in workload.metrics[1:]:
        table.add_column(f"{metric.label} ({metric.unit})", justify="right")
    table.add_column("note")
    blank = [""] * (3 + len(workload.metrics))
    cells = summary.get(workload.key, {})
    durable = workload.key.startswith("durable")
    for name in systems:
        cell = cells.get(name)
        system = SYSTEMS[name]
        if cell is None or (system.family == "durable floor" and not durable):
            continue
        semantics = system.semantics
        row: list[Any] = [
            name,
            semantics.mode,
            semantics.bounded,
            semantics.isolated,
            semantics.durable,
        ]
        if cell["status"] != "ok":
            table.add_row(*row, *blank, _status_text(cell))
            continue
        stats = cell["metrics"][primary.key]
        row += [
            f"{cell['n']:,}",
            fmt(stats["median"], primary),
            f"{fmt(stats['min'], primary)}-{fmt(stats['max'], primary)}",
            fmt_ratio(ratio(summary, workload.key, name, primary.key)),
        ]
        for metric in workload.metrics[1:]:
            row.append(fmt(cell["metrics"].get(metric.key, {}).get("median"), metric))
        notes = []
        if workload.key == "routing" and not system.patterns:
            notes.append("patterns pre-expanded to exact names")
        if cell["n"] != cell.get("size", cell["n"]):
            notes.append("smaller n (slow system)")
        row.append(Text("; ".join(notes), style="dim"))
        table.add_row(*row, style="cyan" if name == BASELINE else None)
    return table


def goals_table(summary: Summary) -> Table:
    rows = evaluate_goals(summary)
    table = Table(
        title="Performance targets (shown, not asserted)",
        title_justify="left",
        caption="relative targets show aevents ÷ peer; ✓ met, ✗ missed, — not measured",
        caption_justify="left",
    )
    table.add_column("target")
    systems = list(rows[0]["results"]) if rows else []
    for system in systems:
        table.add_column(system, justify="right")
    for row in rows:
        cells = []
        for system in systems:
            result = row["results"][system]
            value, met = result["value"], result["met"]
            if value is None:
                cells.append(Text("—", style="dim"))
                continue
            if row["relative_to"]:
                shown = fmt_ratio(value)
            elif row["metric"] == "rate":
                shown = fmt(value, Metric("rate", "", "/s", True))
            else:
                shown = f"{value:,.1f}"
            cells.append(Text(f"{shown} {'✓' if met else '✗'}", style="green" if met else "red"))
        table.add_row(row["goal"], *cells)
    return table


def render(
    console: Console, workloads: Sequence[Workload], systems: Sequence[str], summary: Summary
) -> None:
    for workload in workloads:
        if workload.key in summary:
            console.print(workload_table(workload, summary, systems))
            console.print()
    console.print(goals_table(summary))
