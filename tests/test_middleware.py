"""Middleware: the hooks around publish and around each delivery attempt, and failure logs."""

from __future__ import annotations

import logging
import threading
from contextvars import ContextVar
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

import aevents
from aevents import (
    DeliveryInfo,
    Event,
    EventRuntime,
    MemoryStore,
    Middleware,
    Publishing,
    Registry,
    RetryPolicy,
)

pytestmark = pytest.mark.anyio

ONCE = RetryPolicy(attempts=1)
TWICE = RetryPolicy(attempts=2, initial_delay=0, jitter=0)


class Recorder(Middleware):
    """Writes every hook call to a shared journal, tagged with its own label."""

    def __init__(self, label: str, calls: list[tuple[Any, ...]]) -> None:
        self.label, self.calls = label, calls

    def before_publish(self, publishing: Publishing) -> Any:
        self.calls.append((self.label, "before_publish", publishing.name))
        return f"{self.label}-publish-state"

    def after_publish(
        self, publishing: Publishing, state: Any, error: BaseException | None
    ) -> None:
        event_name = None if publishing.event is None else publishing.event.name
        self.calls.append((self.label, "after_publish", state, event_name, type(error)))

    def before_delivery(self, delivery: DeliveryInfo) -> Any:
        self.calls.append((self.label, "before_delivery", delivery.receiver_id, delivery.attempt))
        return f"{self.label}-delivery-state"

    def after_delivery(
        self, delivery: DeliveryInfo, state: Any, error: BaseException | None
    ) -> None:
        self.calls.append((self.label, "after_delivery", state, type(error)))


async def test_befores_run_in_order_and_afters_in_reverse(registry: Registry) -> None:
    """Two middlewares nest like an onion around both the publish and the attempt."""
    calls: list[tuple[Any, ...]] = []

    async def receiver(event: Event) -> None:
        calls.append(("receiver", event.name))

    registry.subscribe("order:placed", receiver, id="receiver")
    middleware = [Recorder("outer", calls), Recorder("inner", calls)]
    async with EventRuntime(registry, middleware=middleware) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    assert calls == [
        ("outer", "before_publish", "order:placed"),
        ("inner", "before_publish", "order:placed"),
        ("inner", "after_publish", "inner-publish-state", "order:placed", type(None)),
        ("outer", "after_publish", "outer-publish-state", "order:placed", type(None)),
        ("outer", "before_delivery", "receiver", 1),
        ("inner", "before_delivery", "receiver", 1),
        ("receiver", "order:placed"),
        ("inner", "after_delivery", "inner-delivery-state", type(None)),
        ("outer", "after_delivery", "outer-delivery-state", type(None)),
    ]


async def test_before_publish_can_add_metadata_that_receivers_see(registry: Registry) -> None:
    """Metadata added by before_publish is part of the event, as a tenant id would be."""
    tenant: ContextVar[str] = ContextVar("tenant")
    seen: list[Event] = []

    class Tenancy(Middleware):
        def before_publish(self, publishing: Publishing) -> None:
            publishing.metadata["tenant"] = tenant.get()

    async def receiver(event: Event) -> None:
        seen.append(event)

    registry.subscribe("order:placed", receiver, id="receiver")
    tenant.set("acme")
    async with EventRuntime(registry, middleware=[Tenancy()]) as runtime:
        event = await runtime.publish("order:placed", metadata={"source": "web"})
        with anyio.fail_after(5):
            await runtime.drain()
    assert dict(event.metadata) == {"source": "web", "tenant": "acme"}
    assert seen == [event]


async def test_a_before_publish_that_raises_rejects_the_publish(registry: Registry) -> None:
    """Its error reaches the publisher, nothing is accepted, and entered afters see it."""
    calls: list[tuple[Any, ...]] = []
    delivered: list[Event] = []

    class Gate(Middleware):
        def before_publish(self, publishing: Publishing) -> None:
            raise PermissionError(f"{publishing.name} is not allowed")

    async def receiver(event: Event) -> None:
        delivered.append(event)

    registry.subscribe("order:placed", receiver, id="receiver")
    middleware = [Recorder("outer", calls), Gate(), Recorder("never", calls)]
    async with EventRuntime(registry, middleware=middleware) as runtime:
        with pytest.raises(PermissionError, match="order:placed is not allowed"):
            await runtime.publish("order:placed")
        with pytest.raises(PermissionError):
            runtime.publish_nowait("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().published == 0
    assert delivered == []
    assert (
        calls
        == [
            ("outer", "before_publish", "order:placed"),
            ("outer", "after_publish", "outer-publish-state", None, PermissionError),
        ]
        * 2
    )


async def test_after_publish_sees_the_error_of_a_failed_publish(registry: Registry) -> None:
    """A bad name or payload reaches after_publish as the error, with no event."""
    calls: list[tuple[Any, ...]] = []
    async with EventRuntime(registry, middleware=[Recorder("m", calls)]) as runtime:
        with pytest.raises(aevents.InvalidEventNameError):
            await runtime.publish("not a name")
        with pytest.raises(aevents.PayloadError):
            runtime.publish_nowait("order:placed", payload={"when": object()})
    assert calls == [
        ("m", "before_publish", "not a name"),
        ("m", "after_publish", "m-publish-state", None, aevents.InvalidEventNameError),
        ("m", "before_publish", "order:placed"),
        ("m", "after_publish", "m-publish-state", None, aevents.PayloadError),
    ]


async def test_publish_threadsafe_runs_the_publish_hooks_once(registry: Registry) -> None:
    """A publish from a foreign thread passes through the hooks once, on the loop's thread."""
    threads: list[int] = []

    class Where(Middleware):
        def before_publish(self, publishing: Publishing) -> None:
            threads.append(threading.get_ident())

    async with EventRuntime(registry, middleware=[Where()]) as runtime:
        event = await anyio.to_thread.run_sync(lambda: runtime.publish_threadsafe("order:placed"))
        assert threads == [threading.get_ident()]
    assert event.name == "order:placed"


async def test_a_before_delivery_that_raises_fails_the_attempt(registry: Registry) -> None:
    """The receiver is not called; the attempt is retried, then dead-lettered."""
    called: list[int] = []

    class Refuse(Middleware):
        def before_delivery(self, delivery: DeliveryInfo) -> None:
            raise LookupError(f"no tenant for {delivery.receiver_id}")

    async def receiver(event: Event) -> None:
        called.append(1)

    registry.subscribe("order:placed", receiver, id="receiver", retry=TWICE)
    async with EventRuntime(registry, middleware=[Refuse()]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
        (letter,) = await runtime.dead_letters()
    assert called == []
    assert (stats.failed, stats.retried, stats.dead) == (2, 1, 1)
    assert (letter.error_type, letter.error_message) == ("LookupError", "no tenant for receiver")


async def test_after_delivery_sees_the_receivers_error_and_cannot_swallow_it(
    registry: Registry,
) -> None:
    """The receiver's exception reaches every after_delivery and still fails the delivery."""
    calls: list[tuple[Any, ...]] = []

    async def receiver(event: Event) -> None:
        raise ValueError("bad order")

    registry.subscribe("order:placed", receiver, id="receiver", retry=ONCE)
    async with EventRuntime(registry, middleware=[Recorder("m", calls)]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().dead == 1
    assert calls[-1] == ("m", "after_delivery", "m-delivery-state", ValueError)


async def test_an_after_hook_that_raises_is_logged_and_ignored(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken after hook changes no outcome, and the hooks outside it still run."""
    calls: list[tuple[Any, ...]] = []

    class Broken(Middleware):
        def after_publish(
            self, publishing: Publishing, state: Any, error: BaseException | None
        ) -> None:
            raise RuntimeError("after_publish is broken")

        def after_delivery(
            self, delivery: DeliveryInfo, state: Any, error: BaseException | None
        ) -> None:
            raise RuntimeError("after_delivery is broken")

    delivered: list[Event] = []

    async def receiver(event: Event) -> None:
        delivered.append(event)

    registry.subscribe("order:placed", receiver, id="receiver")
    caplog.set_level(logging.ERROR, logger="aevents.middleware")
    async with EventRuntime(registry, middleware=[Recorder("outer", calls), Broken()]) as runtime:
        event = await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert delivered == [event]
    assert (stats.delivered, stats.failed) == (1, 0)
    assert ("outer", "after_publish", "outer-publish-state", "order:placed", type(None)) in calls
    assert ("outer", "after_delivery", "outer-delivery-state", type(None)) in calls
    messages = [record.getMessage() for record in caplog.records]
    assert any("raised in after_publish for 'order:placed'; ignored" in m for m in messages)
    assert any("raised in after_delivery for receiver 'receiver'" in m for m in messages)


async def test_a_context_variable_set_before_delivery_reaches_every_kind_of_receiver(
    registry: Registry,
) -> None:
    """Async receivers, and sync ones on worker threads, see what before_delivery set."""
    request_id: ContextVar[str] = ContextVar("request_id", default="unset")
    seen: dict[str, str] = {}

    class Context(Middleware):
        def before_delivery(self, delivery: DeliveryInfo) -> Any:
            return request_id.set(f"req-{delivery.receiver_id}")

        def after_delivery(
            self, delivery: DeliveryInfo, state: Any, error: BaseException | None
        ) -> None:
            request_id.reset(state)

    async def async_receiver(event: Event) -> None:
        seen["async"] = request_id.get()

    def sync_receiver(event: Event) -> None:
        seen["sync"] = request_id.get()

    registry.subscribe("order:placed", async_receiver, id="async")
    registry.subscribe("order:placed", sync_receiver, id="sync")
    async with EventRuntime(registry, middleware=[Context()]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    assert seen == {"async": "req-async", "sync": "req-sync"}


async def test_middleware_can_be_added_and_removed_while_running(registry: Registry) -> None:
    """add_middleware applies from the next publish and attempt; remove_middleware stops it."""
    calls: list[tuple[Any, ...]] = []

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:placed", receiver, id="receiver")
    recorder = Recorder("late", calls)
    async with EventRuntime(registry, workers=1) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        runtime.add_middleware(recorder)
        assert runtime.middleware == (recorder,)
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.remove_middleware(recorder) is True
        assert runtime.remove_middleware(recorder) is False
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    assert [call[1] for call in calls] == [
        "before_publish",
        "after_publish",
        "before_delivery",
        "after_delivery",
    ]


def test_middleware_must_subclass_middleware_and_be_added_once() -> None:
    """Anything else, or the same middleware twice, is a ConfigurationError."""
    with pytest.raises(aevents.ConfigurationError, match=r"must subclass aevents\.Middleware"):
        EventRuntime(middleware=[object()])  # type: ignore[list-item]
    middleware = Middleware()
    runtime = EventRuntime(middleware=[middleware])
    with pytest.raises(aevents.ConfigurationError, match="already added"):
        runtime.add_middleware(middleware)


async def test_delivery_hooks_run_around_durable_deliveries(registry: Registry) -> None:
    """With a store, each attempt still passes through the delivery hooks."""
    calls: list[tuple[Any, ...]] = []

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:placed", receiver, id="receiver")
    runtime = EventRuntime(registry, store=MemoryStore(), middleware=[Recorder("m", calls)])
    async with runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    assert [call[1] for call in calls] == [
        "before_publish",
        "after_publish",
        "before_delivery",
        "after_delivery",
    ]


async def test_after_delivery_sees_the_cancellation_of_an_attempt_cut_by_shutdown(
    registry: Registry,
) -> None:
    """An attempt cancelled at shutdown still closes its hooks, with the cancellation."""
    calls: list[tuple[Any, ...]] = []

    async def stuck(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe("order:placed", stuck, id="stuck")
    runtime = EventRuntime(registry, shutdown_timeout=0, middleware=[Recorder("m", calls)])
    async with runtime:
        await runtime.publish("order:placed")
        await wait_all_tasks_blocked()
    assert calls[-1] == ("m", "after_delivery", "m-delivery-state", anyio.get_cancelled_exc_class())


async def test_failure_records_carry_duration_and_escape_control_characters(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """One record per failure, with structured fields, on one line, and no payload."""

    async def receiver(event: Event) -> None:
        raise ValueError("line one\nFAKE LOG LINE \x1b[31m")

    registry.subscribe("order:placed", receiver, id="receiver", retry=TWICE)
    caplog.set_level(logging.WARNING, logger="aevents.delivery")
    async with EventRuntime(registry) as runtime:
        await runtime.publish("order:placed", payload={"card": "4111"})
        with anyio.fail_after(5):
            await runtime.drain()
    retry, dead = (record for record in caplog.records if record.name == "aevents.delivery")
    for record, level in ((retry, logging.WARNING), (dead, logging.ERROR)):
        assert record.levelno == level
        fields = record.__dict__
        assert fields["event_name"] == "order:placed"
        assert fields["receiver_id"] == "receiver"
        assert fields["error_type"] == "ValueError"
        assert isinstance(fields["duration"], float)
        assert fields["duration"] >= 0
        assert "payload" not in fields
        assert "4111" not in record.getMessage()
    assert (retry.__dict__["attempt"], dead.__dict__["attempt"]) == (1, 2)
    assert "line one\\nFAKE LOG LINE \\x1b[31m" in retry.getMessage()
    assert "\n" not in retry.getMessage()
    assert "\n" not in dead.getMessage()
    assert "ValueError: line one\\nFAKE" in dead.getMessage()


async def test_payloads_are_logged_only_when_asked(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """log_payloads=True puts the payload in the failure records' extra fields."""

    async def receiver(event: Event) -> None:
        raise ValueError("declined")

    registry.subscribe("order:placed", receiver, id="receiver", retry=ONCE)
    caplog.set_level(logging.WARNING, logger="aevents.delivery")
    async with EventRuntime(registry, log_payloads=True) as runtime:
        await runtime.publish("order:placed", payload={"order": 7})
        with anyio.fail_after(5):
            await runtime.drain()
    (record,) = (record for record in caplog.records if record.name == "aevents.delivery")
    assert record.__dict__["payload"] == {"order": 7}


class Outcomes(Middleware):
    """Writes down what each outcome hook is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_retry(self, delivery: DeliveryInfo, error: BaseException, delay: float) -> None:
        self.calls.append(("retry", delivery.receiver_id, delivery.attempt, type(error), delay))

    def on_dead_letter(self, delivery: DeliveryInfo, letter: aevents.DeadLetter) -> None:
        self.calls.append(("dead", delivery.receiver_id, delivery.attempt, letter.attempts))

    def on_dropped(self, delivery: DeliveryInfo) -> None:
        self.calls.append(("dropped", delivery.receiver_id, delivery.attempt))


async def test_outcome_hooks_say_what_became_of_each_failed_delivery(registry: Registry) -> None:
    """A failed attempt is reported as retried, then its last one as dead-lettered."""

    async def broken(event: Event) -> None:
        raise ValueError("broken")

    registry.subscribe("order:placed", broken, id="broken", retry=TWICE)
    outcomes = Outcomes()
    async with EventRuntime(registry, middleware=[outcomes]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    assert outcomes.calls == [("retry", "broken", 1, ValueError, 0), ("dead", "broken", 2, 2)]


async def test_on_dropped_names_each_delivery_shutdown_leaves_unrun(registry: Registry) -> None:
    """Queued deliveries are reported dropped; the one in flight goes to after_delivery."""

    async def stuck(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe("order:placed", stuck, id="stuck")
    outcomes = Outcomes()
    runtime = EventRuntime(registry, workers=1, shutdown_timeout=0, middleware=[outcomes])
    async with runtime:
        for _ in range(3):
            await runtime.publish("order:placed")
        await wait_all_tasks_blocked()
    assert outcomes.calls == [("dropped", "stuck", 1)] * 2
    assert runtime.stats().dropped == 3


async def test_a_broken_outcome_hook_is_logged_and_ignored(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_retry that raises changes nothing: the delivery is retried and delivered."""
    attempts: list[int] = []

    class Broken(Middleware):
        def on_retry(self, delivery: DeliveryInfo, error: BaseException, delay: float) -> None:
            raise RuntimeError("on_retry is broken")

    async def flaky(event: Event) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("once")

    registry.subscribe("order:placed", flaky, id="flaky", retry=TWICE)
    caplog.set_level(logging.ERROR, logger="aevents.middleware")
    async with EventRuntime(registry, middleware=[Broken()]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert (stats.failed, stats.retried, stats.delivered) == (1, 1, 1)
    messages = [record.getMessage() for record in caplog.records]
    assert any("raised in on_retry for receiver 'flaky'" in m for m in messages)


async def test_a_lone_middlewares_broken_after_delivery_changes_no_outcome(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """With one middleware the worker runs its hooks itself; a raise there is logged too."""

    class Broken(Middleware):
        def after_delivery(
            self, delivery: DeliveryInfo, state: Any, error: BaseException | None
        ) -> None:
            raise RuntimeError("after_delivery is broken")

    async def receiver(event: Event) -> None:
        if event.payload["fail"]:
            raise ValueError("refused")

    registry.subscribe("order:placed", receiver, id="receiver", retry=ONCE)
    caplog.set_level(logging.ERROR, logger="aevents.middleware")
    async with EventRuntime(registry, middleware=[Broken()]) as runtime:
        await runtime.publish("order:placed", payload={"fail": False})
        await runtime.publish("order:placed", payload={"fail": True})
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert (stats.delivered, stats.failed, stats.dead) == (1, 1, 1)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("raised in after_delivery for receiver 'receiver'" in m for m in messages) == 2
