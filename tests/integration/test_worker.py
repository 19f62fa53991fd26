"""``python -m aevents worker`` as a real process: it runs the journal's deliveries, then stops
on SIGTERM (draining) or on a second signal (at once), and refuses what it cannot run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from aevents._event import make_event
from aevents._store import LeasedStore, PostgresStore, RedisStore, SQLiteStore, Store
from tests.pg import drop_schema, schema_for
from tests.services import delete_redis_prefix

pytestmark = pytest.mark.parametrize("backend", ["asyncio", "trio", "uvloop"])

APP = """
import os, time
import anyio
import aevents

OUT = os.environ["WORKER_OUT"]


@aevents.subscribe("work:item")
def record(event: aevents.Event) -> None:
    if event.payload.get("hang"):
        time.sleep(3600)  # a receiver that never returns
    with open(OUT, "a") as out:
        out.write(f"{event.payload['n']} {os.getpid()}\\n")


registry = aevents.default_registry
runtime = aevents.EventRuntime(store=aevents.SQLiteStore(os.environ["WORKER_JOURNAL"]))


def make_runtime() -> aevents.EventRuntime:
    return aevents.EventRuntime(store=aevents.SQLiteStore(os.environ["WORKER_JOURNAL"]))


not_a_runtime = 42
"""


def _journal_with(path: Path, payloads: list[dict[str, object]]) -> None:
    """A journal holding one pending delivery to ``worker_app:record`` per payload."""

    async def write() -> None:
        store = SQLiteStore(str(path))
        await store.open()
        try:
            for payload in payloads:
                await store.append(make_event("work:item", payload, {}), ["worker_app:record"])
        finally:
            await store.close()

    anyio.run(write)


def _worker(tmp_path: Path, backend: str, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "worker_app.py").write_text(APP)
    env = {
        **os.environ,
        "WORKER_OUT": str(tmp_path / "out.txt"),
        "WORKER_JOURNAL": str(tmp_path / "events.db"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "aevents", "worker", *args, "--backend", backend],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen[str]) -> list[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    _, stderr = process.communicate()
    pytest.fail(f"the worker ran {len(lines)} of {count} deliveries; its log:\n{stderr}")


def _wait_for_log(process: subprocess.Popen[str], text: str) -> list[str]:
    assert process.stderr is not None
    seen: list[str] = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return seen
    pytest.fail(f"the worker never logged {text!r}; its log:\n{''.join(seen)}")


def test_worker_runs_the_journal_then_drains_on_sigterm(tmp_path: Path, backend: str) -> None:
    _journal_with(tmp_path / "events.db", [{"n": n} for n in range(50)])
    process = _worker(
        tmp_path,
        backend,
        *("worker_app", "--store", "events.db", "--concurrency", "3", "--start-ahead", "16"),
    )
    started = _wait_for_log(process, "started")
    assert "1 receivers (worker_app:record), 3 at once" in started[-1]
    assert f":{process.pid} started" in started[-1]
    lines = _wait_for_lines(tmp_path / "out.txt", 50, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "SIGTERM received, draining" in stderr
    assert "stopped: 50 delivered, 0 failed, 0 dead-lettered" in stderr
    assert sorted(int(line.split()[0]) for line in lines) == list(range(50))
    assert {line.split()[1] for line in lines} == {str(process.pid)}


def test_a_second_signal_stops_the_worker_at_once(tmp_path: Path, backend: str) -> None:
    _journal_with(tmp_path / "events.db", [{"n": 0, "hang": True}])
    process = _worker(tmp_path, backend, "worker_app:make_runtime")
    _wait_for_log(process, "started")
    time.sleep(0.5)  # let the hanging delivery start
    process.send_signal(signal.SIGTERM)
    _wait_for_log(process, "draining for up to 10.0 s")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "SIGINT received again, stopping now" in stderr
    assert process.returncode == 0, stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["worker_app"], 2, "no --store was given: a worker without a store"),
        (
            ["worker_app:runtime", "--store", "other.db"],
            2,
            "--store: TARGET 'worker_app:runtime' is an EventRuntime, which has its own options",
        ),
        (["worker_app:not_a_runtime"], 1, "TARGET 'worker_app:not_a_runtime' is int"),
        (["worker_app:missing"], 1, "cannot find 'worker_app:missing'"),
        (["./worker_app.py"], 2, "(a module path, not a file)"),
        (["worker_app", "--store", "x.db", "--concurrency", "0"], 2, "at least 1, got '0'"),
        (["worker_app", "--store", "x.db", "--start-ahead", "0"], 2, "at least 1, got '0'"),
        (["worker_app", "--store", "x.db", "--prefix", "p"], 2, "not a journal file"),
        (
            ["worker_app", "--store", "redis://127.0.0.1:1/0", "--schema", "s"],
            2,
            "--schema is for a postgresql:// store",
        ),
        (
            ["worker_app", "--store", "postgresql://127.0.0.1:1/x", "--prefix", "p"],
            2,
            "--prefix is for a redis:// store",
        ),
        (["worker_app", "--prefix", "p"], 2, "--schema and --prefix go with a --store URL"),
        (
            ["worker_app", "--store", "redis://127.0.0.1:1/0", "--prefix", "a{b}"],
            1,
            "RedisStore: prefix must be a non-empty str without braces, got 'a{b}'",
        ),
        (
            ["worker_app:runtime", "--start-ahead", "4"],
            2,
            "--start-ahead: TARGET 'worker_app:runtime' is an EventRuntime",
        ),
    ],
)
def test_the_worker_refuses_what_it_cannot_run(
    tmp_path: Path, backend: str, args: list[str], code: int, message: str
) -> None:
    process = _worker(tmp_path, backend, *args)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert message in stderr


def _store_with(store: Store | LeasedStore, payloads: list[dict[str, object]]) -> None:
    """``store`` holding one delivery to ``worker_app:record`` per payload."""

    async def write() -> None:
        assert isinstance(store, LeasedStore)
        await store.open()
        try:
            events = [
                (make_event("work:item", payload, {}), ["worker_app:record"])
                for payload in payloads
            ]
            await store.publish(events)
        finally:
            await store.close()

    anyio.run(write)


def _run_until_done(tmp_path: Path, backend: str, count: int, *args: str) -> str:
    """Run a worker with ``args`` until it ran ``count`` deliveries; SIGTERM; its log."""
    process = _worker(tmp_path, backend, "worker_app", *args, "--concurrency", "4")
    started = _wait_for_log(process, "started")
    lines = _wait_for_lines(tmp_path / "out.txt", count, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"stopped: {count} delivered, 0 failed, 0 dead-lettered" in stderr
    assert sorted(int(line.split()[0]) for line in lines) == list(range(count))
    return "".join(started) + stderr


def test_a_worker_consumes_a_redis_store_named_by_url(
    tmp_path: Path, backend: str, redis_url: str
) -> None:
    prefix = f"worker-{os.urandom(4).hex()}"
    store = RedisStore(redis_url, prefix=prefix)
    _store_with(store, [{"n": n} for n in range(30)])
    try:
        log = _run_until_done(tmp_path, backend, 30, "--store", redis_url, "--prefix", prefix)
        assert "RedisStore" in log
    finally:
        anyio.run(delete_redis_prefix, redis_url, prefix)


def test_a_worker_consumes_a_postgres_store_named_by_url(
    tmp_path: Path, backend: str, postgres_dsn: str
) -> None:
    schema = schema_for(tmp_path)
    _store_with(PostgresStore(postgres_dsn, schema=schema), [{"n": n} for n in range(30)])
    try:
        log = _run_until_done(tmp_path, backend, 30, "--store", postgres_dsn, "--schema", schema)
        assert "PostgresStore" in log
    finally:
        drop_schema(postgres_dsn, schema)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:sekrit@127.0.0.1:1/0", "journal 'redis://:***@127.0.0.1:1/0': cannot be opened"),
        (
            "postgresql://postgres:sekrit@127.0.0.1:1/test",
            "journal 'postgresql://postgres@127.0.0.1:1/test#aevents': could not connect",
        ),
    ],
)
def test_a_store_that_cannot_be_opened_ends_the_worker_with_one_line(
    tmp_path: Path, backend: str, url: str, message: str
) -> None:
    """Exit 1 with the store's message, never a traceback, and never the password."""
    process = _worker(tmp_path, backend, "worker_app", "--store", url)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert f"python -m aevents worker: {message}" in stderr
    assert "Traceback" not in stderr
    assert "sekrit" not in stderr
