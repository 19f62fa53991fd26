"""One journal, many real processes: uvicorn --workers 4, worker processes killed with SIGKILL.

The app is ``fleet_app.py``; every receiver appends ``start``/``done`` lines
to one log, which is all the tests read. Publishing from the test process goes
through an ``EventRuntime(consume=False)`` on the same journal, as a web
process that leaves the receivers to workers would.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

import aevents

from .servers import ROOT, serve

WAIT = 90.0  # seconds: a bound on every wait, never a synchronisation


class Log:
    """The receivers' log, parsed: (what, receiver, n, key, pid, attempt) per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, int, str, int, int]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            what, receiver, n, key, pid, attempt = line.split()
            rows.append((what, receiver, int(n), key, int(pid), int(attempt)))
        return rows

    def done(self, receiver: str) -> collections.Counter[int]:
        return collections.Counter(
            n for what, who, n, *_ in self.lines() if what == "done" and who == receiver
        )

    def wait_until(self, condition: object, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.05)
        pytest.fail(f"{what} did not happen within {WAIT} s")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FLEET_JOURNAL": str(tmp_path / "events.db"),
        "FLEET_LOG": str(tmp_path / "log.txt"),
        **extra,
    }


def _publish(tmp_path: Path, events: Sequence[tuple[str, int, str | None]]) -> None:
    """Publish from this process, durably, consuming nothing."""
    os.environ.update(_env(tmp_path))
    from . import fleet_app

    async def main() -> None:
        runtime = aevents.EventRuntime(
            fleet_app.registry,
            store=aevents.SQLiteStore(str(tmp_path / "events.db")),
            consume=False,
        )
        async with runtime:
            for name, n, key in events:
                await runtime.publish(name, payload={"n": n}, key=key)

    anyio.run(main)


class Fleet:
    """Worker processes (``python -m aevents worker``) on the test's journal."""

    def __init__(self, tmp_path: Path, backend: str, **env: str) -> None:
        self.tmp_path, self.backend, self.env = tmp_path, backend, env
        self.started: list[subprocess.Popen[str]] = []
        self.logs: dict[int, Path] = {}

    def start(self) -> subprocess.Popen[str]:
        log = self.tmp_path / f"worker-{len(self.started)}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "aevents", "worker"),
                    *("tests.integration.fleet_app:make_runtime", "--backend", self.backend),
                ],
                cwd=ROOT,
                env=_env(self.tmp_path, **self.env),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                text=True,
            )
        self.started.append(process)
        self.logs[process.pid] = log
        return process

    def alive(self) -> list[subprocess.Popen[str]]:
        return [process for process in self.started if process.poll() is None]

    def stop(self) -> None:
        """SIGTERM every live worker once it is consuming; each must drain and exit 0."""
        deadline = time.monotonic() + WAIT
        for process in self.alive():
            while "consuming from the store" not in self.logs[process.pid].read_text():
                assert process.poll() is None, self.logs[process.pid].read_text()
                assert time.monotonic() < deadline, "a worker never started consuming"
                time.sleep(0.02)
        for process in self.alive():
            process.send_signal(signal.SIGTERM)
        for process in self.started:
            process.wait(timeout=WAIT)


@contextmanager
def _fleet(tmp_path: Path, backend: str, count: int, **env: str) -> Iterator[Fleet]:
    """``count`` worker processes; whatever is left is killed when the block ends."""
    fleet = Fleet(tmp_path, backend, **env)
    for _ in range(count):
        fleet.start()
    try:
        yield fleet
    finally:
        for process in fleet.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=WAIT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_command(server: str, port: int) -> list[str]:
    """Four worker processes of one server on ``port``: uvicorn on asyncio or uvloop,
    Hypercorn on trio."""
    if server == "hypercorn-trio":
        return [
            *(sys.executable, "-m", "hypercorn", "tests.integration.fleet_app:app"),
            *("--bind", f"127.0.0.1:{port}", "--workers", "4", "--worker-class", "trio"),
        ]
    loop = server.removeprefix("uvicorn-")
    return [
        *(sys.executable, "-m", "uvicorn", "tests.integration.fleet_app:app"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "4", "--loop", loop),
    ]


def _consumers(tmp_path: Path) -> int:
    """The live consumers of the journal; 0 while the servers' processes still create it
    (a reader can find the file before its first transaction gives it aevents' id)."""

    async def count() -> int:
        store = aevents.SQLiteStore(str(tmp_path / "events.db"), read_only=True)
        try:
            await store.open()
        except aevents.StoreError:
            return 0
        try:
            return len(await store.consumers())
        finally:
            await store.close()

    return anyio.run(count)


@pytest.mark.parametrize("server", ["uvicorn-asyncio", "uvicorn-uvloop", "hypercorn-trio"])
def test_four_server_workers_share_one_journal(tmp_path: Path, server: str) -> None:
    """4,000 requests to four worker processes of one server, each publishing one event to
    two fleet receivers and one process receiver: each fleet delivery ran exactly once,
    in the processes that published (a publisher takes its own deliveries first, and the
    server decides which worker gets each of the 16 keep-alive connections, so a worker
    may publish nothing), and each process ran the process receiver once per event."""
    port = _free_port()
    log = Log(tmp_path / "log.txt")
    with serve(_server_command(server, port), "", _env(tmp_path)) as running:
        deadline = time.monotonic() + WAIT
        while (tmp_path / "events.db").exists() is False or _consumers(tmp_path) < 4:
            assert time.monotonic() < deadline, running.output
            assert running.process.poll() is None, running.output
            time.sleep(0.1)

        publishers: collections.Counter[int] = collections.Counter()

        def publish(chunk: range) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client:
                for n in chunk:
                    response = client.get("/publish", params={"n": n})
                    response.raise_for_status()
                    publishers[int(response.headers["x-pid"])] += 1

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(publish, [range(start, 4000, 16) for start in range(16)]))

        def local_runs() -> collections.Counter[int]:
            return collections.Counter(
                pid for what, who, *_, pid, _ in log.lines() if what == "done" and who == "local"
            )

        log.wait_until(
            lambda: (
                len(log.done("first")) == 4000
                and len(log.done("second")) == 4000
                and sorted(local_runs().values()) == [4000] * 4
            ),
            "every delivery",
        )
        assert running.terminate() == 0, running.output
    for receiver in ("first", "second"):
        done = log.done(receiver)
        assert set(done) == set(range(4000))
        assert set(done.values()) == {1}, "a delivery ran twice with no process killed"
    fleet_pids = collections.Counter(
        pid for what, who, *_, pid, _ in log.lines() if what == "done" and who != "local"
    )
    assert set(publishers) <= set(fleet_pids), f"publishers {publishers}, ran {fleet_pids}"
    assert len(fleet_pids) > 1, f"the deliveries were shared: {fleet_pids}"
    for pid in fleet_pids:
        runs = collections.Counter(
            n
            for what, who, n, _, p, _ in log.lines()
            if what == "done" and who == "local" and p == pid
        )
        assert set(runs) == set(range(4000)), f"process {pid} ran every event"
        assert set(runs.values()) == {1}, f"process {pid} ran each event once"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_killed_workers_leases_go_to_the_survivors(tmp_path: Path, backend: str) -> None:
    """SIGKILL one of three workers with 32+ deliveries leased: the other two run them, live."""
    log = Log(tmp_path / "log.txt")
    _publish(tmp_path, [("fleet:item", n, None) for n in range(600)])
    # A buffer of 48 per process: each claims what it can run at once, so the work is
    # spread over the three (with the default buffer the first to claim takes it all).
    env = {"FLEET_LEASE": "2", "FLEET_SLEEP": "1", "FLEET_WORKERS": "48", "FLEET_BUFFER": "48"}
    with _fleet(tmp_path, backend, 3, **env) as fleet:
        victim, *survivors = fleet.started

        def in_flight() -> set[int]:
            mine = [
                (what, n)
                for what, who, n, _, pid, _ in log.lines()
                if pid == victim.pid and who == "first"  # "second" of the same n is done at once
            ]
            return {n for what, n in mine if what == "start"} - {
                n for what, n in mine if what == "done"
            }

        log.wait_until(lambda: len(in_flight()) >= 32, "32 deliveries in flight in one worker")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=WAIT)
        lost = in_flight()
        log.wait_until(lambda: set(log.done("first")) >= set(range(600)), "every delivery")
        assert fleet.alive() == survivors, "the survivors ran it all, with no restart"
        fleet.stop()
        assert [process.returncode for process in survivors] == [0, 0]
    reruns = [
        n
        for what, who, n, _, pid, attempt in log.lines()
        if what == "start" and who == "first" and n in lost and pid != victim.pid
    ]
    assert set(reruns) == lost, "each delivery in flight at the kill ran again in a survivor"
    assert len(reruns) >= len(lost) >= 32


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_per_key_order_survives_kills_and_handovers(tmp_path: Path, backend: str) -> None:
    """100 keys x 50 events, workers SIGKILLed at random and restarted: each key stays in order."""
    log = Log(tmp_path / "log.txt")
    events = [("fleet:keyed", n, f"k{n % 100}") for n in range(5000)]
    _publish(tmp_path, events)
    rng = random.Random(15)
    with _fleet(tmp_path, backend, 3, FLEET_LEASE="2") as fleet:
        for _ in range(4):
            time.sleep(rng.uniform(0.3, 1.0))
            victim = rng.choice(fleet.alive())
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=WAIT)
            fleet.start()  # a process manager restarts it
        log.wait_until(lambda: set(log.done("keyed")) >= set(range(5000)), "every delivery")
        fleet.stop()
    done_so_far: set[int] = set()
    for what, _, n, key, _, _ in log.lines():
        if what == "start" and n >= 100:
            assert n - 100 in done_so_far, (
                f"event {n} of key {key} started before {n - 100} was done"
            )
        elif what == "done":
            done_so_far.add(n)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_poison_delivery_ends_as_one_dead_letter(tmp_path: Path, backend: str) -> None:
    """A receiver that kills its process on every attempt: three attempts, then one dead letter."""
    log = Log(tmp_path / "log.txt")
    _publish(tmp_path, [("fleet:poison", 0, None)] + [("fleet:item", n, None) for n in range(200)])
    with _fleet(tmp_path, backend, 3, FLEET_LEASE="1") as fleet:
        deadline = time.monotonic() + WAIT
        while len(log.done("first")) < 200 or len(log.done("second")) < 200:
            assert time.monotonic() < deadline, "the fleet stopped going"
            for _ in range(3 - len(fleet.alive())):
                fleet.start()  # a process manager restarts what dies
            time.sleep(0.05)
        fleet.stop()
    died = [process.returncode for process in fleet.started if process.returncode != 0]
    assert died == [17, 17, 17], "the poison killed one process per attempt"

    async def letters() -> list[aevents.DeadLetter]:
        store = aevents.SQLiteStore(str(tmp_path / "events.db"))
        async with aevents.EventRuntime(store=store, consume=False) as runtime:
            return await runtime.dead_letters()

    attempts = [pid for what, who, *_, pid, _ in log.lines() if what == "start" and who == "poison"]
    assert len(attempts) == 3, attempts
    assert len(set(attempts)) == 3, "each attempt ran in another process"
    (letter,) = anyio.run(letters)
    assert letter.receiver_id == "fleet:poison"
