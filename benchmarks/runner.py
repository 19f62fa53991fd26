"""Plan the measurements, run each one in a fresh worker process, collect the outcomes.

Runs are interleaved: repetition 1 runs every (workload, system) pair once, then repetition 2,
and so on, with the system order rotated each repetition, so drift (thermal, noisy
neighbours) spreads over every system instead of landing on whichever ran last.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.systems import System
from benchmarks.worker import MARKER
from benchmarks.workloads import Workload

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Job:
    repetition: int
    workload: str
    system: str
    n: int


@dataclass
class Outcome:
    job: Job
    status: str  # "ok", "unsupported", "unavailable", "error"
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    wall_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self.job), **{k: v for k, v in asdict(self).items() if k != "job"}}


def plan(
    workloads: Sequence[Workload], systems: Sequence[System], repeat: int, quick: bool
) -> tuple[list[Job], list[Outcome]]:
    """The jobs to run, plus an outcome for every pair a system does not support."""
    jobs: list[Job] = []
    skipped: list[Outcome] = []
    for workload in workloads:
        for system in systems:
            reason = system.supports(workload.key)
            if reason is not None:
                job = Job(0, workload.key, system.name, 0)
                skipped.append(Outcome(job, "unsupported", reason=reason))
    for repetition in range(repeat):
        shift = repetition % max(1, len(systems))
        order = [*systems[shift:], *systems[:shift]]
        for workload in workloads:
            if workload.max_repeat is not None and repetition >= workload.max_repeat:
                continue
            for system in order:
                if system.supports(workload.key) is None:
                    n = system.size(workload.key, workload.size(quick))
                    jobs.append(Job(repetition, workload.key, system.name, n))
    return jobs, skipped


def run_job(job: Job, timeout: float) -> Outcome:
    spec = json.dumps({"system": job.system, "workload": job.workload, "n": job.n})
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", spec],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Outcome(job, "error", reason=f"timed out after {timeout:g} s")
    wall = time.perf_counter() - started
    lines = [line for line in completed.stdout.splitlines() if line.startswith(MARKER)]
    if not lines:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return Outcome(
            job, "error", reason=f"worker exited {completed.returncode}: {tail}", wall_seconds=wall
        )
    result = json.loads(lines[-1].removeprefix(MARKER))
    return Outcome(
        job,
        result["status"],
        metrics=result.get("metrics", {}),
        reason=result.get("reason") or result.get("error", ""),
        wall_seconds=wall,
    )


def run(
    jobs: Sequence[Job],
    timeout: float,
    on_start: Callable[[Job], None] = lambda job: None,
    on_done: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Run the jobs in order; a pair found unavailable is not retried in later repetitions."""
    outcomes: list[Outcome] = []
    unavailable: set[tuple[str, str]] = set()
    for job in jobs:
        if (job.workload, job.system) in unavailable:
            on_done(Outcome(job, "skipped"))
            continue
        on_start(job)
        outcome = run_job(job, timeout)
        if outcome.status == "unavailable":
            unavailable.add((job.workload, job.system))
        outcomes.append(outcome)
        on_done(outcome)
    return outcomes
