"""Reclaim latency: how soon the deliveries of a SIGKILLed worker run again elsewhere.

Three ``python -m aevents worker`` processes share one ``SQLiteStore``. Their
receiver takes ``--sleep`` seconds, so each worker holds many deliveries at
once. When one of them has at least ``--in-flight`` deliveries started and not
finished, it gets SIGKILL. For each of those deliveries, the latency is the
time from the kill to its next start in a survivor. The script prints the
median and the maximum over all rounds, with the lease, for both ways a lease
passes:

* ``reclaim_dead_pids=True`` (the default on one host): a survivor sees that
  the dead consumer's process is gone and takes its leases at its next claim;
* ``reclaim_dead_pids=False`` (what other hosts, and PostgreSQL or Redis, do):
  the leases pass when they run out, ``lease`` seconds after the last renewal.

    python scripts/bench_reclaim.py
    python scripts/bench_reclaim.py --lease 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio

import aevents

_APP = textwrap.dedent(
    """
    import os, time
    import anyio
    import aevents

    registry = aevents.Registry()
    _log = os.open(os.environ["RECLAIM_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _sleep = float(os.environ["RECLAIM_SLEEP"])

    async def slow(event):
        os.write(_log, f"start {event.payload['n']} {os.getpid()} {time.time()}\\n".encode())
        await anyio.sleep(_sleep)
        os.write(_log, f"done {event.payload['n']} {os.getpid()} {time.time()}\\n".encode())

    registry.subscribe("reclaim:item", slow, id="reclaim:slow")

    def make_runtime():
        store = aevents.SQLiteStore(
            os.environ["RECLAIM_STORE"],
            reclaim_dead_pids=os.environ["RECLAIM_DEAD_PIDS"] == "1",
        )
        return aevents.EventRuntime(
            registry,
            store=store,
            lease=float(os.environ["RECLAIM_LEASE"]),
            workers=32,
            buffer=32,
        )
    """
)


def _lines(log: Path) -> list[tuple[str, int, int, float]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        what, n, pid, at = line.split()
        rows.append((what, int(n), int(pid), float(at)))
    return rows


def _publish(store: str, events: int) -> None:
    """Publish from here, routed as the workers route (the receiver id is chosen at publish)."""
    registry = aevents.Registry()

    async def slow(event: aevents.Event) -> None:  # never runs here: consume=False
        raise AssertionError(event)

    registry.subscribe("reclaim:item", slow, id="reclaim:slow")

    async def main() -> None:
        runtime = aevents.EventRuntime(registry, store=aevents.SQLiteStore(store), consume=False)
        async with runtime:
            await runtime.publish_many("reclaim:item", [{"n": n} for n in range(events)])

    anyio.run(main)


def _round(args: argparse.Namespace, dead_pids: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / "reclaim_app.py").write_text(_APP)
        store, log = str(folder / "events.db"), folder / "log.txt"
        _publish(store, args.events)
        env = {
            **os.environ,
            "RECLAIM_LOG": str(log),
            "RECLAIM_STORE": store,
            "RECLAIM_SLEEP": str(args.sleep),
            "RECLAIM_LEASE": str(args.lease),
            "RECLAIM_DEAD_PIDS": "1" if dead_pids else "0",
        }
        command = [
            *(sys.executable, "-m", "aevents", "worker", "reclaim_app:make_runtime"),
            *("--app-dir", directory, "--log-level", "warning"),
        ]
        workers = [subprocess.Popen(command, env=env) for _ in range(3)]
        try:
            victim = workers[0]

            def in_flight() -> set[int]:
                mine = [(what, n) for what, n, pid, _ in _lines(log) if pid == victim.pid]
                started = {n for what, n in mine if what == "start"}
                return started - {n for what, n in mine if what == "done"}

            deadline = time.monotonic() + 60
            while len(in_flight()) < args.in_flight:
                if time.monotonic() > deadline:
                    raise SystemExit("the victim never had enough deliveries in flight")
                time.sleep(0.005)
            killed_at = time.time()
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            lost = in_flight()
            again: dict[int, float] = {}
            deadline = time.monotonic() + 60 + args.lease
            while len(again) < len(lost):
                if time.monotonic() > deadline:
                    raise SystemExit("the lost deliveries did not run again")
                for what, n, pid, at in _lines(log):
                    if what == "start" and n in lost and pid != victim.pid and n not in again:
                        again[n] = at
                time.sleep(0.01)
            return [at - killed_at for at in again.values()]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGKILL)
                worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lease", type=float, default=2.0, help="seconds")
    parser.add_argument("--sleep", type=float, default=0.5, help="each receiver's seconds")
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"3 worker processes, lease {args.lease:g} s, receivers of {args.sleep:g} s, "
        f"SIGKILL with {args.in_flight}+ in flight, {args.rounds} rounds"
    )
    print(f"{'reclaim_dead_pids':<18} {'lost':>5} {'median s':>9} {'max s':>7} {'max/lease':>10}")
    for dead_pids in (True, False):
        latencies: list[float] = []
        for _ in range(args.rounds):
            latencies += _round(args, dead_pids)
        median, worst = statistics.median(latencies), max(latencies)
        print(
            f"{dead_pids!s:<18} {len(latencies):>5} {median:>9.3f} {worst:>7.3f}"
            f" {worst / args.lease:>10.2f}"
        )


if __name__ == "__main__":
    main()
