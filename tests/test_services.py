"""The fixtures for PostgreSQL and Redis: skipped with one line saying how to enable them,
or failed when ``AEVENTS_REQUIRE_SERVICES=1`` (as in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
def test_needs_postgres(postgres_dsn):
    assert postgres_dsn

def test_needs_postgres_too(postgres_dsn):
    assert postgres_dsn

def test_needs_redis(redis_url):
    assert redis_url
"""


def run_probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AEVENTS_")}
    # Port 9 (discard) is closed on this machine: both servers are "down".
    environ |= {
        "AEVENTS_POSTGRES_DSN": "postgresql://postgres:s3cret@127.0.0.1:9/test",
        "AEVENTS_REDIS_URL": "redis://127.0.0.1:9/0",
        **env,
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_probe.py"),
        ],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_server_skips_with_one_line_each(tmp_path: Path) -> None:
    result = run_probe(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 skipped" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("aevents: tests")]
    assert lines == [
        "aevents: tests needing PostgreSQL were skipped: PostgreSQL is not reachable at "
        "postgresql://postgres:***@127.0.0.1:9/test: start it, or set AEVENTS_POSTGRES_DSN "
        "to its URL (with AEVENTS_REQUIRE_SERVICES=1 these tests fail instead)",
        "aevents: tests needing Redis were skipped: Redis is not reachable at "
        "redis://127.0.0.1:9/0: start it, or set AEVENTS_REDIS_URL to its URL "
        "(with AEVENTS_REQUIRE_SERVICES=1 these tests fail instead)",
    ]
    assert "s3cret" not in result.stdout + result.stderr


def test_a_missing_server_fails_when_required(tmp_path: Path) -> None:
    result = run_probe(tmp_path, AEVENTS_REQUIRE_SERVICES="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 errors" in result.stdout or "3 failed" in result.stdout, result.stdout
    assert "s3cret" not in result.stdout + result.stderr
