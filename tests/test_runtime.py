"""EventRuntime: publishing, backpressure, cancellation, module-level routing, stats."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from anyio import wait_all_tasks_blocked

import aevents
from aevents import Event, EventRuntime, Registry

pytestmark = pytest.mark.anyio


class Recorder:
    """An async receiver that records what it sees."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


class Gate:
    """An async receiver that blocks until opened, so a test controls the queue."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.entered = 0
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.entered += 1
        await self.opened.wait()
        self.events.append(event)


async def test_publish_delivers_the_round_tripped_payload(registry: Registry) -> None:
    """A receiver gets the event publish returned, its payload as orjson hands it back."""
    recorder = Recorder()
    registry.subscribe("user:account:created", recorder, id="recorder")
    async with EventRuntime(registry) as runtime:
        event = await runtime.publish(
            "user:account:created", payload={"user_id": 1, "tags": ("a", "b")}
        )
        with anyio.fail_after(5):
            await runtime.drain()
    assert recorder.events == [event]
    assert event.payload == {"user_id": 1, "tags": ["a", "b"]}
    assert event.name == "user:account:created"
    assert event.occurred_at.tzinfo is not None
    assert abs((datetime.now(UTC) - event.occurred_at).total_seconds()) < 60


async def test_publisher_mutating_its_dict_later_does_not_reach_receivers(
    registry: Registry,
) -> None:
    """The payload is copied at publish time; later changes by the publisher are invisible."""
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    payload: dict[str, Any] = {"lines": [1, 2]}
    async with EventRuntime(registry) as runtime:
        await runtime.publish("order:placed", payload=payload)
        payload["lines"].append(3)
        with anyio.fail_after(5):
            await runtime.drain()
    assert recorder.events[0].payload == {"lines": [1, 2]}


async def test_both_name_styles_and_patterns_route(registry: Registry) -> None:
    """Exact names, `*`, `**` and dotted names all reach their receivers."""
    seen: dict[str, list[str]] = {"exact": [], "star": [], "globstar": [], "dotted": []}

    def record(key: str) -> Any:
        async def receiver(event: Event) -> None:
            seen[key].append(event.name)

        return receiver

    registry.subscribe("user:account:created", record("exact"), id="exact")
    registry.subscribe("user:*:created", record("star"), id="star")
    registry.subscribe("user:**", record("globstar"), id="globstar")
    registry.subscribe("user.*", record("dotted"), id="dotted")
    async with EventRuntime(registry) as runtime:
        await runtime.publish("user:account:created")
        await runtime.publish("user:emails:created")
        await runtime.publish("user:account-primary-email:changed")
        await runtime.publish("user.created")
        with anyio.fail_after(5):
            await runtime.drain()
    assert seen["exact"] == ["user:account:created"]
    assert seen["star"] == ["user:account:created", "user:emails:created"]
    assert sorted(seen["globstar"]) == [
        "user:account-primary-email:changed",
        "user:account:created",
        "user:emails:created",
    ]
    assert seen["dotted"] == ["user.created"]


async def test_unrouted_names_are_accepted_and_counted(registry: Registry) -> None:
    """Publishing a name nobody listens to is not an error; stats count it."""
    async with EventRuntime(registry) as runtime:
        event = await runtime.publish("nobody:listens")
        stats = runtime.stats()
    assert event.name == "nobody:listens"
    assert (stats.published, stats.unrouted, stats.delivered) == (1, 1, 0)


async def test_subscribing_while_running_takes_effect_for_the_next_publish(
    registry: Registry,
) -> None:
    """The runtime's route cache follows the registry."""
    recorder = Recorder()
    async with EventRuntime(registry) as runtime:
        await runtime.publish("late:subscriber")
        registry.subscribe("late:*", recorder, id="late")
        await runtime.publish("late:subscriber")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().unrouted == 1
    assert len(recorder.events) == 1


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("user:*:created", "wildcard"),
        ("", "empty"),
        ("user::x", "empty"),
        ("user created", "white space"),
        ("user:\x1b[31m", "'\\x1b'"),
    ],
)
async def test_bad_names_fail_at_the_call_site_and_queue_nothing(
    registry: Registry, name: str, fragment: str
) -> None:
    """Patterns, empty segments, spaces and control characters raise InvalidEventNameError."""
    registry.subscribe("**", Recorder(), id="everything")
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.InvalidEventNameError) as raised:
            await runtime.publish(name)
        with pytest.raises(aevents.InvalidEventNameError):
            runtime.publish_nowait(name)
        assert runtime.stats().published == 0
    assert fragment in str(raised.value)
    assert "\x1b" not in str(raised.value)


async def test_bad_payload_fails_at_the_call_site_naming_event_and_path(
    registry: Registry,
) -> None:
    """A value orjson cannot carry raises PayloadError with the key path; nothing is queued."""
    recorder = Recorder()
    registry.subscribe("order:placed", recorder, id="recorder")
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError) as raised:
            await runtime.publish("order:placed", payload={"order": {"total": float("nan")}})
        with pytest.raises(aevents.PayloadError):
            await runtime.publish("order:placed", payload=["not", "a", "mapping"])  # type: ignore[arg-type]
        with pytest.raises(aevents.PayloadError) as metadata_error:
            await runtime.publish("order:placed", metadata={"trace": 1})  # type: ignore[dict-item]
        assert runtime.stats().published == 0
    assert "'order:placed'" in str(raised.value)
    assert "payload['order']['total']" in str(raised.value)
    assert "metadata['trace']" in str(metadata_error.value)
    assert recorder.events == []


async def test_payload_size_cap_is_configurable(registry: Registry) -> None:
    """A payload larger than max_payload_bytes is refused with its size in the message."""
    async with EventRuntime(registry, max_payload_bytes=64) as runtime:
        await runtime.publish("blob:stored", payload={"data": "x" * 10})
        with pytest.raises(aevents.PayloadError, match="the limit is 64"):
            await runtime.publish("blob:stored", payload={"data": "x" * 100})


async def test_strict_runtime_accepts_only_declared_names(registry: Registry) -> None:
    """strict=True turns an undeclared name into UnknownEventError at publish."""
    catalog = aevents.Catalog({"STRICT_DECLARED": "strictmode:declared:event"})
    async with EventRuntime(registry, strict=True) as runtime:
        await runtime.publish(catalog.STRICT_DECLARED)
        with pytest.raises(aevents.UnknownEventError, match="strictmode:undeclared"):
            await runtime.publish("strictmode:undeclared")
    async with EventRuntime(registry) as lenient:
        await lenient.publish("strictmode:undeclared")


async def test_publish_nowait_raises_queue_full(registry: Registry) -> None:
    """With the buffer full, publish_nowait raises QueueFullError instead of waiting."""
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    async with EventRuntime(registry, workers=1, buffer=2) as runtime:
        runtime.publish_nowait("work:item")
        runtime.publish_nowait("work:item")
        with pytest.raises(aevents.QueueFullError, match="buffer of 2"):
            runtime.publish_nowait("work:item")
        assert runtime.stats().published == 2
        gate.opened.set()
    assert len(gate.events) == 2


async def test_publish_waits_for_room_then_proceeds(registry: Registry) -> None:
    """publish blocks while the buffer is full and returns once a worker frees a slot."""
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    returned = anyio.Event()
    async with EventRuntime(registry, workers=1, buffer=1) as runtime:
        runtime.publish_nowait("work:item")
        await wait_all_tasks_blocked()  # the worker holds the first, blocked in the receiver
        runtime.publish_nowait("work:item")  # fills the buffer

        async def third() -> None:
            await runtime.publish("work:item")
            returned.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(third)
            await wait_all_tasks_blocked()
            assert not returned.is_set()
            assert runtime.stats().queued == 1
            gate.opened.set()
            with anyio.fail_after(5):
                await returned.wait()
        with anyio.fail_after(5):
            await runtime.drain()
    assert len(gate.events) == 3


async def test_cancelling_a_waiting_publish_accepts_nothing(registry: Registry) -> None:
    """A publish cancelled while waiting for room leaves no delivery behind."""
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    async with EventRuntime(registry, workers=1, buffer=1) as runtime:
        runtime.publish_nowait("work:item")
        await wait_all_tasks_blocked()
        runtime.publish_nowait("work:item")
        with anyio.move_on_after(0.05) as scope:
            await runtime.publish("work:item")
        assert scope.cancelled_caught
        gate.opened.set()
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert (stats.published, stats.delivered) == (2, 2)


async def test_publish_raises_once_a_cancellation_reached_the_task(registry: Registry) -> None:
    """Cleanup code in a cancelled scope: publish raises before accepting, on every backend."""
    registry.subscribe("work:item", Recorder(), id="recorder")
    async with EventRuntime(registry) as runtime:
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.sleep(1)  # the cancellation reaches the task here
            finally:
                with pytest.raises(anyio.get_cancelled_exc_class()):
                    await runtime.publish("work:item")
        assert scope.cancelled_caught
        assert runtime.stats().published == 0


async def test_publish_is_a_cancel_point_for_another_tasks_cancel(registry: Registry) -> None:
    """A publish in a scope another task cancelled raises, even if it would not have waited."""
    registry.subscribe("work:item", Recorder(), id="recorder")
    outcomes: list[str] = []
    async with EventRuntime(registry) as runtime:

        async def publisher(started: anyio.Event) -> None:
            await runtime.publish("work:item")  # warms any per-task state
            with anyio.CancelScope() as scope:
                started.set()
                try:
                    await anyio.sleep(10)
                finally:
                    try:
                        await runtime.publish("work:item")
                    except anyio.get_cancelled_exc_class():
                        outcomes.append("cancelled")
                        raise
                    outcomes.append("published")  # pragma: no cover
            assert scope.cancelled_caught

        async with anyio.create_task_group() as tasks:
            started = anyio.Event()
            tasks.start_soon(publisher, started)
            await started.wait()
            tasks.cancel_scope.cancel()
        assert runtime.stats().published == 1
    assert outcomes == ["cancelled"]


async def test_publish_in_a_shielded_scope_goes_through(registry: Registry) -> None:
    """A shield inside a cancelled scope lets publish through, whether or not it was reached."""
    registry.subscribe("work:item", Recorder(), id="recorder")
    async with EventRuntime(registry) as runtime:
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await runtime.publish("work:item")  # not reached yet
            try:
                await anyio.sleep(1)
            finally:
                with anyio.CancelScope(shield=True):
                    await runtime.publish("work:item")  # reached, and shielded from it
        assert runtime.stats().published == 2


async def test_a_cancel_not_yet_delivered_is_honoured_by_backend(
    registry: Registry, anyio_backend_name: str
) -> None:
    """A scope the task cancelled itself, with no yield since: what publish does, per backend.

    On trio, publish is a full cancel point and raises. On asyncio it is
    accepted: the cancellation reaches the task at its next yield (checking
    for it on every publish costs about 1 µs, a fifth of a publish).
    """
    registry.subscribe("work:item", Recorder(), id="recorder")
    async with EventRuntime(registry) as runtime:
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await runtime.publish("work:item")
            finally:
                published = runtime.stats().published
            await anyio.lowlevel.checkpoint()  # asyncio: raises here
        assert scope.cancelled_caught
    assert published == (1 if anyio_backend_name == "asyncio" else 0)


class _PublishHook(aevents.Middleware):
    def before_publish(self, publishing: aevents.Publishing) -> None:
        publishing.metadata["hooked"] = "yes"


@pytest.mark.parametrize("path", ["plain", "idempotency_key", "publish_middleware"])
async def test_a_publish_that_wakes_an_idle_worker_yields_once_to_it(
    registry: Registry, anyio_backend_name: str, path: str
) -> None:
    """A publish that wakes an idle worker yields to the scheduler once before it returns,
    so its delivery need not wait for the publisher's next yield; with every worker busy
    it does not yield. On asyncio the woken worker runs first; trio runs the tasks of one
    turn in no set order, so there it is only the yield that is certain. The same on the
    paths of an idempotency key and of publish hooks."""
    ran: list[int] = []
    release = anyio.Event()
    middleware = [_PublishHook()] if path == "publish_middleware" else []

    def options(n: int) -> dict[str, Any]:
        return {"idempotency_key": f"item-{n}"} if path == "idempotency_key" else {}

    async def worker(event: Event) -> None:
        ran.append(event.payload["n"])
        if event.payload["n"] == 1:
            await release.wait()

    registry.subscribe("work:item", worker, id="worker")
    async with EventRuntime(registry, workers=1, middleware=middleware) as runtime:
        await wait_all_tasks_blocked()  # the one worker is idle
        await runtime.publish("work:item", payload={"n": 0}, **options(0))
        if anyio_backend_name == "asyncio":
            assert ran == [0], "the woken worker ran before publish returned"
        await runtime.publish("work:item", payload={"n": 1}, **options(1))
        await wait_all_tasks_blocked()
        assert ran == [0, 1]  # the worker is busy from here on

        sibling_ran = False
        sibling_go = anyio.Event()

        async def sibling() -> None:
            nonlocal sibling_ran
            await sibling_go.wait()
            sibling_ran = True

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sibling)
            await wait_all_tasks_blocked()
            sibling_go.set()  # runnable from here, at the next yield
            await runtime.publish("work:item", payload={"n": 2}, **options(2))
            assert not sibling_ran, "a publish that woke no worker yielded"
        release.set()
        with anyio.fail_after(10):
            await runtime.drain()
    assert ran == [0, 1, 2]


async def test_module_publish_reaches_the_running_runtime(registry: Registry) -> None:
    """aevents.publish goes to the runtime whose async with encloses the caller."""
    recorder = Recorder()
    registry.subscribe("user:account:created", recorder, id="recorder")
    async with EventRuntime(registry) as runtime:
        assert aevents.current_runtime() is runtime
        event = await aevents.publish("user:account:created", payload={"user_id": 7})
        aevents.publish_nowait("user:account:created")
        with anyio.fail_after(5):
            await runtime.drain()
    assert recorder.events[0] == event
    assert len(recorder.events) == 2


async def test_module_publish_without_a_runtime_says_how_to_start_one() -> None:
    """With nothing running, module-level publish raises RuntimeNotRunningError with a fix.

    Which fix depends on the frameworks this process imported (see
    tests/integration/test_not_running_hints.py, which runs each in a fresh process).
    """
    with pytest.raises(aevents.RuntimeNotRunningError) as raised:
        await aevents.publish("user:account:created")
    assert str(raised.value).endswith(raised.value.fix)
    assert "async with aevents.EventRuntime()" in raised.value.fix or (
        "events_lifespan()" in raised.value.fix or "get_asgi_application()" in raised.value.fix
    )


async def test_module_publish_from_a_task_started_outside_the_runtime(registry: Registry) -> None:
    """A request task spawned before the lifespan's async with still finds the runtime."""
    recorder = Recorder()
    registry.subscribe("http:request:handled", recorder, id="recorder")
    started = anyio.Event()
    stop = anyio.Event()
    published: list[Event] = []

    async def lifespan() -> None:
        async with EventRuntime(registry) as runtime:
            started.set()
            await stop.wait()
            with anyio.fail_after(5):
                await runtime.drain()

    async def request_handler() -> None:  # spawned by the server, not by the lifespan
        await started.wait()
        published.append(await aevents.publish("http:request:handled"))
        stop.set()

    async with anyio.create_task_group() as server:
        server.start_soon(request_handler)
        server.start_soon(lifespan)
    assert recorder.events == published


async def test_publishing_outside_the_lifetime_raises(registry: Registry) -> None:
    """Before entering: RuntimeNotRunningError; after leaving: RuntimeClosedError."""
    runtime = EventRuntime(registry)
    with pytest.raises(aevents.RuntimeNotRunningError):
        await runtime.publish("user:account:created")
    async with runtime:
        pass
    with pytest.raises(aevents.RuntimeClosedError):
        await runtime.publish("user:account:created")
    with pytest.raises(aevents.RuntimeClosedError):
        runtime.publish_nowait("user:account:created")
    with pytest.raises(aevents.AeventsError, match="started once"):
        async with runtime:
            pass  # pragma: no cover


async def test_publish_threadsafe_from_a_foreign_thread(registry: Registry) -> None:
    """A plain thread publishes and gets the accepted Event back."""
    recorder = Recorder()
    registry.subscribe("sync:view:called", recorder, id="recorder")
    async with EventRuntime(registry) as runtime:

        def sync_view() -> Event:
            return aevents.publish_threadsafe("sync:view:called", payload={"n": 1})

        event = await anyio.to_thread.run_sync(sync_view)
        with pytest.raises(aevents.AeventsError, match="event loop's thread"):
            runtime.publish_threadsafe("sync:view:called")
        with anyio.fail_after(5):
            await runtime.drain()
    assert recorder.events == [event]
    with pytest.raises(aevents.RuntimeClosedError):
        await anyio.to_thread.run_sync(lambda: runtime.publish_threadsafe("sync:view:called"))


async def test_drain_waits_for_events_published_by_receivers(registry: Registry) -> None:
    """drain covers what deliveries publish in turn, however deep the chain."""
    recorder = Recorder()

    async def relay(event: Event) -> None:
        hops = int(event.payload["hops"])
        if hops:
            await aevents.publish("chain:hop", payload={"hops": hops - 1})

    registry.subscribe("chain:hop", relay, id="relay")
    registry.subscribe("chain:hop", recorder, id="recorder")
    async with EventRuntime(registry, workers=2) as runtime:
        await runtime.publish("chain:hop", payload={"hops": 10})
        with anyio.fail_after(5):
            await runtime.drain()
        assert len(recorder.events) == 11
        assert runtime.stats().queued == 0


async def test_drain_does_not_wait_for_later_publishes(registry: Registry) -> None:
    """Deliveries accepted after drain() was called do not hold it up."""
    first, second = Gate(), Gate()
    registry.subscribe("work:first", first, id="first")
    registry.subscribe("work:second", second, id="second")
    drained = anyio.Event()
    async with EventRuntime(registry) as runtime:
        await runtime.publish("work:first")

        async def drainer() -> None:
            await runtime.drain()
            drained.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drainer)
            await wait_all_tasks_blocked()
            await runtime.publish("work:second")
            await wait_all_tasks_blocked()
            assert not drained.is_set()
            first.opened.set()
            with anyio.fail_after(5):
                await drained.wait()
            assert second.entered == 1
            assert second.events == []
            second.opened.set()


async def test_stats_count_the_lifecycle_of_deliveries(registry: Registry) -> None:
    """stats() reports published, delivered, queued and in-flight deliveries."""
    gate = Gate()
    registry.subscribe("work:item", gate, id="gate")
    registry.subscribe("work:item", Recorder(), id="recorder")
    async with EventRuntime(registry, workers=1) as runtime:
        await runtime.publish("work:item")
        await runtime.publish("work:item")
        await wait_all_tasks_blocked()
        stats = runtime.stats()
        assert isinstance(stats, aevents.RuntimeStats)
        assert (stats.published, stats.in_flight, stats.queued) == (2, 1, 3)
        gate.opened.set()
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert (stats.delivered, stats.queued, stats.in_flight, stats.failed) == (4, 0, 0, 0)


async def test_sync_receivers_run_on_the_runtimes_own_threads(registry: Registry) -> None:
    """Sync receivers run off the loop, on a limiter that is not anyio's default one."""
    loop_thread = threading.get_ident()
    threads: list[int] = []
    default_tokens: list[float] = []
    release = threading.Event()
    running = threading.Semaphore(0)

    def blocking(event: Event) -> None:
        threads.append(threading.get_ident())
        running.release()
        release.wait(5)

    registry.subscribe("sync:work", blocking, id="blocking")
    async with EventRuntime(registry, workers=4, sync_threads=2) as runtime:
        for _ in range(4):
            await runtime.publish("sync:work")
        for _ in range(2):
            await anyio.to_thread.run_sync(running.acquire)
        await wait_all_tasks_blocked()
        default_tokens.append(anyio.to_thread.current_default_thread_limiter().borrowed_tokens)
        assert runtime.stats().in_flight == 4
        assert len(threads) == 2  # the other two wait for one of the runtime's two threads
        release.set()
        with anyio.fail_after(5):
            await runtime.drain()
    assert len(threads) == 4
    assert loop_thread not in threads
    assert default_tokens == [0]


async def test_inline_sync_receivers_run_on_the_loop(registry: Registry) -> None:
    """inline=True runs a cheap sync receiver on the event loop's thread."""
    loop_thread = threading.get_ident()
    threads: list[int] = []
    registry.subscribe(
        "sync:cheap", lambda event: threads.append(threading.get_ident()), id="cheap", inline=True
    )
    async with EventRuntime(registry) as runtime:
        await runtime.publish("sync:cheap")
        with anyio.fail_after(5):
            await runtime.drain()
    assert threads == [loop_thread]


async def test_a_blocking_sync_receiver_does_not_stall_the_loop(registry: Registry) -> None:
    """While a sync receiver blocks its thread, other tasks on the loop keep running."""
    release = threading.Event()
    entered = threading.Event()

    def blocking(event: Event) -> None:
        entered.set()
        release.wait(5)

    registry.subscribe("sync:block", blocking, id="blocking")
    async with EventRuntime(registry) as runtime:
        await runtime.publish("sync:block")
        await anyio.to_thread.run_sync(entered.wait, 5)
        ticks = 0
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
            ticks += 1
        assert ticks == 10
        assert runtime.stats().in_flight == 1
        release.set()
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().delivered == 1


async def test_contextvars_reach_sync_receivers_on_threads(registry: Registry) -> None:
    """current_delivery() works inside a sync receiver running on a worker thread."""
    seen: list[aevents.DeliveryInfo | None] = []
    registry.subscribe(
        "sync:info", lambda event: seen.append(aevents.current_delivery()), id="info"
    )
    async with EventRuntime(registry) as runtime:
        event = await runtime.publish("sync:info")
        with anyio.fail_after(5):
            await runtime.drain()
    assert seen == [
        aevents.DeliveryInfo(
            event=event, receiver_id="info", attempt=1, pattern="sync:info", replay=False
        )
    ]
    assert aevents.current_delivery() is None


async def test_bad_configuration_fails_at_construction() -> None:
    """Nonsense sizes and policies raise ConfigurationError before anything starts."""
    for kwargs in (
        {"workers": 0},
        {"buffer": -1},
        {"timeout": 0},
        {"retry": 3},
        {"shutdown_timeout": -1},
        {"max_causation_depth": 0},
    ):
        with pytest.raises(aevents.ConfigurationError):
            EventRuntime(**kwargs)  # type: ignore[arg-type]
