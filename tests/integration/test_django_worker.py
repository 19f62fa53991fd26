"""``manage.py aevents_worker`` on the example project: it runs the journal's deliveries with
Django set up, stops cleanly on SIGTERM, and refuses a project without a store."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from aevents._event import make_event
from aevents._store import SQLiteStore

from .test_django_server import PROJECT, _env, _migrate

pytest.importorskip("django")


def _publish_into(journal: Path, count: int) -> None:
    async def write() -> None:
        store = SQLiteStore(str(journal))
        await store.open()
        try:
            for n in range(count):
                event = make_event("blog:report:requested", {"n": n}, {})
                await store.append(event, ["blog.events:record"])
        finally:
            await store.close()

    anyio.run(write)


def _received(state_dir: Path) -> int:
    database = state_dir / "blog.sqlite3"
    with contextlib.closing(
        sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20)
    ) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM blog_received WHERE receiver = 'record'"
        ).fetchone()
    return int(count)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_aevents_worker_runs_the_projects_receivers(tmp_path: Path, backend: str) -> None:
    _migrate(tmp_path)
    _publish_into(tmp_path / "events.journal", 20)
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "aevents_worker",
            "--concurrency",
            "2",
            "--start-ahead",
            "8",
            "--backend",
            backend,
        ],
        cwd=PROJECT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while _received(tmp_path) < 20 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert _received(tmp_path) == 20, stderr
    assert process.returncode == 0, stderr
    assert "2 at once" in stderr
    assert "stopped: 20 delivered, 0 failed, 0 dead-lettered" in stderr


def test_aevents_worker_refuses_a_project_without_a_store(tmp_path: Path) -> None:
    _migrate(tmp_path)
    (tmp_path / "no_store_settings.py").write_text(
        "from mysite.settings import *  # noqa: F403\n"
        "AEVENTS = {k: v for k, v in AEVENTS.items() if k != 'store'}  # noqa: F405\n"
    )
    env = {**_env(tmp_path), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT)])}
    result = subprocess.run(
        [sys.executable, "manage.py", "aevents_worker", "--settings", "no_store_settings"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "settings.AEVENTS has no 'store'" in result.stderr


@pytest.mark.parametrize("flag", ["--concurrency", "--start-ahead"])
def test_aevents_worker_refuses_a_count_below_one(tmp_path: Path, flag: str) -> None:
    _migrate(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "aevents_worker", flag, "0"],
        cwd=PROJECT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"{flag} must be at least 1, got 0" in result.stderr
