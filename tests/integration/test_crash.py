"""At-least-once across crashes: real processes, real SIGKILL, a real SQLite journal."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).with_name("crash_app.py")
WORKERS = 4  # crash_app's EventRuntime(workers=4)
BATCH = 32  # aevents._runtime._DURABLE_BATCH: deliveries a worker records and runs together
IN_FLIGHT = WORKERS * BATCH  # the most deliveries a kill can catch between attempt and done

pytestmark = pytest.mark.parametrize("backend", ["asyncio", "trio"])


def _env(backend: str, keys: int = 0) -> dict[str, str]:
    return {**os.environ, "AEVENTS_BACKEND": backend, "CRASH_KEYS": str(keys)}


def _run(
    backend: str, journal: Path, log: Path, *args: str, keys: int = 0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APP), str(journal), str(log), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_env(backend, keys),
    )


def _publish_and_kill(
    backend: str,
    journal: Path,
    log: Path,
    count: int,
    start: int,
    kill_after: int,
    keys: int = 0,
) -> None:
    """Publish `count` events and SIGKILL the process once `kill_after` were acknowledged."""
    process = subprocess.Popen(
        [sys.executable, str(APP), str(journal), str(log), "publish", str(count), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(backend, keys),
    )
    assert process.stdout is not None
    acknowledged = 0
    while acknowledged < kill_after and process.stdout.readline().startswith("ack"):
        acknowledged += 1
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stdout.close()


def _read(log: Path) -> tuple[set[str], dict[str, collections.Counter[str]]]:
    acknowledged: set[str] = set()
    done: dict[str, collections.Counter[str]] = {
        "first": collections.Counter(),
        "second": collections.Counter(),
    }
    for line in log.read_text().splitlines():
        kind, *rest = line.split()
        if kind == "ack":
            acknowledged.add(rest[0])
        elif kind == "done":
            done[rest[0]][rest[1]] += 1
    return acknowledged, done


def test_every_acknowledged_event_is_delivered_after_a_kill(backend: str, tmp_path: Path) -> None:
    """SIGKILL mid-stream, restart: each acknowledged event reaches both receivers."""
    journal, log = tmp_path / "events.db", tmp_path / "log"
    _publish_and_kill(backend, journal, log, count=5000, start=0, kill_after=700)
    replay = _run(backend, journal, log, "replay")
    assert replay.returncode == 0, replay.stderr
    acknowledged, done = _read(log)
    assert len(acknowledged) >= 700
    for receiver in ("first", "second"):
        missing = acknowledged - set(done[receiver])
        assert not missing, f"{receiver} never got {len(missing)} acknowledged events"
        reruns = sum(times - 1 for times in done[receiver].values())
        assert reruns <= IN_FLIGHT


def test_a_graceful_exit_runs_each_delivery_once_and_leaves_nothing(
    backend: str, tmp_path: Path
) -> None:
    """A clean shutdown delivers exactly once; the next start finds nothing pending."""
    journal, log = tmp_path / "events.db", tmp_path / "log"
    first = _run(backend, journal, log, "publish", "300")
    assert first.returncode == 0, first.stderr
    again = _run(backend, journal, log, "replay")
    assert again.returncode == 0, again.stderr
    assert "delivered=0" in again.stdout
    acknowledged, done = _read(log)
    assert len(acknowledged) == 300
    for receiver in ("first", "second"):
        assert set(done[receiver]) == acknowledged
        assert set(done[receiver].values()) == {1}


def test_a_receiver_that_kills_the_process_ends_as_a_dead_letter(
    backend: str, tmp_path: Path
) -> None:
    """Each attempt is recorded before it runs, so a fatal receiver cannot crash-loop."""
    journal, log = tmp_path / "events.db", tmp_path / "log"
    runs = [_run(backend, journal, log, "crashloop")]
    while runs[-1].returncode != 0 and len(runs) < 8:
        runs.append(_run(backend, journal, log, "replay"))
    assert [run.returncode for run in runs] == [-signal.SIGKILL] * 3 + [0]
    letters = _run(backend, journal, log, "letters")
    assert "killer 3 aevents.AttemptsExhausted" in letters.stdout


def test_random_kills_never_lose_an_acknowledged_event(backend: str, tmp_path: Path) -> None:
    """Repeated kills at random moments, replays included: nothing acknowledged is lost."""
    journal, log = tmp_path / "events.db", tmp_path / "log"
    chooser = random.Random(20261124)
    kills = 6
    for round_number in range(kills):
        _publish_and_kill(
            backend,
            journal,
            log,
            count=400,
            start=round_number * 1000,
            kill_after=chooser.randrange(0, 400),
        )
    final = _run(backend, journal, log, "replay")
    assert final.returncode == 0, final.stderr
    acknowledged, done = _read(log)
    for receiver in ("first", "second"):
        assert acknowledged <= set(done[receiver])
        reruns = sum(times - 1 for times in done[receiver].values())
        assert reruns <= IN_FLIGHT * kills


def test_each_key_stays_in_order_across_kills_and_replays(backend: str, tmp_path: Path) -> None:
    """Keyed events: within every run, each receiver completes each key in publish order."""
    journal, log = tmp_path / "events.db", tmp_path / "log"
    for round_number in range(3):
        _publish_and_kill(
            backend, journal, log, count=600, start=round_number * 1000, kill_after=250, keys=5
        )
    # The restart replays what is pending while it publishes newer events of the same keys.
    final = _run(backend, journal, log, "resume", "100", "9000", keys=5)
    assert final.returncode == 0, final.stderr
    acknowledged, done = _read(log)
    runs: list[dict[tuple[str, str], list[int]]] = []
    for line in log.read_text().splitlines():
        kind, *rest = line.split()
        if kind == "started":
            runs.append(collections.defaultdict(list))
        elif kind == "done":
            receiver, _, key, number = rest
            runs[-1][receiver, key].append(int(number))
    assert len(runs) == 4
    for index, run in enumerate(runs):
        for (receiver, key), numbers in run.items():
            assert numbers == sorted(set(numbers)), f"run {index}: {receiver} {key} out of order"
    assert {key for _, key in runs[-1]} == {f"k{n}" for n in range(5)}
    for receiver in ("first", "second"):
        assert acknowledged <= set(done[receiver])
