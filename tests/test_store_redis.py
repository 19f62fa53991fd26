"""RedisStore: the leased-store conformance suite on a real Redis 7, with consumers in
other processes; each test under its own key prefix, deleted afterwards."""

from __future__ import annotations

import gc
import hashlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import orjson
import pytest

import aevents

pytest.register_assert_rewrite("aevents._conformance_leases")

from aevents._conformance_leases import (  # noqa: E402
    ClaimAndStartConformance,
    PublishAndClaimConformance,
    TwoProcessLeasedConformance,
)
from aevents._event import make_event  # noqa: E402
from aevents._exceptions import StoreError  # noqa: E402
from aevents._store import (  # noqa: E402
    Claim,
    Clock,
    Completed,
    DeadLettered,
    LeasedStore,
    Released,
    Route,
    StoreStats,
    new_consumer_id,
)
from aevents._store import _redis as redis_module  # noqa: E402
from aevents._store._redis import RedisStore  # noqa: E402

from .services import REDIS, delete_redis_prefix  # noqa: E402


def prefix_of(directory: Path) -> str:
    """A key prefix of its own for each test directory (the child process derives it too)."""
    return "aevents-test-" + hashlib.sha1(str(directory).encode()).hexdigest()[:12]


def leased(directory: Path, clock: Clock) -> LeasedStore:
    """The store the suite and its child processes open, with no retention pass."""
    return RedisStore(REDIS.url, prefix=prefix_of(directory), clock=clock, retention=None)


class TestLeasedRedisStore(
    TwoProcessLeasedConformance, PublishAndClaimConformance, ClaimAndStartConformance
):
    @pytest.fixture(autouse=True)
    def _clean(self, redis_url: str, tmp_path: Path) -> Iterator[None]:
        yield
        anyio.run(delete_redis_prefix, redis_url, prefix_of(tmp_path))

    def make_leased_store(self, directory: Path, clock: Clock) -> LeasedStore:
        return leased(directory, clock)

    def child_store_factory(self) -> str:
        return f"{__name__}:leased"


# -- the runtime on Redis, and what Redis adds ----------------------------------------------


@pytest.fixture
async def redis_prefix(redis_url: str, anyio_backend: object) -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    prefix = "aevents-test-" + os.urandom(6).hex()
    yield prefix
    await delete_redis_prefix(redis_url, prefix)


@pytest.mark.anyio
async def test_a_runtime_on_redis_delivers_each_event_once_per_receiver(
    redis_url: str, redis_prefix: str
) -> None:
    """Two runtimes share one Redis store: every delivery runs once, a failure is retried."""
    seen: list[tuple[str, int, int]] = []

    def registry_of(tag: str) -> aevents.Registry:
        registry = aevents.Registry()

        @registry.subscribe(
            "orders:*", id="audit", retry=aevents.RetryPolicy(attempts=2, initial_delay=0.01)
        )
        async def audit(event: aevents.Event) -> None:
            delivery = aevents.current_delivery()
            assert delivery is not None
            if event.payload["n"] == 3 and delivery.attempt == 1:
                raise RuntimeError("first attempt fails")
            seen.append((tag, event.payload["n"], delivery.attempt))

        return registry

    one = RedisStore(redis_url, prefix=redis_prefix)
    two = RedisStore(redis_url, prefix=redis_prefix)
    with anyio.fail_after(30):
        async with (
            aevents.EventRuntime(registry_of("a"), store=one, workers=2, buffer=8) as a,
            aevents.EventRuntime(registry_of("b"), store=two, workers=2, buffer=8) as b,
        ):
            for n in range(10):
                await (a if n % 2 else b).publish("orders:placed", payload={"n": n})
            await a.drain()
            await b.drain()
            while len(seen) < 10:  # noqa: ASYNC110 (polls another process through Redis)
                await anyio.sleep(0.01)
    assert sorted(n for _, n, _ in seen) == list(range(10))
    assert [attempt for _, n, attempt in seen if n == 3] == [2]
    check = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    await check.open()
    try:
        stats = await check.stats()
    finally:
        await check.close()
    assert (stats.events, stats.pending, stats.done, stats.dead) == (10, 0, 10, 0)


# -- processes: crashes, poison, idempotency -----------------------------------------------


class Workers:
    """Consumer processes of ``tests.redis_worker``, each started and then ready; their
    stderr goes to files in ``directory``, printed at the stop (pytest shows it on failure).
    """

    def __init__(self, url: str, prefix: str, directory: Path) -> None:
        self.url, self.prefix, self.directory = url, prefix, directory
        self.processes: list[anyio.abc.Process] = []
        self.logs: list[Path] = []

    async def start(self, mode: str) -> anyio.abc.Process:
        path = self.directory / f"worker-{len(self.logs)}-{mode}.log"
        self.logs.append(path)
        with path.open("wb") as stderr:
            process = await anyio.open_process(
                [sys.executable, "-m", "tests.redis_worker", self.url, self.prefix, mode],
                cwd=Path(__file__).parent.parent,
                stderr=stderr,
            )
        assert process.stdout is not None
        if mode != "poison":
            line = await process.stdout.receive()
            assert line.startswith(b"ready")
        self.processes.append(process)
        return process

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with anyio.CancelScope(shield=True), anyio.move_on_after(20):
            for process in self.processes:
                await process.wait()
        for process in self.processes:
            if process.returncode is None:
                process.kill()
            await process.aclose()
        for process, path in zip(self.processes, self.logs, strict=False):
            print(f"--- {path.name} (pid {process.pid}) ---\n{path.read_text()}")


async def _log(store: RedisStore) -> list[tuple[str, int, int]]:
    raw = await store._call(lambda c: c.lrange(store.keys.base + ":log", 0, -1), "read")
    return [(what, int(n), int(pid)) for what, n, pid in (line.decode().split() for line in raw)]


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    """An open store on this test's prefix, for publishing and checking."""
    opened = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.anyio
async def test_a_consumer_killed_mid_batch_leaves_its_deliveries_to_the_other_two(
    redis_url: str, redis_prefix: str, store: RedisStore, tmp_path: Path
) -> None:
    """kill -9 of one of three consumers while its batch runs: the other two run what it
    held once its lease ends, and every delivery is done.

    The victim consumes alone first and hangs in its batch, so it surely holds work
    when it dies; the other two start only then and find the rest."""
    workers = Workers(redis_url, redis_prefix, tmp_path)
    try:
        victim = await workers.start("hang")
        events = [(make_event("crash:job", {"n": n}, {}), ["slow"]) for n in range(24)]
        await store.publish(events)
        with anyio.fail_after(60):
            while len([pid for _, _, pid in await _log(store) if pid == victim.pid]) < 4:  # noqa: ASYNC110 (polls another process through Redis)
                await anyio.sleep(0.02)
            await workers.start("slow")
            await workers.start("slow")
            victim.kill()
            await victim.wait()
            while (await store.stats()).done < 24:  # noqa: ASYNC110 (polls another process through Redis)
                await anyio.sleep(0.05)
    finally:
        await workers.stop()
    log = await _log(store)
    assert {n for what, n, _ in log if what == "done"} == set(range(24))
    killed = {n for what, n, pid in log if what == "start" and pid == victim.pid}
    assert len(killed) >= 4
    assert all(pid != victim.pid for what, _, pid in log if what == "done")
    assert await store.leases() == []
    assert (await store.stats()).pending == 0


@pytest.mark.anyio
async def test_a_receiver_that_kills_its_process_ends_as_one_dead_letter(
    redis_url: str, redis_prefix: str, store: RedisStore, tmp_path: Path
) -> None:
    """Processes die on each attempt (os._exit); after its attempts, one dead letter, no PEL."""
    (event,) = await store.publish([(make_event("poison:pill", {"n": 1}, {}), ["poison"])])
    workers = Workers(redis_url, redis_prefix, tmp_path)
    try:
        with anyio.fail_after(60):
            while not await store.dead_letters():
                process = await workers.start("poison")
                with anyio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:  # alive: nothing left to kill it
                    break
    finally:
        await workers.stop()
    (letter,) = await store.dead_letters()
    assert (letter.event.id, letter.receiver_id, letter.attempts) == (event.id, "poison", 2)
    starts = [n for what, n, _ in await _log(store) if what == "start"]
    assert starts == [1, 1]
    pending = await store._call(
        lambda c: c.xpending(store.keys.receiver("poison"), "aevents"), "read"
    )
    assert pending.pending == 0
    assert (await store.stats()).pending == 0


@pytest.mark.anyio
async def test_a_receiver_that_raises_ends_as_one_dead_letter_with_nothing_pending(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    """A poison receiver that raises every time is dead-lettered once, its entry acknowledged."""
    registry = aevents.Registry()

    @registry.subscribe(
        "poison:*", id="raises", retry=aevents.RetryPolicy(attempts=3, initial_delay=0.01)
    )
    async def raises(event: aevents.Event) -> None:
        raise ValueError("poison")

    with anyio.fail_after(30):
        async with aevents.EventRuntime(
            registry, store=RedisStore(redis_url, prefix=redis_prefix)
        ) as runtime:
            await runtime.publish("poison:pill", payload={})
            await runtime.drain()
    (letter,) = await store.dead_letters()
    assert (letter.receiver_id, letter.attempts, letter.error_type) == ("raises", 3, "ValueError")
    pending = await store._call(
        lambda c: c.xpending(store.keys.receiver("raises"), "aevents"), "read"
    )
    assert pending.pending == 0


def test_eight_processes_repeating_an_idempotency_key_add_one_event(
    redis_url: str, tmp_path: Path
) -> None:
    """Eight processes publish the same key at once: one event, and all return it."""
    prefix = "aevents-test-" + os.urandom(6).hex()
    try:
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.redis_worker", redis_url, prefix, "publish"],
                cwd=Path(__file__).parent.parent,
                stdout=subprocess.PIPE,
            )
            for _ in range(8)
        ]
        ids = {process.communicate(timeout=60)[0].decode().strip() for process in processes}
        assert all(process.returncode == 0 for process in processes)
        assert len(ids) == 1

        async def count() -> StoreStats:
            store = RedisStore(redis_url, prefix=prefix, retention=None)
            await store.open()
            try:
                return await store.stats()
            finally:
                await store.close()

        stats = anyio.run(count)
        assert (stats.events, stats.idempotency_keys) == (1, 1)
    finally:
        anyio.run(delete_redis_prefix, redis_url, prefix)


@pytest.mark.anyio
async def test_streams_stay_bounded_while_events_flow_through(store: RedisStore) -> None:
    """20k events published, claimed and done: acknowledged entries are trimmed, and pruning
    deletes done events, so no stream holds more than a few batches."""
    consumer = new_consumer_id()
    await store.register(consumer, [Route("**", "r")], ttl=60)
    longest = 0
    for start in range(0, 20_000, 1000):
        batch = [
            (make_event("flow:event", {"n": n}, {}), ["r"]) for n in range(start, start + 1000)
        ]
        await store.publish(batch)
        claims = await store.claim(consumer, 1000, lease=30)
        await store.start(consumer, claims)
        assert await store.settle(consumer, [Completed(claim) for claim in claims]) == []
        await store.prune()
        lengths = await store._call(
            lambda c: _lengths(c, [store.keys.events, store.keys.receiver("r")]), "read"
        )
        longest = max(longest, *lengths)
    assert longest <= 1200
    assert await store.stats() == StoreStats(events=0, pending=0, done=0, dead=0)


async def _lengths(client: Any, keys: list[str]) -> list[int]:
    return [await client.xlen(key) for key in keys]


# coredis (6.9) leaves the memory streams of a connection that could not connect (the
# server is down) to the garbage collector, which warns about them; nothing of aevents
# is left open. They sit in reference cycles, so the test collects them itself (see the
# end): otherwise the collector would find them during a later test, which would fail.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.anyio
async def test_a_redis_restart_loses_nothing_acknowledged_and_the_store_reconnects(
    tmp_path: Path, anyio_backend: object
) -> None:
    """A throwaway redis-server with AOF (appendfsync always) stops without saving and starts
    again: calls meanwhile raise StoreError; afterwards the same store sees every event."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: the restart test needs its own server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        server,
        "--port",
        str(port),
        "--dir",
        str(tmp_path),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--bind",
        "127.0.0.1",
    ]

    async def start_server() -> anyio.abc.Process:
        process = await anyio.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with anyio.fail_after(10):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        return process
                except OSError:
                    await anyio.sleep(0.05)

    process = await start_server()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="restart", retention=None)
    try:
        await store.open()
        events = [(make_event("restart:event", {"n": n}, {}), ["r"]) for n in range(100)]
        await store.publish(events)
        await anyio.run_process(["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False)
        await process.wait()
        with anyio.fail_after(10), pytest.raises(StoreError):
            await store.stats()
        process = await start_server()
        with anyio.fail_after(10):
            while True:
                try:
                    stats = await store.stats()
                    break
                except StoreError:
                    await anyio.sleep(0.1)
        assert (stats.events, stats.pending) == (100, 100)
        consumer = new_consumer_id()
        await store.register(consumer, [Route("**", "r")], ttl=60)
        assert len(await store.claim(consumer, 200, lease=30)) == 100
    finally:
        await store.close()
        process.terminate()
        await process.wait()
        gc.collect()  # coredis' garbage warns here, under this test's filter (see above)


@pytest.mark.anyio
async def test_a_password_in_the_url_never_shows(
    redis_url: str, anyio_backend: object, caplog: pytest.LogCaptureFixture
) -> None:
    """repr, the error of a refused login and the log lines show *** for the password."""
    secret = "s3cret-" + os.urandom(4).hex()
    url = redis_url.replace("redis://", f"redis://someone:{secret}@", 1)
    store = RedisStore(url, prefix="never-opened")
    assert secret not in repr(store)
    assert "***" in repr(store)
    with pytest.raises(StoreError) as raised:
        await store.open()
    error: BaseException | None = raised.value
    while error is not None:
        assert secret not in str(error)
        error = error.__cause__ or error.__context__
    assert secret not in caplog.text


def test_a_password_in_the_query_string_is_hidden_too() -> None:
    """coredis also reads ``?password=``: the store's path and repr hide it as well."""
    store = RedisStore("redis://127.0.0.1:6379/0?password=hunter2&db=0")
    assert "hunter2" not in store.path
    assert "hunter2" not in repr(store)
    assert "password=***" in store.path


def test_poll_interval_must_be_a_finite_number_of_seconds() -> None:
    assert RedisStore("redis://127.0.0.1:6379/0").poll_interval == 2.0
    assert RedisStore("redis://127.0.0.1:6379/0", poll_interval=0.25).poll_interval == 0.25
    for wrong in (0, -1, math.inf, True, "2"):
        with pytest.raises(aevents.ConfigurationError, match="poll_interval"):
            RedisStore("redis://127.0.0.1:6379/0", poll_interval=wrong)  # type: ignore[arg-type]


# -- the client on the caller's loop: opened and closed from any task -------------------------


@pytest.mark.anyio
async def test_a_store_opened_in_one_task_is_used_and_closed_from_others(
    redis_url: str, redis_prefix: str
) -> None:
    """The client belongs to the store's own task: other tasks call it and close it, and
    open and close again leave no garbage behind (memory streams collected with warnings
    would fail a later test)."""
    store = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    counts: list[int] = []

    async def count() -> None:
        counts.append((await store.stats()).events)

    for _ in range(3):
        async with anyio.create_task_group() as group:
            group.start_soon(store.open)
        counts.clear()
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(count)
        assert counts == [0, 0, 0, 0]
        store.wake_on_work(lambda: None)  # a listener blocked in XREAD when it closes
        async with anyio.create_task_group() as group:
            group.start_soon(store.close)
        with pytest.raises(StoreError, match="not open"):
            await store.stats()
    gc.collect()


@pytest.mark.anyio
async def test_a_cancelled_runtime_still_hands_its_claims_back(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    """A cancellation from outside stops the runtime; the client, outside the cancelled
    scope, still settles its claims at the stop: nothing stays leased, nobody registered."""
    registry = aevents.Registry()
    running = anyio.Event()

    @registry.subscribe("slow:*", id="slow")
    async def slow(event: aevents.Event) -> None:
        running.set()
        await anyio.sleep_forever()

    events = [(make_event("slow:event", {"n": n}, {}), ["slow"]) for n in range(20)]
    await store.publish(events)
    consuming = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    with anyio.fail_after(30):
        with anyio.CancelScope() as scope:
            async with aevents.EventRuntime(registry, store=consuming, workers=2, buffer=8):
                await running.wait()
                scope.cancel()
                await anyio.sleep_forever()
        assert await store.leases() == []
        assert await store.consumers() == []
    backlog = {row.receiver_id: row for row in await store.backlog()}
    assert (backlog["slow"].ready, backlog["slow"].leased) == (20, 0)


# -- claim_and_start: the claim that starts its look-ahead ------------------------------------


@pytest.fixture
async def clocked(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[RedisStore, Any]]:
    """An open store on this test's prefix that reads a manual clock."""
    from aevents._conformance_leases import ManualClock

    clock = ManualClock()
    opened = RedisStore(redis_url, prefix=redis_prefix, clock=clock, retention=None)
    await opened.open()
    try:
        yield opened, clock
    finally:
        await opened.close()


@pytest.mark.anyio
async def test_claim_and_start_starts_the_first_claims_whose_lease_did_not_run_out(
    clocked: tuple[RedisStore, Any],
) -> None:
    """The first `start` claims in publish order count their attempt, as `start` counts it;
    the others count nothing; a claim whose last attempt's lease ran out is never started
    by it (the claimer decides whether it runs alone)."""
    store, clock = clocked
    consumer = new_consumer_id()
    await store.register(consumer, [Route("**", "r")], ttl=3600)
    await store.publish([(make_event("c:e", {"n": n}, {}), ["r"]) for n in range(4)])
    claims, started = await store.claim_and_start(consumer, 10, lease=30, start=2)
    assert [c.event.payload["n"] for c in claims] == [0, 1, 2, 3]
    assert started == claims[:2]
    assert [c.attempt for c in claims] == [1, 1, 1, 1]
    assert await store.start(consumer, [claims[1]]) == []  # started twice: counted once
    clock.advance(31)  # every lease runs out
    again, started = await store.claim_and_start(consumer, 10, lease=30, start=10)
    assert [(c.attempt, c.lease_expired) for c in again] == [
        (2, True),
        (2, True),
        (1, False),
        (1, False),
    ]
    assert started == again[2:]
    # Released uncounts what it started; the next claim is that attempt once more.
    assert await store.settle(consumer, [Released(c) for c in again]) == []
    last, started = await store.claim_and_start(consumer, 10, lease=30, start=0)
    assert [c.attempt for c in last] == [2, 2, 1, 1]
    assert started == []


@pytest.mark.anyio
async def test_start_and_settle_find_a_few_claims_among_many_held(
    store: RedisStore,
) -> None:
    """start, renew and settle read the consumer's pending entries around the claims they
    are given, not all it holds: a few claims far apart among many held (a redelivered one
    at the stream's end among them) are found, and a wrong attempt or another consumer's
    claim is not."""
    consumer, other = new_consumer_id(), new_consumer_id()
    for each in (consumer, other):
        await store.register(each, [Route("**", "r")], ttl=3600)
    await store.publish([(make_event("f:e", {"n": n}, {}), ["r"]) for n in range(100)])
    claims = await store.claim(consumer, 100, lease=30)
    assert len(claims) == 100
    letter = _first_attempt_letter("letter-far", claims[0])
    assert await store.settle(consumer, [DeadLettered(claims[0], letter)]) == []
    assert await store.redeliver(["letter-far"]) == 1
    (far,) = await store.claim(consumer, 10, lease=30)  # at the end of the stream now
    assert far.event.id == claims[0].event.id
    wrong = attrs.evolve(claims[50], attempt=2)
    assert await store.start(consumer, [claims[1], far, wrong]) == [wrong]
    assert await store.start(other, [claims[2]]) == [claims[2]]
    assert await store.renew(consumer, [far, claims[99]], lease=30) == []
    spread = [claims[n] for n in (1, 30, 60, 99)] + [far]
    assert await store.settle(consumer, [Completed(c) for c in spread]) == []
    assert await store.settle(consumer, [Completed(far)]) == [far]  # settled already
    stats = await store.stats()
    assert (stats.done, stats.pending) == (5, 95)


@pytest.mark.anyio
async def test_settle_and_start_settles_then_starts_in_one_script(
    clocked: tuple[RedisStore, Any],
) -> None:
    """The outcomes are settled and the claims started as settle and start would; each
    part answers with the claims it found not held."""
    store, clock = clocked
    consumer, other = new_consumer_id(), new_consumer_id()
    for each in (consumer, other):
        await store.register(each, [Route("**", "r")], ttl=3600)
    await store.publish([(make_event("s:e", {"n": n}, {}), ["r"]) for n in range(4)])
    claims = await store.claim(consumer, 4, lease=30)
    theirs = attrs.evolve(claims[3], attempt=5)
    lost, not_started = await store.settle_and_start(
        consumer, [Completed(claims[0]), Completed(theirs)], [claims[1], claims[2], theirs]
    )
    assert (lost, not_started) == ([theirs], [theirs])
    assert await store.settle_and_start(consumer, [], []) == ([], [])
    clock.advance(31)  # the leases run out: the started ones count their attempt
    again = await store.claim(other, 10, lease=30)
    assert [(c.event.payload["n"], c.attempt) for c in again] == [(1, 2), (2, 2), (3, 1)]
    assert (await store.stats()).done == 1


@pytest.mark.anyio
async def test_publish_and_claim_leases_only_what_it_adds_older_unread_ones_stay_claimable(
    store: RedisStore, redis_url: str, redis_prefix: str
) -> None:
    """Its claim takes only the deliveries the publish added, the publisher's own event
    objects, among the first ``limit`` unread; an entry no consumer had read yet, before
    them, is claimable as before and comes first (with its body) in the next claim, with
    the added ones the publish left."""
    consumer = new_consumer_id()
    await store.register(consumer, [Route("**", "r")], ttl=3600)
    other = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    await other.open()
    try:
        older = make_event("o:e", {"n": -1}, {})
        await other.publish([(older, ["r"])])
    finally:
        await other.close()
    events = [make_event("o:e", {"n": n}, {}) for n in range(3)]
    standing, claims, started = await store.publish_and_claim(
        [(event, ["r"]) for event in events], consumer, limit=2, lease=30, start=1
    )
    assert standing == events
    assert [c.event for c in claims] == events[:1]
    assert claims[0].event is events[0]
    assert started == claims
    rest = await store.claim(consumer, 10, lease=30)
    assert [c.event for c in rest] == [older, *events[1:]]
    assert [c.attempt for c in rest] == [1, 1, 1]


@pytest.mark.anyio
async def test_publish_and_claim_wakes_only_for_what_it_left_unclaimed(
    store: RedisStore,
) -> None:
    """A publish whose claim took every delivery it added adds no wake (no consumer, nor
    this store's own listener, reads one for nothing); one that left some names their
    receivers only, as does a publish whose consumer is not live."""
    consumer = new_consumer_id()
    await store.register(consumer, [Route("**", "r")], ttl=3600)
    wakes = store.keys.base + ":wake"

    async def named() -> list[list[str]]:
        entries = await store._call(lambda c: c.xrange(wakes), "could not read")
        return [sorted(orjson.loads(e.field_values[b"r"])) for e in entries]

    events = [make_event("w:e", {"n": n}, {}) for n in range(4)]
    _, claims, _ = await store.publish_and_claim(
        [(event, ["r"]) for event in events[:2]], consumer, limit=5, lease=30, start=0
    )
    assert len(claims) == 2
    assert await named() == []
    _, claims, _ = await store.publish_and_claim(
        [(events[2], ["r", "t"])], consumer, limit=5, lease=30, start=0
    )
    assert len(claims) == 1
    assert await named() == [["t"]]
    _, claims, _ = await store.publish_and_claim(
        [(events[3], ["r"])], new_consumer_id(), limit=5, lease=30, start=0
    )
    assert claims == []
    assert await named() == [["t"], ["r"]]


@pytest.mark.anyio
async def test_settles_and_starts_of_one_turn_go_in_one_script(store: RedisStore) -> None:
    """start, settle and settle_and_start calls made in the same turn of the event loop
    (a runtime's start writer and settle task, woken together) share one SETTLE script;
    each answers with its own claims not held, as alone."""
    consumer, other = new_consumer_id(), new_consumer_id()
    for each in (consumer, other):
        await store.register(each, [Route("**", "r")], ttl=3600)
    await store.publish([(make_event("j:e", {"n": n}, {}), ["r"]) for n in range(6)])
    claims = await store.claim(consumer, 6, lease=30)
    theirs = attrs.evolve(claims[5], attempt=3)
    scripts: list[str] = []
    run = store._run

    async def counting(name: str, args: Any, doing: str) -> Any:
        scripts.append(name)
        return await run(name, args, doing)

    store._run = counting  # type: ignore[method-assign]
    answers: dict[str, Any] = {}

    async def call(name: str, make: Any) -> None:
        answers[name] = await make()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call, "settle", lambda: store.settle(consumer, [Completed(claims[0])]))
        tasks.start_soon(call, "start", lambda: store.start(consumer, [claims[1], theirs]))
        tasks.start_soon(
            call,
            "both",
            lambda: store.settle_and_start(
                consumer, [Completed(claims[2]), Completed(theirs)], [claims[3]]
            ),
        )
        tasks.start_soon(call, "theirs", lambda: store.start(other, [claims[4]]))
    assert sorted(scripts) == ["SETTLE", "SETTLE"]  # one for each consumer
    assert answers == {
        "settle": [],
        "start": [theirs],
        "both": ([theirs], []),
        "theirs": [claims[4]],
    }
    assert (await store.stats()).done == 2


@pytest.mark.anyio
async def test_a_settle_cancelled_while_others_join_fails_theirs_and_sends_nothing(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call that leads a shared script, cancelled while it waits for others to join,
    sends nothing; each call that joined it raises a StoreError (its part unwritten)."""
    monkeypatch.setattr(redis_module, "_JOIN_TURNS", 10_000)  # it waits until cancelled
    monkeypatch.setattr(redis_module, "_JOIN_QUIET", 10_000)
    consumer = new_consumer_id()
    await store.register(consumer, [Route("**", "r")], ttl=3600)
    await store.publish([(make_event("x:e", {"n": n}, {}), ["r"]) for n in range(2)])
    claims = await store.claim(consumer, 2, lease=30)
    errors: list[StoreError] = []
    scopes: list[anyio.CancelScope] = []

    async def lead() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await store.settle(consumer, [Completed(claims[0])])

    async def join() -> None:
        try:
            await store.start(consumer, [claims[1]])
        except StoreError as error:
            errors.append(error)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lead)
        while consumer not in store._joining:  # the settle waits for others to join
            await anyio.lowlevel.checkpoint()
        joined = store._joining[consumer]
        tasks.start_soon(join)
        while not joined.claims:
            await anyio.lowlevel.checkpoint()
        assert store._joining[consumer] is joined  # not sent yet
        scopes[0].cancel()
    assert len(errors) == 1
    assert "cancelled" in errors[0].problem
    assert (await store.stats()).done == 0
    assert await store.settle(consumer, [Completed(c) for c in claims]) == []


def _first_attempt_letter(letter_id: str, claim: Claim) -> aevents.DeadLetter:
    """A dead letter of ``claim`` after its first attempt raised."""
    return aevents.DeadLetter(
        id=letter_id,
        event=claim.event,
        receiver_id=claim.receiver_id,
        attempts=1,
        error_type="builtins.RuntimeError",
        error_message="boom",
        failed_at=claim.event.occurred_at,
    )


# -- wakes and polling ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_publishes_redeliveries_and_handed_back_claims_wake_the_consumers(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    """wake_on_work: another store's publish, a claim released at its stop (unregister),
    a redelivered dead letter and a released claim each wake a listening store."""
    listening = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    await listening.open()
    try:
        woken = anyio.Event()

        def wake() -> None:
            woken.set()

        assert listening.wake_on_work(wake) == 2.0

        async def woken_by(action: Any) -> None:
            nonlocal woken
            await anyio.sleep(0.05)
            woken = anyio.Event()  # the listener's first read may wake once at its start
            await action()
            with anyio.fail_after(5):
                await woken.wait()

        events = [(make_event("w:e", {"n": n}, {}), ["r"]) for n in range(3)]
        await woken_by(lambda: store.publish(events))
        consumer = new_consumer_id()
        await store.register(consumer, [Route("**", "r")], ttl=60)
        claims = await store.claim(consumer, 10, lease=30)
        await woken_by(lambda: store.settle(consumer, [Released(claims[0])]))
        claims = await store.claim(consumer, 10, lease=30)
        letter = _first_attempt_letter("letter-1", claims[0])
        assert await store.settle(consumer, [DeadLettered(claims[0], letter)]) == []
        await woken_by(lambda: store.redeliver(["letter-1"]))
        await woken_by(lambda: store.unregister(consumer))
    finally:
        await listening.close()


@pytest.mark.anyio
async def test_a_listener_skips_the_wakes_for_receivers_registered_elsewhere_only(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    """Once a consumer registered on the listening store, a publish only to receivers it
    does not have wakes nothing there, nor does its own publish (its runtime claims
    without a wake); another store's publish to its receivers does. Reading as many wakes
    as the stream keeps, some may be missing: that wakes, whatever they name."""
    listening = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    await listening.open()
    try:
        await listening.register(new_consumer_id(), [Route("**", "mine")], ttl=60)
        calls = 0
        woken = anyio.Event()

        def wake() -> None:
            nonlocal calls
            calls += 1
            woken.set()

        listening.wake_on_work(wake)
        await listening.publish([(make_event("w:e", {}, {}), ["mine"])])
        await store.publish([(make_event("w:e", {}, {}), ["theirs"])])
        await store.publish([(make_event("w:e", {}, {}), ["mine", "theirs"])])
        with anyio.fail_after(5):
            await woken.wait()
        assert calls == 1
    finally:
        await listening.close()

    class Entry:
        def __init__(self, receivers: list[str], by: bytes = b"another") -> None:
            self.field_values = {b"r": orjson.dumps(receivers), b"c": by}

    theirs = [Entry(["theirs"]) for _ in range(16)]
    assert not listening._for_us(theirs[:15])
    assert listening._for_us(theirs)
    assert listening._for_us([*theirs[:3], Entry(["a", "mine"])])
    assert not listening._for_us([*theirs[:3], Entry(["mine"], listening._token)])


@pytest.mark.anyio
async def test_a_runtime_whose_wakes_are_lost_still_delivers_by_polling(
    redis_url: str, redis_prefix: str, store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL user that may not XREAD: the consuming runtime's listener never reads a wake
    (it says so once), and its claim loop still finds what another process publishes,
    polling every poll_interval."""
    user = "aevents-nowake-" + os.urandom(4).hex()
    secret = os.urandom(8).hex()
    rules = ["on", f">{secret}", "~*", "&*", "+@all", "-xread"]
    await store._call(lambda c: c.acl_setuser(user, *rules), "add a user")
    try:
        parts = urlsplit(redis_url)
        url = parts._replace(
            netloc=f"{user}:{secret}@{parts.hostname}:{parts.port or 6379}"
        ).geturl()
        seen: list[int] = []
        registry = aevents.Registry()

        @registry.subscribe("lost:*", id="lost")
        async def lost(event: aevents.Event) -> None:
            seen.append(event.payload["n"])

        consuming = RedisStore(url, prefix=redis_prefix, retention=None, poll_interval=0.2)
        with anyio.fail_after(30):
            async with aevents.EventRuntime(registry, store=consuming):
                while "cannot read the wakes" not in caplog.text:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                await store.publish([(make_event("lost:event", {"n": 1}, {}), ["lost"])])
                while not seen:  # noqa: ASYNC110 (the runtime polls Redis)
                    await anyio.sleep(0.01)
        assert seen == [1]
        assert secret not in caplog.text
    finally:
        await store._call(lambda c: c.acl_deluser([user]), "delete the user")


# -- retention ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_retention_pass_prunes_a_backlog_of_done_events_past_one_chunk(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    """6,000 done events older than the retention (a chunk prunes 2,048 at most): one claim
    starts a pass that goes on chunk after chunk until none is left, and stops at the
    first event newer than the cutoff, whose done deliveries stay."""
    consumer = new_consumer_id()
    await store.register(consumer, [Route("**", "r")], ttl=600)

    async def flow(count: int) -> None:
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            await store.publish([(make_event("old:e", {"n": n}, {}), ["r"]) for n in range(size)])
            claims = await store.claim(consumer, size, lease=30)
            await store.start(consumer, claims)
            assert await store.settle(consumer, [Completed(claim) for claim in claims]) == []

    await flow(6000)
    cutoff = datetime.now(UTC)
    await anyio.sleep(0.01)
    await flow(100)
    assert (await store.stats()).done == 6100
    retaining = RedisStore(
        redis_url, prefix=redis_prefix, clock=lambda: cutoff, retention=timedelta(0)
    )
    await retaining.open()
    try:
        other = new_consumer_id()
        await retaining.register(other, [Route("**", "r")], ttl=600)
        assert await retaining.claim(other, 10, lease=30) == []  # the pass starts here
        with anyio.fail_after(30):
            while (await store.stats()).done > 100:  # noqa: ASYNC110 (polls Redis)
                await anyio.sleep(0.05)
            while retaining._retaining:  # noqa: ASYNC110 (the pass ends on its own)
                await anyio.sleep(0.05)
    finally:
        await retaining.close()
    assert await store.stats() == StoreStats(events=100, pending=0, done=100, dead=0)
