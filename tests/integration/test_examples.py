"""The README's quick start: the demo runs, as a real process, on every backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_the_demo_runs_and_shows_every_feature(backend: str) -> None:
    """examples/demo.py exits 0 and prints what each part of the tour promises."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"demo on {backend}" in out
    assert "welcome mail for user 1" in out
    assert "welcome mail for user 2" in out  # published from a thread
    assert "audit user:account:created (off the loop: True)" in out
    assert "typo caught: catalog '__main__' has no event 'ACOUNT_CREATED'" in out
    assert "payload['score']: float nan is not JSON" in out
    assert "verified ada@example.com on attempt 3" in out
    assert "retries of verify_email saw attempts [1, 2, 3]" in out
    assert out.count("dead letter: __main__:broken_crm_sync on user:welcome:sent") == 2
    assert "stats: published=5 delivered=8 failed=4 retried=2 dead=2" in out
    assert "log WARNING receiver '__main__:verify_email' failed" in out
    assert "Traceback" not in out + result.stderr
