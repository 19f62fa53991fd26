"""Runtimes that share one LeasedStore (MemoryStore): publish, claim, run, settle, hand over.

Each runtime runs in its own task, as each process of a fleet would run its
own. A consumer that "died" is played by claiming through the store directly
with an id no runtime has; a fake clock (``MemoryStore(clock=...)``) then
makes its leases run out without sleeping for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aevents
from aevents import ConfigurationError, Event, EventRuntime, MemoryStore, Registry, RetryPolicy
from aevents._store import Claim, ConsumerId, Route, SQLiteStore, new_consumer_id
from tests.journal_store import JournalMemoryStore

pytestmark = pytest.mark.anyio

NAME = "job:run"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def _serve(runtime: EventRuntime, started: anyio.Event, stop: anyio.Event) -> None:
    async with runtime:
        started.set()
        await stop.wait()


@asynccontextmanager
async def running(*runtimes: EventRuntime) -> AsyncIterator[None]:
    """Each runtime started in a task of its own; all stopped when the block ends."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tasks:
        for runtime in runtimes:
            started = anyio.Event()
            tasks.start_soon(_serve, runtime, started, stop)
            with anyio.fail_after(10):
                await started.wait()
        try:
            yield
        finally:
            stop.set()


async def until(condition: Callable[[], bool | Awaitable[bool]], *, seconds: float = 10) -> None:
    """Wait until ``condition`` holds, looking every few milliseconds (never a timed assert)."""
    with anyio.fail_after(seconds):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.005)


async def dead_consumer(
    store: MemoryStore, limit: int, *, lease: float = 5.0, started: bool = True
) -> list[Claim]:
    """Claims made by a consumer that then dies, running them (``started``) or before it
    ran them: nobody renews or settles them."""
    consumer = new_consumer_id()
    await store.register(consumer, [Route(NAME, "worker")], ttl=lease)
    claims = await store.claim(consumer, limit, lease=lease)
    if started:
        assert await store.start(consumer, claims) == []
    return claims


# ---------------------------------------------------------------------- sharing


async def test_two_runtimes_share_the_deliveries_each_run_once() -> None:
    """Events published by one runtime run once each, and the other runtime runs a share."""
    store = MemoryStore()
    ran: dict[str, list[str]] = {"a": [], "b": []}
    b_ran = anyio.Event()

    def registry_of(name: str) -> Registry:
        registry = Registry()

        async def worker(event: Event) -> None:
            if name == "a":
                await b_ran.wait()  # a holds what it claimed until b has run one
            ran[name].append(event.id)
            if name == "b":
                b_ran.set()

        registry.subscribe(NAME, worker, id="worker")
        return registry

    a = EventRuntime(registry_of("a"), store=store, workers=1, buffer=2)
    b = EventRuntime(registry_of("b"), store=store, workers=2, buffer=8)
    async with running(a, b):
        published = [await a.publish(NAME, payload={"n": n}) for n in range(20)]
        await until(lambda: len(ran["a"]) + len(ran["b"]) == 20)
        with anyio.fail_after(10):
            await a.drain()
            await b.drain()
        assert a.stats().delivered + b.stats().delivered == 20
        assert a.stats().published == 20
    assert sorted(ran["a"] + ran["b"]) == sorted(event.id for event in published)
    assert ran["b"]
    stats = await _stats(store)
    assert (stats.pending, stats.done, stats.dead) == (0, 20, 0)


async def test_three_runtimes_publish_and_consume_keys_stay_in_order() -> None:
    """Three runtimes publish keyed events and consume them all: once each, per key in order."""
    store = MemoryStore()
    log: list[tuple[str, int]] = []
    runtimes = []
    for index in range(3):
        registry = Registry()

        async def worker(event: Event, index: int = index) -> None:
            await anyio.lowlevel.checkpoint()
            log.append((event.key or "", event.payload["seq"]))

        registry.subscribe(NAME, worker, id="worker")
        runtimes.append(EventRuntime(registry, store=store, workers=3, buffer=4))
    async with running(*runtimes):
        for seq in range(60):
            await runtimes[seq % 3].publish(NAME, payload={"seq": seq}, key=f"k{seq % 4}")
        await until(lambda: len(log) == 60)
    assert sorted(seq for _, seq in log) == list(range(60))
    for key in ("k0", "k1", "k2", "k3"):
        seqs = [seq for k, seq in log if k == key]
        assert seqs == sorted(seqs)
    assert sum(runtime.stats().delivered for runtime in runtimes) == 60


# ---------------------------------------------------------------------- leases


async def test_a_lease_that_runs_out_is_taken_over_by_the_live_runtime() -> None:
    """A dead consumer's claims run in the live runtime once their lease runs out: no restart,
    the attempt counts on, and the receiver is told it is a replay."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    seen: list[tuple[int, int, bool]] = []

    def registry() -> Registry:
        registry = Registry()

        async def worker(event: Event) -> None:
            info = aevents.current_delivery()
            assert info is not None
            seen.append((event.payload["n"], info.attempt, info.replay))

        registry.subscribe(NAME, worker, id="worker")
        return registry

    publisher = EventRuntime(registry(), store=store, consume=False)
    live = EventRuntime(registry(), store=store)
    async with running(publisher):
        for n in range(3):
            await publisher.publish(NAME, payload={"n": n})
        claims = await dead_consumer(store, 3)
        assert [claim.attempt for claim in claims] == [1, 1, 1]
        async with running(live):
            await publisher.publish(NAME, payload={"n": 3})
            await until(lambda: len(seen) == 1)
            assert seen == [(3, 1, False)]  # the dead consumer's leases still hold
            clock.advance(6)
            await until(lambda: len(seen) == 4)
            assert sorted(seen) == [(0, 2, True), (1, 2, True), (2, 2, True), (3, 1, False)]
            await until(lambda: _no_leases(store))
    stats = await _stats(store)
    assert (stats.pending, stats.done) == (0, 4)


async def test_claims_a_dead_consumer_never_started_run_as_first_attempts() -> None:
    """What a consumer had claimed but not started when it died costs no attempt: the live
    runtime runs it as attempt 1, once the lease runs out."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    seen: list[tuple[int, int]] = []

    def registry() -> Registry:
        registry = Registry()

        async def worker(event: Event) -> None:
            info = aevents.current_delivery()
            assert info is not None
            seen.append((event.payload["n"], info.attempt))

        registry.subscribe(NAME, worker, id="worker")
        return registry

    publisher = EventRuntime(registry(), store=store, consume=False)
    async with running(publisher):
        for n in range(2):
            await publisher.publish(NAME, payload={"n": n})
        await dead_consumer(store, 2, started=False)
        async with running(EventRuntime(registry(), store=store)):
            clock.advance(6)
            await until(lambda: len(seen) == 2)
            assert sorted(seen) == [(0, 1), (1, 1)]
            await until(lambda: _no_leases(store))


def _gated(
    store: MemoryStore, hold: Callable[[int], bool], **options: Any
) -> tuple[EventRuntime, list[int], anyio.Event]:
    """A runtime on ``store`` with one receiver that records each event's ``n`` and, for
    the events ``hold`` picks, waits for the returned ``release`` before it returns."""
    release = anyio.Event()
    ran: list[int] = []
    registry = Registry()

    async def worker(event: Event) -> None:
        ran.append(event.payload["n"])
        if hold(event.payload["n"]):
            await release.wait()

    registry.subscribe(NAME, worker, id="worker")
    return EventRuntime(registry, store=store, **options), ran, release


@pytest.mark.parametrize(("start_ahead", "started"), [(None, 1), (6, 6)])
async def test_start_ahead_bounds_the_attempts_recorded_before_a_worker_takes_them(
    start_ahead: int | None, started: int
) -> None:
    """While the one worker runs the first of ten deliveries, the store counts as started
    the look-ahead's (``start_ahead``, ``workers`` by default) and no more: those are the
    attempts a crash would count for claims that never ran."""
    store = MemoryStore()
    runtime, ran, release = _gated(store, lambda n: True, workers=1, start_ahead=start_ahead)
    assert runtime.start_ahead == started
    async with running(runtime):
        await runtime.publish_many(NAME, [{"n": n} for n in range(10)])
        await until(lambda: ran == [0])
        for _ in range(20):  # let any further start be written
            await anyio.lowlevel.checkpoint()
        attempts = [each.attempts async for each in store.pending()]
        assert len(attempts) == 10
        assert started <= sum(attempts) <= started + 1, attempts
        assert set(attempts) <= {0, 1}
        release.set()
        with anyio.fail_after(10):
            await runtime.drain()
        assert sorted(ran) == list(range(10))
    assert (await _stats(store)).done == 10


class _CountingStarts(MemoryStore):
    """A memory store that counts its ``start`` writes (those not made with a publish)."""

    starts = 0

    async def start(self, consumer: ConsumerId, claims: Sequence[Claim]) -> list[Claim]:
        self.starts += 1
        return await super().start(consumer, claims)


async def test_a_publish_starts_its_claims_when_those_before_them_are_started_already() -> None:
    """Claims queued behind claims started already (ahead of a busy worker) are next in
    line for the look-ahead: the publish that claims them starts them in its own write,
    as a store's bare loop claims and starts a batch, with no start write of their own."""
    store = _CountingStarts()
    runtime, ran, release = _gated(store, lambda n: n == 0, workers=1, start_ahead=4)
    async with running(runtime):
        await runtime.publish(NAME, payload={"n": 0})
        await until(lambda: ran == [0])  # the one worker is busy from here on
        await runtime.publish_many(NAME, [{"n": 1}, {"n": 2}])
        await runtime.publish_many(NAME, [{"n": 3}, {"n": 4}])
        for _ in range(20):  # let any further start be written
            await anyio.lowlevel.checkpoint()
        attempts = {each.event.payload["n"]: each.attempts async for each in store.pending()}
        assert attempts == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, "four ahead of the busy worker"
        assert store.starts == 0, "each publish started what it claimed"
        release.set()
        with anyio.fail_after(10):
            await runtime.drain()
        assert ran == [0, 1, 2, 3, 4]
    assert (await _stats(store)).done == 5


async def test_back_to_back_batches_are_each_started_in_their_own_publish() -> None:
    """A publisher that awaits each batch in turn, on the default look-ahead (a worker
    each): the workers take the batch started before it first, so each publish starts
    what it claims in its own write, and no delivery waits for a start write."""
    store = _CountingStarts()
    runtime, ran, _ = _gated(store, lambda n: False, workers=4)
    async with running(runtime):
        for first in range(0, 40, 4):
            await runtime.publish_many(NAME, [{"n": n} for n in range(first, first + 4)])
        with anyio.fail_after(10):
            await runtime.drain()
    assert sorted(ran) == list(range(40))
    assert store.starts == 0, "a batch waited for a start write of its own"
    assert (await _stats(store)).done == 40


async def test_batches_return_to_starting_in_their_own_publish_after_a_start_write() -> None:
    """Once a batch had to wait for a start write of its own (the workers were busy when
    it was published), the batches published after it are each started in their own
    publish again: the workers take the batch whose start is being written first."""
    store = _CountingStarts()
    runtime, ran, release = _gated(store, lambda n: n < 4, workers=4)
    async with running(runtime):
        await runtime.publish_many(NAME, [{"n": n} for n in range(4)])
        await until(lambda: len(ran) == 4)  # every worker is busy from here on
        await runtime.publish_many(NAME, [{"n": n} for n in range(4, 8)])  # started ahead
        await runtime.publish_many(NAME, [{"n": n} for n in range(8, 12)])  # no room ahead
        assert store.starts == 0
        release.set()
        await until(lambda: store.starts == 1)  # the third batch's start write
        for first in range(12, 52, 4):
            await runtime.publish_many(NAME, [{"n": n} for n in range(first, first + 4)])
        with anyio.fail_after(10):
            await runtime.drain()
    assert sorted(ran) == list(range(52))
    assert store.starts == 1, "a batch after the third waited for a start write of its own"
    assert (await _stats(store)).done == 52


async def test_a_poison_delivery_ends_as_one_dead_letter_without_running_again() -> None:
    """Attempts add up across consumers that die: past the policy, the next claimer
    dead-letters it without running it, and keeps running the rest."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    ran: list[int] = []
    registry = Registry()

    async def worker(event: Event) -> None:
        ran.append(event.payload["n"])

    registry.subscribe(NAME, worker, id="worker", retry=RetryPolicy(attempts=3))
    publisher_registry = Registry()
    publisher_registry.subscribe(NAME, worker, id="worker")
    publisher = EventRuntime(publisher_registry, store=store, consume=False)
    async with running(publisher):
        poison = await publisher.publish(NAME, payload={"n": 0})
        for attempt in (1, 2, 3):  # three processes die running it
            (claim,) = await dead_consumer(store, 1)
            assert claim.attempt == attempt
            clock.advance(6)
        live = EventRuntime(registry, store=store)
        async with running(live):
            await publisher.publish(NAME, payload={"n": 1})
            await until(lambda: ran == [1])
            with anyio.fail_after(10):
                await live.drain()
            (letter,) = await live.dead_letters()
            assert live.stats().dead == 1
    assert (letter.event.id, letter.receiver_id, letter.attempts) == (poison.id, "worker", 3)
    assert letter.error_type == "aevents.AttemptsExhausted"
    assert ran == [1]
    stats = await _stats(store)
    assert (stats.pending, stats.done, stats.dead) == (0, 1, 1)


async def test_retries_are_held_by_the_store_and_attempts_count_across_consumers() -> None:
    """A failing receiver's retry waits in the store until due; its last attempt's failure
    is the one dead letter, and current_delivery().attempt is the store's count."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    attempts: list[int] = []
    registry = Registry()

    async def worker(event: Event) -> None:
        info = aevents.current_delivery()
        assert info is not None
        attempts.append(info.attempt)
        raise ConnectionError("down")

    policy = RetryPolicy(attempts=3, initial_delay=50, jitter=0)
    registry.subscribe(NAME, worker, id="worker", retry=policy)
    publisher = EventRuntime(registry, store=store, consume=False)
    live = EventRuntime(registry, store=store)
    async with running(publisher):
        await publisher.publish(NAME)
        await dead_consumer(store, 1)  # attempt 1 dies with its process
        clock.advance(6)
        async with running(live):
            await until(lambda: attempts == [2])
            await until(lambda: _scheduled(store))  # the store holds the retry, not the runtime
            assert live.stats().retrying == 0
            clock.advance(200)
            await until(lambda: attempts == [2, 3])
            await until(lambda: _dead(store))
            (letter,) = await live.dead_letters()
    assert (letter.attempts, letter.error_type) == (3, "ConnectionError")
    assert (live.stats().failed, live.stats().retried, live.stats().dead) == (2, 1, 1)


async def test_per_key_order_holds_across_runtimes_when_a_lease_passes_over() -> None:
    """A key's first delivery, leased by a consumer that died, runs first in the live fleet,
    then the rest of the key in publish order."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    log: list[tuple[int, int]] = []
    runtimes = []
    for _ in range(2):
        registry = Registry()

        async def worker(event: Event) -> None:
            info = aevents.current_delivery()
            assert info is not None
            log.append((event.payload["seq"], info.attempt))

        registry.subscribe(NAME, worker, id="worker")
        runtimes.append(EventRuntime(registry, store=store, workers=4))
    publisher_registry = Registry()
    publisher_registry.subscribe(NAME, lambda event: None, id="worker")
    publisher = EventRuntime(publisher_registry, store=store, consume=False)
    async with running(publisher):
        await publisher.publish(NAME, payload={"seq": 0}, key="k")
        (claim,) = await dead_consumer(store, 1)
        async with running(*runtimes):
            for seq in range(1, 10):
                await publisher.publish(NAME, payload={"seq": seq}, key="k")
            await publisher.publish(NAME, payload={"seq": 99}, key="other")
            await until(lambda: log == [(99, 1)])  # key "k" waits behind the dead lease
            clock.advance(6)
            await until(lambda: len(log) == 11)
    assert [entry for entry in log if entry[0] != 99] == [(0, 2)] + [(s, 1) for s in range(1, 10)]
    assert claim.event.payload["seq"] == 0


# ---------------------------------------------------------------------- who runs what


async def test_consume_false_publishes_durably_and_runs_nothing_of_the_store() -> None:
    """A consume=False runtime registers no consumer and runs no fleet receiver; a worker
    runtime runs its events; its drain() does not wait for the workers."""
    store = MemoryStore()
    ran: list[str] = []

    def registry_of(name: str) -> Registry:
        registry = Registry()

        async def worker(event: Event) -> None:
            ran.append(name)

        registry.subscribe(NAME, worker, id="worker")
        return registry

    web = EventRuntime(registry_of("web"), store=store, consume=False)
    worker = EventRuntime(registry_of("worker"), store=store)
    async with running(web):
        await web.publish(NAME)
        with anyio.fail_after(10):
            await web.drain()  # nothing of its own to wait for
        assert await store.consumers() == []
        (backlog,) = await store.backlog()
        assert (backlog.receiver_id, backlog.ready) == ("worker", 1)
        async with running(worker):
            await web.publish(NAME)
            await until(lambda: len(ran) == 2)
            (consumer,) = await store.consumers()
            assert consumer.routes == (Route(NAME, "worker"),)
    assert ran == ["worker", "worker"]
    assert web.stats().published == 2
    assert web.stats().delivered == 0


def test_consume_false_needs_a_shared_store() -> None:
    """consume=False without a store, or with a journal one process owns, is refused."""
    with pytest.raises(ConfigurationError, match="consume=False needs a store"):
        EventRuntime(consume=False)
    with pytest.raises(ConfigurationError, match="consume=False needs a store"):
        EventRuntime(store=JournalMemoryStore(), consume=False)
    assert EventRuntime(store=MemoryStore(), consume=False).consume is False
    assert EventRuntime(store=SQLiteStore(":memory:"), consume=False).consume is False


async def test_a_process_scoped_receiver_runs_in_every_runtime_and_never_as_a_delivery() -> None:
    """scope="process": run from memory by the publisher, even one that does not consume,
    and by every other live runtime; the fleet receiver runs once through the store."""
    store = MemoryStore()
    ran: list[tuple[str, str]] = []
    runtimes = {}
    for name, consume in (("web", False), ("worker", True)):
        registry = Registry()

        async def local(event: Event, name: str = name) -> None:
            ran.append(("local", name))

        async def shared(event: Event, name: str = name) -> None:
            ran.append(("shared", name))

        registry.subscribe(NAME, local, id="local", scope="process")
        registry.subscribe(NAME, shared, id="shared")
        runtimes[name] = EventRuntime(registry, store=store, consume=consume)
    async with running(*runtimes.values()):
        await runtimes["web"].publish(NAME)
        with anyio.fail_after(10):
            await runtimes["web"].drain()
            await runtimes["worker"].drain()
        (consumer,) = await store.consumers()
        assert [route.receiver_id for route in consumer.routes] == ["shared"]
        assert sorted(ran) == [("local", "web"), ("local", "worker"), ("shared", "worker")]
    stats = await _stats(store)
    assert (stats.events, stats.done) == (1, 1)  # one delivery in the store: "shared"


async def test_an_event_with_only_process_receivers_is_kept_without_deliveries(
    registry: Registry,
) -> None:
    """An event whose receivers here are all scope="process" is added with no delivery,
    for the other processes' tails; it runs here once, from memory."""
    store = MemoryStore()
    ran: list[Event] = []

    async def local(event: Event) -> None:
        ran.append(event)

    registry.subscribe(NAME, local, id="local", scope="process")
    async with EventRuntime(registry, store=store) as runtime:
        event = await runtime.publish(NAME, key="k")
        with anyio.fail_after(10):
            await runtime.drain()
        stats = await store.stats()
        assert (stats.events, stats.pending, stats.done) == (1, 0, 0)
    assert ran == [event]


def test_scope_is_checked_and_names_the_receiver(registry: Registry) -> None:
    """A scope that is not 'fleet' or 'process' is refused, naming the receiver; a receiver
    id keeps one scope across its patterns; inspect shows a process scope."""

    async def receiver(event: Event) -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        registry.subscribe(NAME, receiver, id="cache", scope="everywhere")  # type: ignore[call-overload]
    assert "cache" in str(caught.value)
    assert "scope must be 'fleet' or 'process', got 'everywhere'" in str(caught.value)
    registry.subscribe(NAME, receiver, id="cache", scope="process")
    with pytest.raises(ConfigurationError, match="a receiver id has one scope"):
        registry.subscribe("job:*", receiver, id="cache")
    catalog = aevents.Catalog({"RUN": NAME}, name="jobs")
    report = aevents.inspect_routes(registry, catalogs=[catalog])
    (declared,) = report.names
    (match,) = declared.receivers
    assert match.scope == "process"
    receivers = report.to_dict()["catalogs"][0]["names"][0]["receivers"]
    assert receivers == [{"receiver_id": "cache", "pattern": NAME, "scope": "process"}]
    assert "cache  (scope=process)" in report.to_text()


# ---------------------------------------------------------------------- backpressure


class CountingStore(MemoryStore):
    """Records each claim's limit and the most deliveries leased at once."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []
        self.most_leased = 0

    async def claim(self, consumer: ConsumerId, limit: int, *, lease: float) -> list[Claim]:
        self.limits.append(limit)
        claims = await super().claim(consumer, limit, lease=lease)
        self.most_leased = max(self.most_leased, len(await self.leases()))
        return claims


async def test_claims_never_exceed_the_room_in_the_buffer(registry: Registry) -> None:
    """A consumer claims what its buffer has room for, never more: with the workers blocked,
    it holds buffer + workers deliveries, and the rest stay in the store."""
    store = CountingStore()
    gate = anyio.Event()
    ran: list[int] = []

    async def worker(event: Event) -> None:
        await gate.wait()
        ran.append(event.payload["n"])

    registry.subscribe(NAME, worker, id="worker")
    async with EventRuntime(registry, store=store, workers=2, buffer=4) as runtime:
        for n in range(50):
            await runtime.publish(NAME, payload={"n": n})
        await until(lambda: store.most_leased == 6)
        await anyio.wait_all_tasks_blocked()
        assert len(await store.leases()) == 6
        assert runtime.stats().queued == 4
        assert store.most_leased == 6
        gate.set()
        with anyio.fail_after(10):
            await runtime.drain()
    assert sorted(ran) == list(range(50))
    # Once running, finished claims stay leased until their settle is written, so
    # more may be held then; but no claim ever asked for more than the room.
    assert max(store.limits) <= 4


# ---------------------------------------------------------------------- letters and keys


async def test_held_keys_dead_letters_and_redelivery_work_through_the_store(
    registry: Registry,
) -> None:
    """keyed_dead_letters="hold": the letter holds its key in the store; redeliver runs it
    first, then the rest of the key; release_key lets a key go on past its letter."""
    log: list[int] = []
    broken = {0, 10}

    async def worker(event: Event) -> None:
        if event.payload["seq"] in broken:
            raise ValueError("poison")
        log.append(event.payload["seq"])

    registry.subscribe(NAME, worker, id="worker", retry=RetryPolicy(attempts=1))
    store = MemoryStore()
    async with EventRuntime(registry, store=store, keyed_dead_letters="hold") as runtime:
        first = await runtime.publish(NAME, payload={"seq": 0}, key="k")
        await runtime.publish(NAME, payload={"seq": 1}, key="k")
        poison = await runtime.publish(NAME, payload={"seq": 10}, key="j")
        await runtime.publish(NAME, payload={"seq": 11}, key="j")
        with anyio.fail_after(10):
            await runtime.drain()
        assert log == []
        assert runtime.held_keys() == {("worker", "k"): first.id, ("worker", "j"): poison.id}
        assert await store.held_keys() == runtime.held_keys()
        broken.discard(0)
        (letter,) = [letter for letter in await runtime.dead_letters() if letter.event == first]
        assert await runtime.redeliver(letter) == 1
        with anyio.fail_after(10):
            await runtime.drain()
        assert log == [0, 1]
        assert runtime.release_key("worker", "j") is True
        await until(lambda: log == [0, 1, 11])
        assert runtime.held_keys() == {}
        (letter,) = await runtime.dead_letters()
        assert letter.event == poison


async def test_a_stop_hands_back_what_it_claimed_for_another_runtime(registry: Registry) -> None:
    """Leaving the async with releases the claims not started and reschedules the cut-off
    ones at once: another runtime runs them with no lease to wait out."""
    store = MemoryStore()
    await store.open()  # read after the runtimes closed it
    ran: list[int] = []

    async def stuck(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe(NAME, stuck, id="worker")
    async with EventRuntime(registry, store=store, workers=1, shutdown_timeout=0) as runtime:
        for n in range(5):
            await runtime.publish(NAME, payload={"n": n})
        await until(lambda: _leased(store, 5))
    assert await store.leases() == []
    assert await store.consumers() == []

    other = Registry()

    async def worker(event: Event) -> None:
        info = aevents.current_delivery()
        assert info is not None
        ran.append(info.attempt)

    other.subscribe(NAME, worker, id="worker")
    async with EventRuntime(other, store=store) as runtime:
        with anyio.fail_after(10):
            await runtime.drain()
    assert sorted(ran) == [1, 1, 1, 1, 2]  # the one cut off while it ran counts its attempt


async def test_idempotency_keys_hold_across_runtimes_sharing_the_store() -> None:
    """A repeat of a key from another runtime returns the first event and adds nothing."""
    store = MemoryStore()
    ran: list[Event] = []
    runtimes = []
    for _ in range(2):
        registry = Registry()

        async def worker(event: Event) -> None:
            ran.append(event)

        registry.subscribe(NAME, worker, id="worker")
        runtimes.append(EventRuntime(registry, store=store))
    async with running(*runtimes):
        first = await runtimes[0].publish(NAME, idempotency_key="order-7")
        again = await runtimes[1].publish(NAME, idempotency_key="order-7")
        assert again == first
        assert runtimes[1].stats().repeated == 1
        with anyio.fail_after(10):
            await runtimes[0].drain()
            await runtimes[1].drain()
    assert ran == [first]
    assert (await _stats(store)).events == 1


async def test_publishes_that_meet_a_write_under_way_go_in_one_store_call(
    registry: Registry,
) -> None:
    """Concurrent publishes queue behind the write under way and are written together."""
    store = BatchCountingStore()
    registry.subscribe(NAME, lambda event: None, id="worker")
    runtime = EventRuntime(registry, store=store, consume=False)
    async with runtime, anyio.create_task_group() as tasks:
        for n in range(20):
            tasks.start_soon(publish_one, runtime, n)
    assert sum(store.batches) == 20
    assert len(store.batches) < 20


async def publish_one(runtime: EventRuntime, n: int) -> None:
    await runtime.publish(NAME, payload={"n": n})


class BatchCountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        self.batches.append(len(events))
        return await super().publish(events)


# ---------------------------------------------------------------------- helpers


async def _stats(store: MemoryStore) -> aevents.StoreStats:
    await store.open()
    try:
        return await store.stats()
    finally:
        await store.close()


async def _no_leases(store: MemoryStore) -> bool:
    return not await store.leases()


async def _leased(store: MemoryStore, count: int) -> bool:
    return len(await store.leases()) == count


async def _scheduled(store: MemoryStore) -> bool:
    return any(backlog.scheduled for backlog in await store.backlog())


async def _dead(store: MemoryStore) -> bool:
    return any(backlog.dead for backlog in await store.backlog())


async def test_drain_waits_for_the_delivery_whichever_runtime_runs_it() -> None:
    """drain() in the publishing runtime returns once the event ran, in it or in another."""
    store = MemoryStore()
    gate = anyio.Event()
    ran: list[str] = []
    runtimes = []
    for name in ("a", "b"):
        registry = Registry()

        async def worker(event: Event, name: str = name) -> None:
            await gate.wait()
            ran.append(name)

        registry.subscribe(NAME, worker, id="worker")
        runtimes.append(EventRuntime(registry, store=store))
    drained = anyio.Event()

    async def drain() -> None:
        await runtimes[0].drain()
        drained.set()

    async with running(*runtimes):
        await runtimes[0].publish(NAME)
        await until(lambda: _leased(store, 1))
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drain)
            await anyio.wait_all_tasks_blocked()
            assert not drained.is_set()
            gate.set()
            with anyio.fail_after(10):
                await drained.wait()
    assert len(ran) == 1


async def test_a_receiver_subscribed_while_running_gets_its_deliveries(
    registry: Registry,
) -> None:
    """A subscription made after the start is registered with the next claim."""
    store = MemoryStore()
    ran: list[Event] = []

    async def late(event: Event) -> None:
        ran.append(event)

    async with EventRuntime(registry, store=store) as runtime:
        registry.subscribe(NAME, late, id="late")
        event = await runtime.publish(NAME)
        with anyio.fail_after(10):
            await runtime.drain()
        (consumer,) = await store.consumers()
        assert consumer.routes == (Route(NAME, "late"),)
    assert ran == [event]


class FailingPublishStore(MemoryStore):
    """A store whose next ``publish`` call fails, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.calls: list[int] = []

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        self.calls.append(len(events))
        await anyio.lowlevel.checkpoint()
        if self.fail:
            self.fail = False
            raise aevents.StoreError("memory", "database or disk is full")
        return await super().publish(events)


async def test_a_refused_write_fails_each_publish_in_it_and_the_runtime_goes_on(
    registry: Registry,
) -> None:
    """Every publish in a refused write raises StoreError having added nothing; later
    publishes work, and their room in the buffer was given back."""
    store = FailingPublishStore()
    ran: list[Event] = []

    async def worker(event: Event) -> None:
        ran.append(event)

    registry.subscribe(NAME, worker, id="worker")
    errors: list[BaseException] = []

    async def publish(runtime: EventRuntime) -> None:
        try:
            await runtime.publish(NAME)
        except aevents.StoreError as error:
            errors.append(error)

    async with EventRuntime(registry, store=store, buffer=8) as runtime:
        store.fail = True
        async with anyio.create_task_group() as tasks:
            for _ in range(5):
                tasks.start_soon(publish, runtime)
        assert len(errors) == store.calls[0]  # the first write, refused, held these
        assert all("disk is full" in str(error) for error in errors)
        event = await runtime.publish(NAME)
        with anyio.fail_after(10):
            await runtime.drain()
        assert runtime.stats().queued == 0
        assert runtime.stats().published == 6 - len(errors)
    assert event in ran
    assert len(ran) == 6 - len(errors)


async def test_the_lease_option_sets_how_long_a_claim_is_held() -> None:
    """EventRuntime(lease=) is the length of each claim and of the consumer's registration."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    registry = Registry()
    release = anyio.Event()

    async def worker(event: Event) -> None:
        await release.wait()

    registry.subscribe(NAME, worker, id="worker")
    runtime = EventRuntime(registry, store=store, lease=2.5)
    assert runtime.lease == 2.5
    async with running(runtime):
        await runtime.publish(NAME)
        await until(lambda: _leased(store, 1))
        (lease,) = await store.leases()
        assert lease.expires_at - clock.now == timedelta(seconds=2.5)
        (consumer,) = await store.consumers()
        assert consumer.expires_at - clock.now == timedelta(seconds=2.5)
        release.set()


async def test_a_retry_due_at_once_claimed_while_its_outcome_is_written_still_runs(
    tmp_path: Path,
) -> None:
    """A failed attempt rescheduled with no delay can be claimed again before the settle
    task has finished with its outcome: the new claim is held (it runs), not forgotten
    as the old one is, which left it leased and unrun until its lease ran out. On trio
    the order varies from run to run, so the case is played many times."""

    async def failing(event: Event) -> None:
        raise RuntimeError("always")

    for round_ in range(40):
        registry = Registry()
        registry.subscribe("order:placed", failing, id="failing")
        store = SQLiteStore(tmp_path / f"journal-{round_}.db")
        retry = RetryPolicy(attempts=3, initial_delay=0, jitter=0)
        async with EventRuntime(registry, retry=retry, store=store) as runtime:
            await runtime.publish("order:placed")
            with anyio.fail_after(10):  # the lease is 30 s: a forgotten claim stalls here
                await runtime.drain()
            assert runtime.stats().dead == 1
