"""RedisStore under a fleet of real processes (``tests.redis_fleet_worker``): a consumer
SIGKILLed mid-batch, exactly once across four processes and 100k events, poison
receivers, and per-key order across a handover. Each test has its own key prefix,
deleted afterwards; every wait is bounded."""

from __future__ import annotations

import collections
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest

import aevents
from aevents._event import make_event
from aevents._fleet import POLL_MAX
from aevents._store._redis import RedisStore

from .redis_fleet_worker import LEASE
from .services import delete_redis_prefix

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(2 * 60)]  # beyond every wait (WAIT)

ROOT = Path(__file__).parent.parent
WAIT = 60.0  # seconds: a bound on every wait, never a synchronisation


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """asyncio and trio, here and in the worker processes (uvloop changes nothing the
    store does: its own thread runs the Redis client)."""
    backend: str = request.param
    return backend


@pytest.fixture
async def prefix(redis_url: str, anyio_backend: str) -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    name = "aevents-fleet-" + os.urandom(6).hex()
    yield name
    await delete_redis_prefix(redis_url, name)


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    """An open store on this test's prefix, for publishing and checking."""
    opened = RedisStore(redis_url, prefix=prefix, retention=None)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


class Workers:
    """Processes of ``tests.redis_fleet_worker`` on the test's backend. Their stderr goes
    to files, printed at the end (pytest shows it when the test fails); what is left
    running then gets SIGTERM, and SIGKILL if it does not exit in time."""

    def __init__(self, url: str, prefix: str, backend: str, directory: Path) -> None:
        self.url, self.prefix, self.backend, self.directory = url, prefix, backend, directory
        self.processes: list[anyio.abc.Process] = []
        self.logs: list[Path] = []
        self.ready: set[int] = set()  # pids that printed ready

    async def start(self, mode: str, *, ready: bool = True) -> anyio.abc.Process:
        """Start a worker; with ``ready``, return once it consumes."""
        path = self.directory / f"worker-{len(self.logs)}-{mode}.log"
        self.logs.append(path)
        with path.open("wb") as stderr:
            process = await anyio.open_process(
                [
                    *(sys.executable, "-m", "tests.redis_fleet_worker"),
                    *(self.url, self.prefix, self.backend, mode),
                ],
                cwd=ROOT,
                stderr=stderr,
            )
        self.processes.append(process)
        if ready:
            await self._until_ready(process)
        return process

    async def _until_ready(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        with anyio.fail_after(WAIT):
            line = await process.stdout.receive()
        assert line.startswith(b"ready"), line
        self.ready.add(process.pid)

    async def stop(self, process: anyio.abc.Process) -> bytes:
        """SIGTERM ``process`` once it consumes (before, SIGTERM would end it at once);
        return what it printed after ``ready`` once it exited 0."""
        assert process.stdout is not None
        if process.pid not in self.ready:
            await self._until_ready(process)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(WAIT):
            out = b"".join([chunk async for chunk in process.stdout])
            assert await process.wait() == 0, self.logs[self.processes.index(process)]
        return out

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(15):
                for process in self.processes:
                    await process.wait()
            for process in self.processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await process.aclose()
        for process, path in zip(self.processes, self.logs, strict=True):
            print(f"--- {path.name} (pid {process.pid}) ---\n{path.read_text()}")


@pytest.fixture
async def workers(
    redis_url: str, prefix: str, anyio_backend: str, tmp_path: Path
) -> AsyncIterator[Workers]:
    started = Workers(redis_url, prefix, anyio_backend, tmp_path)
    try:
        yield started
    finally:
        await started.close()


class Step:
    """One line of the workers' log: a receiver's ``start`` or ``done`` of event ``n``."""

    def __init__(self, line: bytes) -> None:
        what, n, key, pid, at = line.decode().split()
        self.what, self.n, self.key, self.pid, self.at = what, int(n), key, int(pid), float(at)

    def __repr__(self) -> str:
        return f"{self.what} {self.n} {self.key} {self.pid} {self.at:.3f}"


async def steps(store: RedisStore) -> list[Step]:
    """The log of every worker so far, in the one order Redis appended it."""
    raw = await store._call(lambda c: c.lrange(store.keys.base + ":log", 0, -1), "read")
    return [Step(line) for line in raw]


async def until(condition: Any, what: str, *, within: float = WAIT) -> None:
    """Poll ``condition`` (an async callable) until it is true, for ``within`` seconds."""
    with anyio.move_on_after(within):
        while not await condition():  # noqa: ASYNC110 (polls other processes through Redis)
            await anyio.sleep(0.02)
        return
    pytest.fail(f"{what} did not happen within {within} s")


# -- 1. kill -9 of one of three consumers mid-batch ----------------------------------------

# What a reclaim may take beyond its lease and one claim poll: the claim script, the
# start script and the log write, on a small machine shared with other work.
ROUND_TRIPS = 0.5


async def test_a_consumer_killed_mid_batch_has_its_deliveries_reclaimed_within_lease_and_poll(
    store: RedisStore, workers: Workers
) -> None:
    """kill -9 of one of three consumer processes while it holds a batch (four running,
    four claimed but not started): the other two run each of them, the first start no
    later than its lease (``min_idle``) plus one claim poll (``POLL_MAX``) after the kill,
    and not before the kill."""
    victim = await workers.start("hold")
    await store.publish([(make_event("crash:job", {"n": n}, {}), ["job"]) for n in range(8)])

    async def victim_runs_four() -> bool:
        return len([s for s in await steps(store) if s.pid == victim.pid]) >= 4

    await until(victim_runs_four, "the victim starting its batch")
    await workers.start("quick")
    await workers.start("quick")
    held = {lease.event_id for lease in await store.leases() if lease.consumer.pid == victim.pid}
    assert len(held) == 8, "the victim holds its whole batch: four running, four waiting"
    ids = {event.id: event.payload["n"] async for event in _events(store)}
    killed_at = time.time()
    victim.send_signal(signal.SIGKILL)
    await victim.wait()

    async def all_done() -> bool:  # the receivers returned and the store settled them
        ran = len({s.n for s in await steps(store) if s.what == "done"}) == 8
        return ran and (await store.stats()).done == 8

    await until(all_done, "the survivors running the victim's batch")
    log = await steps(store)
    reclaimed: dict[int, float] = {}
    for step in log:
        if step.what == "start" and step.pid != victim.pid:
            reclaimed.setdefault(step.n, step.at)
    assert set(reclaimed) == {ids[event_id] for event_id in held} == set(range(8))
    assert all(step.pid != victim.pid for step in log if step.what == "done")
    latest = max(reclaimed.values()) - killed_at
    print(f"reclaimed {len(reclaimed)} deliveries {latest:.3f} s after the kill")
    assert min(reclaimed.values()) > killed_at, "taken from a live process"
    assert latest <= LEASE + POLL_MAX + ROUND_TRIPS
    assert await store.leases() == []
    assert (await store.stats()).pending == 0
    assert [p async for p in store.pending()] == []


async def test_a_killed_consumer_costs_an_attempt_only_to_what_it_started_ahead(
    store: RedisStore, workers: Workers
) -> None:
    """kill -9 of a consumer with 2 workers and ``start_ahead=8`` holding 12 claims: the
    store counts an attempt for the two running and the eight started ahead (the option's
    price), none for the two only claimed; the survivors run all twelve, none
    dead-lettered."""
    victim = await workers.start("hold-ahead")
    await store.publish([(make_event("crash:job", {"n": n}, {}), ["job"]) for n in range(12)])

    async def victim_holds_all() -> bool:
        running = [s for s in await steps(store) if s.pid == victim.pid]
        leases = await store.leases()
        return len(running) == 2 and len(leases) == 12

    await until(victim_holds_all, "the victim running two and holding all twelve")
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    attempts = sorted([each.attempts async for each in store.pending()])
    assert len(attempts) == 12
    assert attempts.count(1) >= 8, attempts  # started ahead: more than workers' 2 + 2
    assert attempts.count(1) <= 10, attempts  # no more than 8 ahead and 2 running
    assert set(attempts) <= {0, 1}, attempts
    await workers.start("quick")

    async def all_done() -> bool:  # the receivers returned and the store settled them
        ran = len({s.n for s in await steps(store) if s.what == "done"}) == 12
        return ran and (await store.stats()).done == 12

    await until(all_done, "the survivor running the victim's claims")
    assert (await store.stats()).dead == 0
    assert await store.leases() == []


async def _events(store: RedisStore) -> AsyncIterator[aevents.Event]:
    """Every event of the store whose deliveries are unfinished."""
    async for delivery in store.pending():
        yield delivery.event


# -- 2. exactly once per receiver, four processes, 100k events ------------------------------

EVENTS = 100_000
PUBLISH_BATCH = 5_000


@pytest.mark.timeout(300)
async def test_four_processes_run_100k_events_exactly_once(
    redis_url: str, prefix: str, store: RedisStore, workers: Workers
) -> None:
    """Four consumer processes, 100,000 events published in batches while they consume,
    no crash: each delivery ran exactly once, in one of the four, and each of the four
    ran a share. The workers count in memory and report at the stop. One receiver: on
    Redis each delivery is one claim, start and settle in Lua, and the one server
    thread sets the pace (see docs/redis.md)."""
    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(workers.start, "count")
    processes = list(workers.processes)
    routes = aevents.Registry()  # the workers' routes: a publish adds one delivery to each
    routes.subscribe("many:*", _never_here, id="first")
    publisher = aevents.EventRuntime(
        routes, store=RedisStore(redis_url, prefix=prefix), consume=False, buffer=PUBLISH_BATCH
    )
    started = time.monotonic()
    async with publisher:
        for start in range(0, EVENTS, PUBLISH_BATCH):
            await publisher.publish_many(
                "many:n", [{"n": n} for n in range(start, start + PUBLISH_BATCH)]
            )
    published = time.monotonic()

    async def all_done() -> bool:
        await anyio.sleep(0.2)
        return (await store.stats()).done == EVENTS

    await until(all_done, "every delivery done", within=240)
    print(
        f"published {EVENTS} in {published - started:.1f} s,"
        f" all done {time.monotonic() - started:.1f} s after the first publish"
    )
    reports = [orjson.loads(await workers.stop(process)) for process in processes]
    runs = collections.Counter(n for report in reports for n in report["first"])
    assert len(runs) == EVENTS
    assert set(runs) == set(range(EVENTS))
    assert set(runs.values()) == {1}, "a delivery ran twice with no process killed"
    assert all(report["first"] for report in reports), "each process ran a share"
    stats = await store.stats()
    assert (stats.events, stats.pending, stats.done, stats.dead) == (EVENTS, 0, EVENTS, 0)


async def _never_here(event: aevents.Event) -> None:
    raise AssertionError("this process does not consume")


# -- 3. poison receivers -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["raise", "exit"])
async def test_a_poison_receiver_ends_as_one_dead_letter_after_its_attempts_with_nothing_pending(
    mode: str, store: RedisStore, workers: Workers
) -> None:
    """A receiver that raises on every attempt, or ends its process (``os._exit``) on
    every attempt while the process manager restarts it: three attempts (its policy's),
    then exactly one dead letter, and neither ``XPENDING`` nor ``pending()`` shows a
    thing."""
    (event,) = await store.publish([(make_event("poison:pill", {"n": 0}, {}), ["poison"])])
    alive: list[anyio.abc.Process] = []

    async def dead_lettered() -> bool:
        for process in list(alive):
            if process.returncode is not None:
                alive.remove(process)
        while len(alive) < (1 if mode == "raise" else 2):  # a manager restarts what died
            alive.append(await workers.start(mode, ready=mode == "raise"))
        return bool(await store.dead_letters())

    await until(dead_lettered, "the dead letter")
    (letter,) = await store.dead_letters()
    assert (letter.event.id, letter.receiver_id, letter.attempts) == (event.id, "poison", 3)
    starts = [step for step in await steps(store) if step.what == "start"]
    assert [step.n for step in starts] == [0, 0, 0], "one run per attempt, no more"
    if mode == "raise":
        assert letter.error_type == "ValueError"
        assert len({step.pid for step in starts}) == 1
    else:
        assert letter.error_type == "aevents.AttemptsExhausted"
        assert len({step.pid for step in starts}) == 3, "each attempt ended its process"
        for process in list(alive):
            await workers.stop(process)
        assert sorted(p.returncode or 0 for p in workers.processes).count(3) == 3
    summary = await store._call(
        lambda c: c.xpending(store.keys.receiver("poison"), "aevents"), "read"
    )
    assert summary.pending == 0
    assert [delivery async for delivery in store.pending()] == []
    stats = await store.stats()
    assert (stats.pending, stats.dead) == (0, 1)


# -- 4. per-key order across an ownership handover -------------------------------------------

KEYS = 4
PER_KEY = 30  # events of each key before the handover, and 5 more after it


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_per_key_order_holds_across_a_handover_between_processes(
    how: str, store: RedisStore, workers: Workers
) -> None:
    """Two processes run four keys; one that owns a key mid-way is SIGKILLed (``kill``)
    or SIGTERMed (``stop``), and more events of each key are published. Seen by the
    receivers of both processes, each key's deliveries start in publish order, each only
    once the one before it is done; after a kill, the other process first finishes what
    the dead one held (again, at least once), before the key's later events."""

    def batch(numbers: range) -> list[tuple[aevents.Event, list[str]]]:
        return [
            (make_event("keyed:n", {"n": n}, {}, key=f"k{n % KEYS}"), ["ordered"]) for n in numbers
        ]

    async with anyio.create_task_group() as group:  # both consume before anything is published
        for _ in range(2):
            group.start_soon(workers.start, "keyed")
    await store.publish(batch(range(KEYS * PER_KEY)))
    chosen: list[anyio.abc.Process] = []

    async def one_runs_a_key_mid_way() -> bool:
        log = await steps(store)
        for process in workers.processes:
            mine = [s for s in log if s.pid == process.pid]
            running = {s.n for s in mine if s.what == "start"} - {
                s.n for s in mine if s.what == "done"
            }
            if len(mine) >= 2 * KEYS and running:
                chosen.append(process)
                return True
        return False

    await until(one_runs_a_key_mid_way, "a process owning a key mid-way")
    (first,) = chosen
    if how == "kill":
        first.send_signal(signal.SIGKILL)
        await first.wait()
    else:
        await workers.stop(first)
    await store.publish(batch(range(KEYS * PER_KEY, KEYS * (PER_KEY + 5))))
    total = KEYS * (PER_KEY + 5)

    async def all_done() -> bool:
        return (await store.stats()).done == total

    await until(all_done, "every delivery done")
    log = await steps(store)
    mine = [s for s in log if s.pid == first.pid]  # it logs nothing once it is gone
    in_flight = {s.n for s in mine if s.what == "start"} - {s.n for s in mine if s.what == "done"}
    if how == "kill":
        assert in_flight, "the killed process held a key mid-way"
    for key in range(KEYS):
        order = list(range(key, total, KEYS))  # the key's events in publish order
        done: set[int] = set()
        started: list[int] = []
        for step in log:
            if step.n % KEYS != key:
                continue
            if step.what == "done":
                done.add(step.n)
                continue
            if started and started[-1] == step.n:  # again, after a kill: only what died
                assert how == "kill"
                assert step.n in in_flight
                assert step.pid != first.pid
                continue
            position = order.index(step.n)
            assert position == len(started), f"k{key}: {step.n} started out of order"
            assert position == 0 or order[position - 1] in done, (
                f"k{key}: {step.n} started before {order[position - 1]} was done"
            )
            started.append(step.n)
        assert started == order
        assert {s.pid for s in log if s.n % KEYS == key} - {first.pid}, "the other one took it"
    for n in in_flight:  # the dead owner's delivery is the next its key starts, elsewhere
        (position,) = [i for i, s in enumerate(log) if s.n == n and s.pid == first.pid]
        following = next(s for s in log[position + 1 :] if s.n % KEYS == n % KEYS)
        assert (following.what, following.n) == ("start", n)
        assert following.pid != first.pid
    assert (await store.stats()).pending == 0
