"""`python -m benchmarks`: choose workloads and systems, run, print the tables, write JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import describe, source_digest
from benchmarks.payload import describe as describe_payload
from benchmarks.runner import ROOT, Job, Outcome, plan, run
from benchmarks.summary import evaluate_goals, summarize
from benchmarks.systems import BASELINE, SYSTEMS
from benchmarks.workloads import WORKLOADS

RESULTS = Path(__file__).resolve().parent / "results"


def _choose(raw: str | None, known: Sequence[str], what: str) -> list[str]:
    if not raw:
        return list(known)
    chosen = [item.strip() for item in raw.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(known)}")
    return [item for item in known if item in chosen]  # table order


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark aevents against its floors and peers.",
    )
    parser.add_argument("--workloads", help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    parser.add_argument("--systems", help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions per pair (default 5; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--output", type=Path, help="JSON path (default benchmarks/results/…)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--list", action="store_true", help="list workloads and systems, exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check that the chosen pairs run and account for every delivery; print one line, "
        "no tables, no JSON (implies --quick --repeat 1)",
    )
    return parser.parse_args(argv)


def list_all() -> None:
    print("workloads:")
    for workload in WORKLOADS.values():
        print(f"  {workload.key:<15} {workload.title} (n={workload.full:,})")
    print("systems:")
    for system in SYSTEMS.values():
        print(f"  {system.name:<20} {system.description}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        list_all()
        return 0
    if args.smoke:
        return smoke(args)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from benchmarks.report import render

    workloads = [WORKLOADS[key] for key in _choose(args.workloads, list(WORKLOADS), "workloads")]
    system_names = _choose(args.systems, list(SYSTEMS), "systems")
    systems = [SYSTEMS[name] for name in system_names]
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    timeout = args.timeout or (120.0 if args.quick else 600.0)
    console = Console(width=None if sys.stdout.isatty() else 200)
    jobs, skipped = plan(workloads, systems, repeat, args.quick)
    started_at = dt.datetime.now(dt.UTC)
    # The code measured is the code at the start: an edit during a long run must not
    # be recorded as what was measured.
    environment = describe(ROOT)
    console.print(
        f"[bold]aevents benchmarks[/bold]: {len(workloads)} workloads x {len(systems)} systems, "
        f"{repeat} repetition(s), {len(jobs)} measurements"
        f"{' (quick sizes)' if args.quick else ''}"
    )
    started = time.perf_counter()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.no_progress,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=len(jobs))
        last_step: list[tuple[int, str]] = []

        def on_start(job: Job) -> None:
            step = (job.repetition, job.workload)
            progress.update(
                task,
                description=f"rep {job.repetition + 1}/{repeat} · {job.workload} · {job.system}",
            )
            if not console.is_terminal and not args.no_progress and last_step != [step]:
                # no live bar in a log file: one line per (repetition, workload) instead
                last_step[:] = [step]
                elapsed = time.perf_counter() - started
                console.print(
                    f"[{elapsed:6.0f} s] rep {job.repetition + 1}/{repeat} · {job.workload}"
                )

        def on_done(outcome: Outcome) -> None:
            if outcome.status == "error":
                progress.console.print(
                    f"[red]error[/red] {outcome.job.workload} · {outcome.job.system}: "
                    f"{outcome.reason}"
                )
            progress.advance(task)

        outcomes = run(jobs, timeout, on_start, on_done)
    summary = summarize(
        [*skipped, *outcomes], {workload.key: workload.size(args.quick) for workload in workloads}
    )
    console.print()
    render(console, workloads, system_names, summary)
    errors = [outcome for outcome in outcomes if outcome.status == "error"]
    if source_digest(ROOT / "aevents") != environment["aevents_source_sha256"]:
        environment["aevents_source_changed_during_run"] = True
        console.print(
            "[bold yellow]aevents' source changed during the run: the workers that "
            "started after the change measured other code[/bold yellow]"
        )
    document = _document(
        args,
        repeat,
        started_at,
        time.perf_counter() - started,
        workloads,
        system_names,
        outcomes,
        summary,
        environment,
    )
    output = args.output or RESULTS / f"{started_at:%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    console.print(f"\nresults: {output}  ({time.perf_counter() - started:.0f} s)")
    if errors:
        console.print(f"[bold red]{len(errors)} measurement(s) failed[/bold red]")
        return 1
    return 0


def smoke(args: argparse.Namespace) -> int:
    """Run each chosen (workload, system) pair once at quick sizes; report in one line.

    A measurement counts only once its system accounted for every expected
    delivery, so this checks that the suite and its adapters work. It checks no
    timing.
    """
    workloads = [WORKLOADS[key] for key in _choose(args.workloads, list(WORKLOADS), "workloads")]
    systems = [SYSTEMS[name] for name in _choose(args.systems, list(SYSTEMS), "systems")]
    jobs, _ = plan(workloads, systems, 1, True)
    outcomes = run(jobs, args.timeout or 120.0, lambda job: None, lambda outcome: None)
    errors = [outcome for outcome in outcomes if outcome.status == "error"]
    for outcome in errors:
        print(f"error: {outcome.job.workload} on {outcome.job.system}: {outcome.reason}")
    checked = len(outcomes) - len(errors)
    print(
        f"benchmark smoke: {checked} of {len(jobs)} runs ("
        f"{', '.join(workload.key for workload in workloads)} on "
        f"{', '.join(system.name for system in systems)}, quick sizes) delivered every event; "
        "timings are not checked"
    )
    return 1 if errors or not jobs else 0


def _document(
    args: argparse.Namespace,
    repeat: int,
    started_at: dt.datetime,
    seconds: float,
    workloads: Sequence[Any],
    systems: Sequence[str],
    outcomes: Sequence[Outcome],
    summary: dict[str, Any],
    environment: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": 1,
        "started_at": started_at.isoformat(),
        "seconds": round(seconds, 1),
        "command": ["python", "-m", "benchmarks", *sys.argv[1:]],
        "options": {"quick": args.quick, "repeat": repeat, "baseline": BASELINE},
        **environment,
        "payload": describe_payload(),
        "workloads": {
            workload.key: {
                "title": workload.title,
                "description": workload.description,
                "size": workload.size(args.quick),
                "max_repeat": workload.max_repeat,
                "metrics": [
                    {
                        "key": m.key,
                        "label": m.label,
                        "unit": m.unit,
                        "higher_is_better": m.higher_is_better,
                    }
                    for m in workload.metrics
                ],
            }
            for workload in workloads
        },
        "systems": {
            name: {
                "family": SYSTEMS[name].family,
                "description": SYSTEMS[name].description,
                "semantics": vars(SYSTEMS[name].semantics),
            }
            for name in systems
        },
        "summary": summary,
        "goals": evaluate_goals(summary),
        "runs": [outcome.as_json() for outcome in outcomes],
    }
