"""The fleet on PostgresStore with real worker processes (``python -m aevents worker``
on ``tests.integration.fleet_app``, which takes its store from the environment): a
SIGKILLed worker's leases pass to the survivor, and per-key order holds across two
processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest

import aevents

from ..pg import drop_schema, schema_for
from .test_fleet_processes import WAIT, Log, _fleet


@pytest.fixture
def postgres_env(postgres_dsn: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment that points fleet_app at this test's schema; dropped after."""
    schema = schema_for(tmp_path)
    env = {"FLEET_POSTGRES": postgres_dsn, "FLEET_SCHEMA": schema}
    yield env
    drop_schema(postgres_dsn, schema)


def _publish(
    tmp_path: Path, env: dict[str, str], events: Sequence[tuple[str, int, str | None]]
) -> None:
    """Publish from this process, durably, consuming nothing."""
    os.environ.update({"FLEET_LOG": str(tmp_path / "log.txt"), **env})
    from . import fleet_app

    async def main() -> None:
        async with aevents.EventRuntime(
            fleet_app.registry, store=fleet_app.make_store(), consume=False
        ) as runtime:
            for name, n, key in events:
                await runtime.publish(name, payload={"n": n}, key=key)

    anyio.run(main)


def test_a_killed_workers_leases_go_to_the_survivor(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    """SIGKILL one of two workers while it holds deliveries under lease: the other runs
    every one of them (once the lease runs out), with no restart."""
    log = Log(tmp_path / "log.txt")
    _publish(tmp_path, postgres_env, [("fleet:item", n, None) for n in range(60)])
    env = {"FLEET_LEASE": "1", "FLEET_SLEEP": "0.5", "FLEET_WORKERS": "8", "FLEET_BUFFER": "8"}
    with _fleet(tmp_path, "trio", 2, **postgres_env, **env) as fleet:
        victim, survivor = fleet.started

        def in_flight() -> set[int]:
            mine = [
                (what, n)
                for what, who, n, _, pid, _ in log.lines()
                if pid == victim.pid and who == "first"  # "second" of the same n is quick
            ]
            started = {n for what, n in mine if what == "start"}
            return started - {n for what, n in mine if what == "done"}

        log.wait_until(lambda: len(in_flight()) >= 4, "4 deliveries in flight in one worker")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=WAIT)
        lost = in_flight()
        log.wait_until(lambda: set(log.done("first")) >= set(range(60)), "every delivery")
        assert fleet.alive() == [survivor], "the survivor ran it all, with no restart"
        fleet.stop()
        assert survivor.returncode == 0
    reruns = {
        n
        for what, who, n, _, pid, _ in log.lines()
        if what == "done" and who == "first" and n in lost and pid == survivor.pid
    }
    assert reruns == lost, "each delivery in flight at the kill ran again in the survivor"


def test_per_key_order_holds_across_two_processes(
    tmp_path: Path, postgres_env: dict[str, str]
) -> None:
    """8 keys x 25 events run by two worker processes: each key's events run one at a
    time, in publish order, whichever process runs them."""
    log = Log(tmp_path / "log.txt")
    events = [("fleet:keyed", n, f"k{n % 8}") for n in range(200)]
    _publish(tmp_path, postgres_env, events)
    with _fleet(tmp_path, "asyncio", 2, FLEET_LEASE="5", **postgres_env) as fleet:
        log.wait_until(lambda: set(log.done("keyed")) >= set(range(200)), "every delivery")
        fleet.stop()
    pids = {pid for what, _, _, _, pid, _ in log.lines() if what == "done"}
    assert len(pids) == 2, "both processes ran some"
    done_so_far: set[int] = set()
    for what, _, n, key, _, _ in log.lines():
        if what == "start" and n >= 8:
            assert n - 8 in done_so_far, f"event {n} of key {key} started before {n - 8} was done"
        elif what == "done":
            done_so_far.add(n)
