"""The benchmark smoke run that ends ``scripts/test`` says what it checked, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _smoke_command() -> list[str]:
    """The benchmark command of ``scripts/test``, as the script runs it."""
    [line] = [
        line
        for line in (ROOT / "scripts" / "test").read_text().splitlines()
        if "-m benchmarks" in line
    ]
    return line.split()[1:]  # without ".venv/bin/python"


def test_the_smoke_run_prints_one_line_about_what_it_checked() -> None:
    """The smoke run prints one line naming the workloads and systems, and no goal marks."""
    command = _smoke_command()
    assert "--smoke" in command
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("benchmark smoke: 2 of 2 runs (throughput on aevents-asyncio")
    assert "timings are not checked" in lines[0]
    assert "✗" not in result.stdout + result.stderr
    assert "goal" not in (result.stdout + result.stderr).lower()
