"""publish_many and publish_many_nowait: a batch of events, accepted whole or not at all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked

import aevents
from aevents import (
    Event,
    EventRuntime,
    Middleware,
    PayloadError,
    Publishing,
    QueueFullError,
    Registry,
    StoreError,
)
from aevents._store import MemoryStore, SQLiteStore
from aevents.testing import EagerRuntime, capture

from .journal_store import JournalMemoryStore

pytestmark = pytest.mark.anyio

StoreFactory = Callable[[], aevents.Store]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


class Gate:
    """An async receiver that blocks until opened, so a test controls the buffer."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        await self.opened.wait()
        self.events.append(event)


class FailingStore(JournalMemoryStore):
    """A journal whose ``fail_at``-th append (counting from 1) fails, as a full disk would."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.appends = 0

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        self.appends += 1
        if self.appends == self.fail_at:
            await anyio.lowlevel.checkpoint()
            raise StoreError(":memory:", "disk full")
        await super().append(event, receiver_ids)


class BatchStore(JournalMemoryStore):
    """A journal with ``append_many``: one call, all of the batch or none of it."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.batches: list[int] = []

    async def append_many(self, entries: Sequence[tuple[Event, Sequence[str]]]) -> None:
        self.batches.append(len(entries))
        if self.fail:
            raise StoreError(":memory:", "disk full")
        for event, receiver_ids in entries:
            await super().append(event, receiver_ids)


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    return lambda: SQLiteStore(str(tmp_path / "events.db"))


def payloads(count: int) -> list[dict[str, Any]]:
    return [{"n": index} for index in range(count)]


# ---------------------------------------------------------------- the batch is accepted whole


async def test_returns_the_events_in_order_and_delivers_each(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry) as runtime:
        events = await runtime.publish_many("order:placed", payloads(5), metadata={"t": "a"})
        await runtime.drain()
        stats = runtime.stats()
    assert [event.payload["n"] for event in events] == [0, 1, 2, 3, 4]
    assert all(event.name == "order:placed" and event.metadata == {"t": "a"} for event in events)
    assert len({event.id for event in events}) == 5
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert sorted(recorder.events, key=lambda event: event.payload["n"]) == events
    assert (stats.published, stats.delivered) == (5, 5)


async def test_each_event_has_its_own_copy_of_payload_and_metadata(registry: Registry) -> None:
    shared = {"user": {"id": 1}}
    metadata = {"tenant": "a"}
    async with EventRuntime(registry) as runtime:
        first, second = await runtime.publish_many(
            "order:placed", [shared, shared], metadata=metadata
        )
    assert first.payload == second.payload == shared
    assert first.payload is not shared
    assert first.payload is not second.payload
    assert first.metadata is not second.metadata
    metadata["tenant"] = "b"
    assert first.metadata == {"tenant": "a"}


async def test_fan_out_gives_every_receiver_every_event(registry: Registry) -> None:
    recorders = [Recorder() for _ in range(3)]
    for index, recorder in enumerate(recorders):
        registry.subscribe("order:*", recorder, id=f"r{index}")
    async with EventRuntime(registry, workers=2, buffer=8) as runtime:
        events = await runtime.publish_many("order:placed", payloads(20))
        await runtime.drain()
        stats = runtime.stats()
    for recorder in recorders:
        assert sorted(recorder.events, key=lambda event: event.payload["n"]) == events
    assert (stats.published, stats.delivered) == (20, 60)


async def test_events_of_one_key_run_in_batch_order(registry: Registry) -> None:
    seen: dict[str, list[int]] = {}

    async def receiver(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        assert event.key is not None
        seen.setdefault(event.key, []).append(event.payload["n"])

    registry.subscribe("order:placed", receiver, id="r")
    keys = [("a", "b", "c", None)[index % 4] for index in range(40)]
    async with EventRuntime(registry, workers=4) as runtime:
        events = await runtime.publish_many("order:placed", payloads(40), keys=keys)
        await runtime.drain()
    assert [event.key for event in events] == keys
    for key in ("a", "b", "c"):
        assert seen[key] == [n for n in range(40) if keys[n] == key]


async def test_payloads_may_be_any_iterable_and_none_means_empty(registry: Registry) -> None:
    async with EventRuntime(registry) as runtime:
        events = await runtime.publish_many(
            "order:placed", (payload for payload in [None, {"a": 1}]), keys=iter(["k", None])
        )
    assert [event.payload for event in events] == [{}, {"a": 1}]
    assert [event.key for event in events] == ["k", None]


async def test_an_empty_batch_publishes_nothing_but_checks_the_name(registry: Registry) -> None:
    async with EventRuntime(registry) as runtime:
        assert await runtime.publish_many("order:placed", []) == []
        assert runtime.publish_many_nowait("order:placed", []) == []
        with pytest.raises(aevents.InvalidEventNameError):
            await runtime.publish_many("Bad Name", [])
        assert runtime.stats().published == 0


async def test_unrouted_events_are_counted(registry: Registry) -> None:
    async with EventRuntime(registry) as runtime:
        events = await runtime.publish_many("nobody:listens", payloads(3))
        stats = runtime.stats()
    assert len(events) == 3
    assert (stats.published, stats.unrouted) == (3, 3)


# ---------------------------------------------------------------- or not at all


async def test_a_bad_payload_at_index_k_accepts_none(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    batch: list[Any] = [*payloads(3), {"user": {"id": float("nan")}}, *payloads(2)]
    async with EventRuntime(registry) as runtime:
        with pytest.raises(PayloadError) as caught:
            await runtime.publish_many("order:placed", batch)
        with pytest.raises(PayloadError) as caught_nowait:
            runtime.publish_many_nowait("order:placed", batch)
        await runtime.drain()
        stats = runtime.stats()
    for error in (caught.value, caught_nowait.value):
        assert error.event == "order:placed"
        assert error.path == "payloads[3]['user']['id']"
        assert "nan" in error.problem
    assert (stats.published, stats.queued, recorder.events) == (0, 0, [])


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"when": object()}, "payloads[1]['when']"),
        ({1: "x"}, "payloads[1]"),
        (["not", "a", "mapping"], "payloads[1]"),
        ({"big": "x" * 2000}, "payloads[1]"),
    ],
)
async def test_payload_errors_name_the_index(registry: Registry, payload: Any, path: str) -> None:
    async with EventRuntime(registry, max_payload_bytes=1000) as runtime:
        with pytest.raises(PayloadError) as caught:
            await runtime.publish_many("order:placed", [{"ok": 1}, payload])
        assert runtime.stats().published == 0
    assert caught.value.path == path


async def test_a_bad_key_at_index_k_accepts_none(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry) as runtime:
        with pytest.raises(PayloadError) as caught:
            await runtime.publish_many("order:placed", payloads(3), keys=["a", None, 7])  # type: ignore[list-item]
        with pytest.raises(PayloadError) as too_long:
            await runtime.publish_many("order:placed", payloads(2), keys=["", "b"])
        await runtime.drain()
        stats = runtime.stats()
    assert (caught.value.path, caught.value.problem) == ("keys[2]", "expected str, got int")
    assert too_long.value.path == "keys[0]"
    assert (stats.published, recorder.events) == (0, [])


@pytest.mark.parametrize(
    ("batch", "keys", "path", "words"),
    [
        ({"n": 1}, None, "payloads", "got dict: pass [payload]"),
        ("abc", None, "payloads", "got str"),
        (5, None, "payloads", "got int"),
        ([{}, {}], "ab", "keys", "got str"),
        ([{}, {}], ["a"], "keys", "has 1 entries for 2 payloads"),
    ],
)
async def test_the_shape_of_the_batch_is_checked(
    registry: Registry, batch: Any, keys: Any, path: str, words: str
) -> None:
    async with EventRuntime(registry) as runtime:
        with pytest.raises(PayloadError) as caught:
            await runtime.publish_many("order:placed", batch, keys=keys)
        assert runtime.stats().published == 0
    assert caught.value.path == path
    assert words in caught.value.problem


async def test_idempotency_keys_are_refused_with_a_typed_error(registry: Registry) -> None:
    async with EventRuntime(registry) as runtime:
        with pytest.raises(PayloadError, match=r"publish_many\(\) takes no idempotency keys"):
            await runtime.publish_many(
                "order:placed", payloads(2), metadata={"idempotency_key": "k"}
            )
        with pytest.raises(PayloadError, match=r"publish_many_nowait\(\) takes no idempotency"):
            runtime.publish_many_nowait(
                "order:placed", payloads(2), metadata={"idempotency_key": "k"}
            )
        assert runtime.stats().published == 0


async def test_bad_metadata_accepts_none(registry: Registry) -> None:
    async with EventRuntime(registry) as runtime:
        with pytest.raises(PayloadError) as caught:
            await runtime.publish_many("order:placed", payloads(2), metadata={"n": 1})  # type: ignore[dict-item]
        assert runtime.stats().published == 0
    assert caught.value.path == "metadata['n']"


async def test_nowait_refuses_the_whole_batch_when_it_does_not_fit(registry: Registry) -> None:
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    async with EventRuntime(registry, workers=1, buffer=4) as runtime:
        first = runtime.publish_many_nowait("work:item", payloads(2))
        await wait_all_tasks_blocked()  # the worker holds one, one waits: 3 slots free
        with pytest.raises(QueueFullError):
            runtime.publish_many_nowait("work:item", payloads(4))
        assert runtime.stats().published == 2
        fits = runtime.publish_many_nowait("work:item", payloads(3))
        with pytest.raises(QueueFullError):
            runtime.publish_many_nowait("work:item", payloads(1))
        gate.opened.set()
        await runtime.drain()
        stats = runtime.stats()
    assert gate.events == first + fits
    assert (stats.published, stats.delivered) == (5, 5)


async def test_cancelled_while_waiting_for_room_accepts_none(registry: Registry) -> None:
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    async with EventRuntime(registry, workers=1, buffer=4) as runtime:
        await runtime.publish_many("work:item", payloads(3))
        await wait_all_tasks_blocked()
        outcome: list[str] = []

        async def publisher(scope: anyio.CancelScope) -> None:
            with scope:
                await runtime.publish_many("work:item", payloads(3))
                outcome.append("accepted")  # pragma: no cover
            outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publisher, scope)
            await wait_all_tasks_blocked()  # it waits for room for all three
            assert runtime.stats().queued == 2
            scope.cancel()
        assert outcome == ["cancelled"]
        gate.opened.set()
        await runtime.drain()
        stats = runtime.stats()
    assert (stats.published, stats.delivered, len(gate.events)) == (3, 3, 3)


async def test_a_waiting_batch_goes_in_whole_once_there_is_room(registry: Registry) -> None:
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    async with EventRuntime(registry, workers=1, buffer=4) as runtime:
        first = await runtime.publish_many("work:item", payloads(4))
        await wait_all_tasks_blocked()
        async with anyio.create_task_group() as tasks:
            later: list[list[Event]] = []

            async def publisher() -> None:
                later.append(await runtime.publish_many("work:item", payloads(3)))

            tasks.start_soon(publisher)
            await wait_all_tasks_blocked()
            assert runtime.stats().published == 4  # none of the three is in yet
            gate.opened.set()
        await runtime.drain()
    assert gate.events == first + later[0]


async def test_a_batch_larger_than_the_buffer_waits_for_it_to_empty(registry: Registry) -> None:
    """It neither deadlocks nor goes in half: it waits until the buffer is empty."""
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    async with EventRuntime(registry, workers=1, buffer=4) as runtime:
        first = await runtime.publish_many("work:item", payloads(2))
        await wait_all_tasks_blocked()
        with pytest.raises(QueueFullError):
            runtime.publish_many_nowait("work:item", payloads(10))
        async with anyio.create_task_group() as tasks:
            big: list[list[Event]] = []

            async def publisher() -> None:
                big.append(await runtime.publish_many("work:item", payloads(10)))

            tasks.start_soon(publisher)
            await wait_all_tasks_blocked()
            assert runtime.stats().published == 2
            gate.opened.set()
        await runtime.drain()
        assert runtime.publish_many_nowait("work:item", payloads(10))  # empty: it goes in
        await runtime.drain()
        stats = runtime.stats()
    assert gate.events[:12] == first + big[0]
    assert (stats.published, stats.delivered) == (22, 22)


async def test_a_receiver_publishing_a_batch_larger_than_the_buffer(registry: Registry) -> None:
    """Every worker inside a receiver waiting for room would deadlock: it overshoots instead."""
    recorder = Recorder()

    async def fan(event: Event) -> None:
        await aevents.publish_many("work:item", payloads(10))

    registry.subscribe("work:start", fan, id="fan")
    registry.subscribe("work:item", recorder, id="recorder")
    async with EventRuntime(registry, workers=1, buffer=4) as runtime:
        await runtime.publish("work:start")
        with anyio.fail_after(10):
            await runtime.drain()
    assert len(recorder.events) == 10


async def test_publish_many_is_a_cancel_point(registry: Registry) -> None:
    """Once a cancellation reached the task (cleanup in a cancelled scope), nothing is accepted."""
    async with EventRuntime(registry) as runtime:
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.sleep(1)
            finally:
                with pytest.raises(anyio.get_cancelled_exc_class()):
                    await runtime.publish_many("work:item", payloads(2))
        assert runtime.stats().published == 0


async def test_closed_and_wrong_thread(registry: Registry) -> None:
    runtime = EventRuntime(registry)
    with pytest.raises(aevents.RuntimeNotRunningError):
        await runtime.publish_many("work:item", payloads(1))
    async with runtime:
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                runtime.publish_many_nowait("work:item", payloads(1))
            except aevents.WrongThreadError as error:
                errors.append(error)

        await anyio.to_thread.run_sync(other_thread)
        assert len(errors) == 1
        assert "publish_many_nowait" in str(errors[0])
    with pytest.raises(aevents.RuntimeClosedError):
        await runtime.publish_many("work:item", payloads(1))


# ---------------------------------------------------------------- with a store


async def test_a_batch_is_journaled_then_done(registry: Registry, make_store: StoreFactory) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="a")
    registry.subscribe("order:placed", Recorder(), id="b")
    store = make_store()
    async with EventRuntime(registry, store=store) as runtime:
        events = await runtime.publish_many("order:placed", payloads(30), keys=["k"] * 30)
        after_publish = await store.stats()
        await runtime.drain()
        stats = await store.stats()
    assert (after_publish.events, after_publish.pending + after_publish.done) == (30, 60)
    assert recorder.events == events  # one key: in order
    assert (stats.events, stats.pending, stats.done) == (30, 0, 60)


async def test_a_journaled_batch_replays_in_key_order(
    registry: Registry, make_store: StoreFactory
) -> None:
    """Left pending by a stop, the batch replays with each key's events in batch order."""
    never = anyio.Event()

    async def blocked(event: Event) -> None:
        await never.wait()

    registry.subscribe("order:placed", blocked, id="r")
    keys = [("a", "b")[index % 2] for index in range(20)]
    async with EventRuntime(registry, store=make_store(), shutdown_timeout=0) as runtime:
        events = await runtime.publish_many("order:placed", payloads(20), keys=keys)
    replayed = Registry()
    recorder = Recorder()
    replayed.subscribe("order:placed", recorder, id="r")
    async with EventRuntime(replayed, store=make_store()) as runtime:
        await runtime.drain()
    for key in ("a", "b"):
        assert [e.id for e in recorder.events if e.key == key] == [
            e.id for e in events if e.key == key
        ]


@pytest.mark.parametrize("fail_at", [1, 4, 10])
async def test_a_store_error_accepts_none_of_the_batch(registry: Registry, fail_at: int) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = FailingStore(fail_at)
    async with EventRuntime(registry, store=store) as runtime:
        with pytest.raises(StoreError, match="disk full"):
            await runtime.publish_many("order:placed", payloads(10))
        assert runtime.stats().queued == 0  # the room is given back
        await runtime.drain()
        stats, journal = runtime.stats(), await store.stats()
    assert (stats.published, recorder.events) == (0, [])
    assert journal.pending == 0  # nothing a replay would deliver


async def test_a_store_with_append_many_gets_the_batch_in_one_call(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = BatchStore()
    async with EventRuntime(registry, store=store) as runtime:
        events = await runtime.publish_many("order:placed", payloads(10))
        await runtime.publish_many("nobody:listens", payloads(3))  # nothing to journal
        await runtime.drain()
    assert store.batches == [10]
    assert sorted(recorder.events, key=lambda event: event.payload["n"]) == events

    failing = BatchStore(fail=True)
    async with EventRuntime(registry, store=failing) as runtime:
        with pytest.raises(StoreError):
            await runtime.publish_many("order:placed", payloads(10))
        assert (runtime.stats().published, runtime.stats().queued) == (0, 0)


async def test_nowait_with_a_store_journals_in_the_background(
    registry: Registry, make_store: StoreFactory
) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = make_store()
    async with EventRuntime(registry, store=store) as runtime:
        events = runtime.publish_many_nowait("order:placed", payloads(5), keys=["k"] * 5)
        await runtime.drain()
        stats = await store.stats()
    assert recorder.events == events
    assert (stats.events, stats.pending, stats.done) == (5, 0, 5)


async def test_nowait_delivers_what_the_journal_refused(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry, store=FailingStore(2)) as runtime:
        events = runtime.publish_many_nowait("order:placed", payloads(3), keys=["k"] * 3)
        await runtime.drain()
    assert recorder.events == events


class RefusingSharedStore(MemoryStore):
    """A shared store whose ``publish`` refuses every write, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        self.writes.append(len(events))
        raise StoreError(":memory:", "disk full")


async def test_a_shared_store_takes_the_batch_in_one_write_and_any_runtime_runs_it(
    registry: Registry,
) -> None:
    """On a shared store: one all-or-none write, then the fleet's consumers run the batch."""
    store = MemoryStore()
    writes: list[int] = []
    publish = store.publish

    async def counting(events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        writes.append(len(events))
        return await publish(events)

    store.publish = counting  # type: ignore[method-assign]
    registry.subscribe("order:placed", Recorder(), id="recorder")
    consumers = Registry()
    recorder = Recorder()
    consumers.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(consumers, store=store) as worker:
        async with EventRuntime(registry, store=store, consume=False) as web:
            events = await web.publish_many("order:placed", payloads(25), keys=["k"] * 25)
            later = web.publish_many_nowait("order:placed", payloads(5), keys=["k"] * 5)
            await web.drain()
            assert web.stats().published == 30
        with anyio.fail_after(10):
            await worker.drain()  # waits for what the store holds for its receivers
    assert writes == [25, 5]
    assert recorder.events == events + later  # one key: in publish order


async def test_a_shared_store_refusing_the_batch_accepts_none_of_it(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    store = RefusingSharedStore()
    async with EventRuntime(registry, store=store) as runtime:
        with pytest.raises(StoreError, match="disk full"):
            await runtime.publish_many("order:placed", payloads(10))
        stats = runtime.stats()
        assert (stats.published, stats.queued) == (0, 0)
    assert store.writes == [10]
    assert recorder.events == []


# ---------------------------------------------------------------- the rest of the runtime


class Hooks(Middleware):
    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.calls: list[tuple[str, Any, str | None]] = []

    def before_publish(self, publishing: Publishing) -> Any:
        n = (publishing.payload or {}).get("n")
        if n == self.refuse:
            raise ValueError(f"refused {n}")
        publishing.metadata["seen"] = "yes"
        self.calls.append(("before", n, None))
        return n

    def after_publish(
        self, publishing: Publishing, state: Any, error: BaseException | None
    ) -> None:
        assert (publishing.event is None) == (error is not None)
        self.calls.append(("after", state, None if error is None else type(error).__name__))


async def test_publish_hooks_run_once_per_event(registry: Registry) -> None:
    hooks = Hooks()
    async with EventRuntime(registry, middleware=[hooks]) as runtime:
        events = await runtime.publish_many("order:placed", payloads(2))
        events += runtime.publish_many_nowait("order:placed", payloads(1))
    assert all(event.metadata == {"seen": "yes"} for event in events)
    assert hooks.calls == [
        ("before", 0, None),
        ("before", 1, None),
        ("after", 0, None),
        ("after", 1, None),
        ("before", 0, None),
        ("after", 0, None),
    ]


async def test_a_refusing_hook_accepts_none_and_the_afters_see_it(registry: Registry) -> None:
    hooks = Hooks(refuse=2)
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry, middleware=[hooks]) as runtime:
        with pytest.raises(ValueError, match="refused 2"):
            await runtime.publish_many("order:placed", payloads(4))
        await runtime.drain()
        assert runtime.stats().published == 0
    assert recorder.events == []
    assert hooks.calls == [
        ("before", 0, None),
        ("before", 1, None),
        ("after", 0, "ValueError"),
        ("after", 1, "ValueError"),
    ]


async def test_the_afters_see_a_payload_error(registry: Registry) -> None:
    hooks = Hooks()
    async with EventRuntime(registry, middleware=[hooks]) as runtime:
        with pytest.raises(PayloadError) as caught:
            await runtime.publish_many("order:placed", [{"n": 0}, {"n": float("inf")}])
    assert caught.value.path == "payloads[1]['n']"
    assert [call[2] for call in hooks.calls if call[0] == "after"] == ["PayloadError"] * 2


async def test_capture_records_a_batch(registry: Registry) -> None:
    async with EventRuntime(registry) as runtime:
        with capture(runtime) as captured:
            await runtime.publish_many("order:placed", payloads(3))
    captured.assert_published("order:placed", times=3)
    captured.assert_published("order:placed", payload={"n": 2})


async def test_a_receiver_publishing_a_batch_carries_causation(registry: Registry) -> None:
    recorder = Recorder()

    async def split(event: Event) -> None:
        await aevents.publish_many("order:line", payloads(3))

    registry.subscribe("order:placed", split, id="split")
    registry.subscribe("order:line", recorder, id="recorder")
    async with EventRuntime(registry) as runtime:
        root = await runtime.publish("order:placed", metadata={"tenant": "t"})
        await runtime.drain()
    assert len(recorder.events) == 3
    for event in recorder.events:
        assert event.causation_id == root.id
        assert event.correlation_id == root.id
        assert event.metadata["causation_depth"] == "1"


async def test_module_level_functions_reach_the_running_runtime(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    with pytest.raises(aevents.RuntimeNotRunningError):
        await aevents.publish_many("order:placed", payloads(1))
    async with EventRuntime(registry) as runtime:
        events = await aevents.publish_many("order:placed", payloads(2), keys=["a", "a"])
        events += aevents.publish_many_nowait("order:placed", payloads(1), metadata={"m": "1"})
        await runtime.drain()
    assert sorted(recorder.events, key=lambda event: event.id) == events
    assert events[2].metadata == {"m": "1"}


# ---------------------------------------------------------------- eager mode


async def test_eager_runs_the_receivers_before_returning(registry: Registry) -> None:
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EagerRuntime(registry) as runtime:
        events = await runtime.publish_many("order:placed", payloads(3))
        assert recorder.events == events
        with pytest.raises(PayloadError):
            await runtime.publish_many("order:placed", [{"n": 1}, {"n": float("nan")}])
        assert recorder.events == events


async def test_eager_raises_a_receivers_error_after_the_whole_batch(registry: Registry) -> None:
    recorder = Recorder()

    async def picky(event: Event) -> None:
        if event.payload["n"] == 1:
            raise RuntimeError("no one")

    registry.subscribe("order:placed", picky, id="picky")
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EagerRuntime(registry, retry=aevents.RetryPolicy(attempts=1)) as runtime:
        with pytest.raises(RuntimeError, match="no one"):
            await runtime.publish_many("order:placed", payloads(3))
    assert [event.payload["n"] for event in recorder.events] == [0, 1, 2]


async def test_eager_receiver_publishing_a_batch(registry: Registry) -> None:
    recorder = Recorder()

    async def split(event: Event) -> None:
        await aevents.publish_many("order:line", payloads(2))

    registry.subscribe("order:placed", split, id="split")
    registry.subscribe("order:line", recorder, id="recorder")
    async with EagerRuntime(registry) as runtime:
        root = await runtime.publish("order:placed")
        assert [event.causation_id for event in recorder.events] == [root.id, root.id]


async def test_the_concepts_guide_example(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    """The batch example of docs/concepts.md, as it stands there."""
    async with EventRuntime(registry) as runtime:
        lines = [{"order": 7, "sku": sku} for sku in ("A-1", "B-2", "C-3")]
        events = await runtime.publish_many("order:line:added", lines, keys=["order-7"] * 3)
        print([event.payload["sku"] for event in events])  # ['A-1', 'B-2', 'C-3']
    assert capsys.readouterr().out == "['A-1', 'B-2', 'C-3']\n"


async def test_a_batch_larger_in_all_than_max_payload_bytes(registry: Registry) -> None:
    """The limit is per payload: a big batch of small payloads goes in, and a bad one
    far into it is still named by its index."""
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry, max_payload_bytes=200, buffer=10_000) as runtime:
        batch: list[Any] = [{"n": index, "pad": "x" * 100} for index in range(1000)]
        events = await runtime.publish_many("order:placed", batch)
        batch[700] = {"n": 700, "pad": "x" * 300}
        with pytest.raises(PayloadError) as caught:
            await runtime.publish_many("order:placed", batch)
        batch[700] = {"n": 700, "pad": None}  # a null sends its chunk through the slow checks
        with_null = await runtime.publish_many("order:placed", batch)
        await runtime.drain()
    assert caught.value.path == "payloads[700]"
    assert [event.payload["n"] for event in events] == list(range(1000))
    assert with_null[700].payload == {"n": 700, "pad": None}
    assert len(recorder.events) == 2000
