"""aevents.testing: capture(), EagerRuntime, isolated_registry(), dead-letter asserts, Recorder."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import anyio.to_thread
import pytest

import aevents
from aevents import (
    Catalog,
    CausationDepthError,
    ConfigurationError,
    Event,
    EventRuntime,
    InvalidEventNameError,
    Middleware,
    PayloadError,
    Registry,
    RetryPolicy,
    UnknownEventError,
)
from aevents.testing import (
    Captured,
    EagerRuntime,
    Recorder,
    assert_dead_lettered,
    assert_no_dead_letters,
    capture,
    isolated_registry,
    recording,
    subset,
)

pytestmark = pytest.mark.anyio

NO_RETRY = RetryPolicy(attempts=1)


async def _noop(event: Event) -> None:
    pass


async def _broken(event: Event) -> None:
    raise ValueError(f"broken on {event.name}")


# ---------------------------------------------------------------------- the docs' examples


async def send_receipt(event: aevents.Event) -> None:
    await aevents.publish("shop:receipt:sent", payload={"order": event.payload["order"]})


@pytest.mark.anyio
@pytest.mark.aevents(eager=True)
async def test_placing_an_order_sends_one_receipt(aevents_capture: Captured) -> None:
    """Placing an order publishes exactly one receipt, and no refund."""
    aevents.subscribe("shop:order:placed", receiver=send_receipt)

    await aevents.publish("shop:order:placed", payload={"order": 7})

    aevents_capture.assert_published("shop:receipt:sent", payload={"order": 7}, times=1)
    aevents_capture.assert_not_published("shop:refund:**")


async def charge_card(event: aevents.Event) -> None:
    raise ConnectionError("card service down")


@pytest.mark.anyio
@pytest.mark.aevents(retry=aevents.RetryPolicy(attempts=2, initial_delay=0))
async def test_a_failed_charge_is_dead_lettered_after_two_attempts(
    aevents_runtime: aevents.EventRuntime,
) -> None:
    """With the real runtime, a charge that keeps failing ends as one dead letter."""
    aevents.subscribe("shop:order:placed", receiver=charge_card)

    await aevents.publish("shop:order:placed", payload={"order": 7})

    [letter] = await assert_dead_lettered("shop:order:placed", receiver=charge_card)
    assert letter.attempts == 2
    assert letter.error_message == "card service down"


def test_the_docs_quote_these_examples_verbatim() -> None:
    """Every Python snippet of the testing docs is copied from this file, so the tests run it."""
    root = Path(__file__).resolve().parents[1]
    sections = [(root / "docs" / "testing.md").read_text()]
    snippets = [
        found for doc in sections for found in re.findall(r"```python\n(.*?)```", doc, re.S)
    ]
    assert len(snippets) >= 2, "no testing docs found"
    source = Path(__file__).read_text()
    for snippet in snippets:
        assert snippet in source, snippet


# ---------------------------------------------------------------------- isolated_registry


def test_isolated_registry_removes_what_the_block_subscribed() -> None:
    """Subscriptions made inside the block are gone after it; earlier ones stay, untouched."""
    aevents.subscribe("app:started", receiver=_noop, id="app-receiver")
    before = aevents.default_registry.subscriptions()
    with isolated_registry() as registry:
        assert registry is aevents.default_registry
        aevents.subscribe("test:only", receiver=_broken, id="test-receiver")
        assert len(registry) == 2
    assert aevents.default_registry.subscriptions() == before


def test_isolated_registry_restores_unsubscribed_receivers_in_order() -> None:
    """Receivers unsubscribed in the block come back, with their options and order."""
    policy = RetryPolicy(attempts=5)
    aevents.subscribe("a:one", receiver=_noop, id="first", retry=policy, timeout=2.5)
    aevents.subscribe("a:**", receiver=_broken, id="second")
    with isolated_registry():
        aevents.unsubscribe("a:one", id="first")
        aevents.subscribe("a:two", receiver=Recorder(), id="third")
    restored = aevents.default_registry.subscriptions()
    assert [(s.pattern, s.receiver_id) for s in restored] == [
        ("a:one", "first"),
        ("a:**", "second"),
    ]
    assert (restored[0].retry, restored[0].timeout, restored[0].receiver) == (policy, 2.5, _noop)


def test_isolated_registry_can_start_empty() -> None:
    """``empty=True`` hides every subscription during the block and restores them after."""
    aevents.subscribe("app:started", receiver=_noop, id="app-receiver")
    with isolated_registry(empty=True) as registry:
        assert registry.route("app:started") == ()
    assert [s.receiver_id for s in aevents.default_registry.route("app:started")] == [
        "app-receiver"
    ]


# ---------------------------------------------------------------------- capture()


async def test_capture_records_every_way_of_publishing(registry: Registry) -> None:
    """publish, publish_nowait, publish_threadsafe and receivers' publishes are all recorded."""

    async def relay(event: Event) -> None:
        await aevents.publish("relay:out", payload=event.payload)

    registry.subscribe("relay:in", relay, id="relay")
    async with EventRuntime(registry) as runtime:
        with capture() as captured:
            await runtime.publish("relay:in", payload={"n": 1})
            runtime.publish_nowait("plain:nowait")
            await anyio.to_thread.run_sync(
                lambda: runtime.publish_threadsafe("plain:thread", payload={"t": (1, 2)})
            )
            with anyio.fail_after(5):
                await runtime.drain()
    assert sorted(captured.names) == ["plain:nowait", "plain:thread", "relay:in", "relay:out"]
    assert captured.find("plain:thread")[0].payload == {"t": [1, 2]}
    assert captured.find("relay:out")[0].causation_id == captured.find("relay:in")[0].id


async def test_capture_stops_recording_when_the_block_ends(registry: Registry) -> None:
    """Only events published inside the block are recorded, and the middleware is removed."""
    async with EventRuntime(registry) as runtime:
        await runtime.publish("before:block")
        with capture(runtime) as captured:
            await runtime.publish("inside:block")
        await runtime.publish("after:block")
        assert runtime.middleware == ()
    assert captured.names == ["inside:block"]


async def test_capture_skips_refused_publishes(registry: Registry) -> None:
    """A publish refused for its name or payload is not recorded."""
    async with EventRuntime(registry) as runtime, EagerRuntime(registry) as eager:
        for target in (runtime, eager):
            with capture(target) as captured:
                with pytest.raises(InvalidEventNameError):
                    await target.publish("bad name")
                with pytest.raises(PayloadError):
                    await target.publish("good:name", payload={"x": object()})
            assert captured.events == []


def test_capture_without_a_running_runtime_says_how_to_get_one() -> None:
    """With no runtime running and none given, capture() raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="aevents_runtime fixture"), capture():
        pass  # pragma: no cover


async def _captured_sample(registry: Registry) -> Captured:
    async with EagerRuntime(registry) as runtime:
        with capture(runtime) as captured:
            await runtime.publish("user:account:created", payload={"user_id": 1, "tags": ("a",)})
            await runtime.publish("user:account:created", payload={"user_id": 2, "tags": []})
            await runtime.publish("user:welcome:sent", metadata={"tenant": "acme"})
    return captured


async def test_assert_published_matches_name_pattern_payload_metadata_and_times(
    registry: Registry,
) -> None:
    """Names, patterns, payload equality (after the round trip), subsets, ANY and metadata."""
    captured = await _captured_sample(registry)
    assert len(captured.assert_published("user:account:created", times=2)) == 2
    captured.assert_published("user:**", times=3)
    [first] = captured.assert_published(
        "user:account:created", payload={"user_id": 1, "tags": ("a",)}, times=1
    )
    assert first is captured.events[0]
    captured.assert_published("user:*:created", payload=subset({"user_id": 2}), times=1)
    captured.assert_published("user:account:created", payload={"user_id": ANY, "tags": ANY})
    captured.assert_published("user:welcome:sent", payload={}, metadata={"tenant": "acme"})
    captured.assert_not_published("user:welcome:sent", metadata={"tenant": "other"})
    captured.assert_not_published("user:account:created", payload={"user_id": 1})
    captured.assert_not_published("order:**")


async def test_assert_published_failure_lists_what_was_published(registry: Registry) -> None:
    """A failed assert_published says what was expected and lists every published event."""
    captured = await _captured_sample(registry)
    with pytest.raises(AssertionError) as failure:
        captured.assert_published("user:account:created", payload={"user_id": 3})
    message = str(failure.value)
    assert message.startswith(
        "expected 'user:account:created' with payload {'user_id': 3} to be published "
        "at least once, but it was published 0 times\npublished events (3):\n"
    )
    assert "  user:account:created {'user_id': 1, 'tags': ['a']}\n" in message
    with pytest.raises(AssertionError, match="to be published 1 time, but it was published 2"):
        captured.assert_published("user:account:created", times=1)


async def test_assert_not_published_failure_lists_the_matches(registry: Registry) -> None:
    """A failed assert_not_published lists only the events that matched."""
    captured = await _captured_sample(registry)
    with pytest.raises(AssertionError) as failure:
        captured.assert_not_published("user:welcome:*")
    assert str(failure.value) == (
        "expected 'user:welcome:*' not to be published, but it was published 1 time\n"
        "matching events (1):\n  user:welcome:sent {}"
    )


async def test_assert_published_with_nothing_published_says_so(registry: Registry) -> None:
    """With an empty capture, the message says that nothing was published."""
    async with EventRuntime(registry) as runtime:
        with capture(runtime) as captured:
            pass
    with pytest.raises(AssertionError, match="no events were published"):
        captured.assert_published("anything")
    with pytest.raises(InvalidEventNameError):
        captured.assert_published("not a pattern")


# ---------------------------------------------------------------------- EagerRuntime


async def test_eager_publish_returns_after_receivers_and_their_children_ran(
    registry: Registry,
) -> None:
    """Receivers run depth first in the publisher's task, before publish returns."""
    order: list[str] = []
    tasks: list[int] = []

    async def parent(event: Event) -> None:
        order.append(f"parent:{event.payload['n']}")
        tasks.append(anyio.get_current_task().id)
        await aevents.publish("chain:child", payload={"n": event.payload["n"]})
        order.append("parent:done")

    def child(event: Event) -> None:
        order.append(f"child:{event.payload['n']}")

    registry.subscribe("chain:parent", parent, id="parent")
    registry.subscribe("chain:child", child, id="child")
    registry.subscribe("chain:**", lambda event: order.append(f"any:{event.name}"), id="any")
    async with EagerRuntime(registry) as runtime:
        await aevents.publish("chain:parent", payload={"n": 1})
        assert order == [
            "parent:1",
            "child:1",
            "any:chain:child",
            "parent:done",
            "any:chain:parent",
        ]
        stats = runtime.stats()
        assert tasks == [anyio.get_current_task().id]
    assert (stats.published, stats.delivered, stats.in_flight) == (2, 4, 0)


async def test_eager_publish_takes_every_publish_argument(registry: Registry) -> None:
    """Arguments EventRuntime.publish takes (an ordering key here) reach the event unchanged."""
    recorder = Recorder()
    registry.subscribe("keyed:event", recorder)
    async with EagerRuntime(registry) as runtime:
        event = await runtime.publish("keyed:event", payload={"n": 1}, key="account-7")
        assert recorder.events == [event]
    assert event.key == "account-7"


async def test_eager_receivers_see_their_delivery_and_causation(registry: Registry) -> None:
    """current_delivery() works in receivers and children carry causation metadata."""
    seen: list[Any] = []

    async def parent(event: Event) -> None:
        seen.append(aevents.current_delivery())
        await aevents.publish("cause:child")

    async def child(event: Event) -> None:
        seen.append(event)

    registry.subscribe("cause:parent", parent, id="parent")
    registry.subscribe("cause:child", child, id="child")
    async with EagerRuntime(registry) as runtime:
        root = await runtime.publish("cause:parent", metadata={"correlation_id": "req-1"})
    delivery, child_event = seen
    assert (delivery.event, delivery.receiver_id, delivery.attempt) == (root, "parent", 1)
    assert child_event.causation_id == root.id
    assert child_event.correlation_id == "req-1"
    assert aevents.current_delivery() is None


async def test_eager_publish_validates_like_the_real_runtime(registry: Registry) -> None:
    """Bad names, bad payloads and undeclared names (strict) are refused; payloads round-trip."""
    Catalog({"DECLARED": "strict:declared"}, name="test_testing_strict")
    received: list[Event] = []
    registry.subscribe("strict:**", received.append, id="recorder", inline=True)
    async with EagerRuntime(registry, strict=True) as runtime:
        with pytest.raises(InvalidEventNameError):
            await runtime.publish("strict:*")
        with pytest.raises(PayloadError):
            await runtime.publish("strict:declared", payload={"bad": float("nan")})
        with pytest.raises(UnknownEventError):
            await runtime.publish("strict:undeclared")
        await runtime.publish("strict:declared", payload={"pair": (1, 2)})
    assert [event.payload for event in received] == [{"pair": [1, 2]}]


async def test_eager_receiver_error_is_raised_by_publish_after_the_others_ran(
    registry: Registry,
) -> None:
    """The failing receiver's own exception comes out of publish; the others still ran."""
    ran: list[str] = []
    registry.subscribe("fail:now", _broken, id="broken")
    registry.subscribe("fail:now", lambda event: ran.append("after"), id="after", inline=True)
    async with EagerRuntime(registry, retry=NO_RETRY) as runtime:
        with pytest.raises(ValueError, match="broken on fail:now"):
            await runtime.publish("fail:now")
        assert ran == ["after"]
        assert await runtime.dead_letters() == []
        stats = runtime.stats()
    assert (stats.failed, stats.dead, stats.delivered) == (1, 0, 1)


async def test_eager_child_failure_reaches_the_outermost_publish_not_the_parent(
    registry: Registry,
) -> None:
    """A receiver whose child fails is not failed or retried; the root publish raises."""
    parent_runs: list[Event] = []

    async def parent(event: Event) -> None:
        child = await aevents.publish("nest:child")  # returns normally, as in the real runtime
        parent_runs.append(child)

    registry.subscribe("nest:parent", parent, id="parent", retry=RetryPolicy(attempts=3))
    registry.subscribe("nest:child", _broken, id="child", retry=NO_RETRY)
    async with EagerRuntime(registry) as runtime:
        with pytest.raises(ValueError, match="broken on nest:child"):
            await runtime.publish("nest:parent")
    assert len(parent_runs) == 1


async def test_eager_several_failures_raise_the_first_with_notes(registry: Registry) -> None:
    """When several receivers fail, the first error is raised and notes name the rest."""

    async def also_broken(event: Event) -> None:
        raise KeyError("second")

    registry.subscribe("fail:many", _broken, id="first")
    registry.subscribe("fail:many", also_broken, id="second")
    async with EagerRuntime(registry, retry=NO_RETRY) as runtime:
        with pytest.raises(ValueError, match="broken on fail:many") as failure:
            await runtime.publish("fail:many")
    assert failure.value.__notes__ == [
        "aevents: 1 more receiver failed in this publish: 'second' on 'fail:many': "
        "KeyError: 'second'"
    ]


async def test_eager_retries_at_once_per_policy(registry: Registry) -> None:
    """A flaky receiver is retried without waiting and succeeds within its attempts."""
    attempts: list[int] = []

    async def flaky(event: Event) -> None:
        delivery = aevents.current_delivery()
        assert delivery is not None
        attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            raise ConnectionError("not yet")

    registry.subscribe("flaky:call", flaky, id="flaky")
    # A backoff of an hour: the test would time out if eager mode waited for it.
    policy = RetryPolicy(attempts=3, initial_delay=3600, jitter=0)
    async with EagerRuntime(registry, retry=policy) as runtime:
        await runtime.publish("flaky:call")
        stats = runtime.stats()
    assert attempts == [1, 2, 3]
    assert (stats.failed, stats.retried, stats.delivered) == (2, 2, 1)


async def test_eager_without_raise_errors_dead_letters(registry: Registry) -> None:
    """With raise_errors=False a failure becomes a dead letter and publish returns."""
    registry.subscribe("fail:quietly", _broken, id="broken")
    async with EagerRuntime(registry, raise_errors=False, retry=RetryPolicy(attempts=2)) as rt:
        event = await rt.publish("fail:quietly")
        [letter] = await rt.dead_letters()
        stats = rt.stats()
    assert (letter.event, letter.receiver_id, letter.attempts) == (event, "broken", 2)
    assert (stats.failed, stats.retried, stats.dead) == (2, 1, 1)


async def test_eager_publish_nowait_in_a_receiver_runs_before_publish_returns(
    registry: Registry,
) -> None:
    """A receiver's publish_nowait is delivered when the receiver returns, still inside publish."""
    order: list[str] = []

    def sync_parent(event: Event) -> None:
        aevents.publish_nowait("later:child")
        order.append("parent")

    registry.subscribe("later:parent", sync_parent, id="parent", inline=True)
    registry.subscribe("later:child", lambda event: order.append("child"), id="c", inline=True)
    async with EagerRuntime(registry) as runtime:
        await runtime.publish("later:parent")
        assert order == ["parent", "child"]


async def test_eager_publish_nowait_outside_receivers_goes_to_the_workers(
    registry: Registry,
) -> None:
    """Top-level publish_nowait is queued as usual and drain() waits for it."""
    recorder = Recorder()
    registry.subscribe("queued:event", recorder)
    async with EagerRuntime(registry) as runtime:
        runtime.publish_nowait("queued:event")
        assert recorder.events == []
        with anyio.fail_after(5):
            await runtime.drain()
        assert recorder.events[0].name == "queued:event"


async def test_eager_publish_threadsafe_from_a_sync_receiver_is_inline(
    registry: Registry,
) -> None:
    """A sync receiver on a worker thread publishing with publish_threadsafe waits for the child."""
    order: list[str] = []

    def on_thread(event: Event) -> None:
        assert threading.current_thread() is not threading.main_thread()
        aevents.publish_threadsafe("thread:child")
        order.append("parent")

    registry.subscribe("thread:parent", on_thread, id="parent")
    registry.subscribe("thread:child", _broken, id="child", retry=NO_RETRY)
    registry.subscribe("thread:child", lambda event: order.append("child"), id="c", inline=True)
    async with EagerRuntime(registry) as runtime:
        with pytest.raises(ValueError, match="thread:child"):
            await runtime.publish("thread:parent")
    assert order == ["child", "parent"]


async def test_eager_chain_past_the_depth_limit_raises(registry: Registry) -> None:
    """A receiver publishing its own event forever ends in CausationDepthError from publish."""

    async def again(event: Event) -> None:
        await aevents.publish("loop:again")

    registry.subscribe("loop:again", again, id="again")
    async with EagerRuntime(registry, max_causation_depth=5) as runtime:
        with pytest.raises(CausationDepthError):
            await runtime.publish("loop:again")
        assert runtime.stats().published == 6


async def test_eager_receiver_timeout_fails_the_delivery(registry: Registry) -> None:
    """A receiver running past its timeout is cancelled and its publish raises TimeoutError."""

    async def hangs(event: Event) -> None:
        await anyio.sleep_forever()

    registry.subscribe("slow:call", hangs, id="hangs", timeout=0.01, retry=NO_RETRY)
    async with EagerRuntime(registry) as runtime:
        with anyio.fail_after(5), pytest.raises(TimeoutError):
            await runtime.publish("slow:call")


async def test_eager_delivery_middleware_runs_around_each_attempt(registry: Registry) -> None:
    """before_delivery and after_delivery hooks see eager attempts too."""
    calls: list[tuple[str, int, str | None]] = []

    class Watch(Middleware):
        def before_delivery(self, delivery: aevents.DeliveryInfo) -> Any:
            return delivery.attempt

        def after_delivery(
            self, delivery: aevents.DeliveryInfo, state: Any, error: BaseException | None
        ) -> None:
            calls.append((delivery.receiver_id, state, type(error).__name__ if error else None))

    registry.subscribe("hooked:event", _broken, id="broken", retry=RetryPolicy(attempts=2))
    async with EagerRuntime(registry, middleware=[Watch()]) as runtime:
        with pytest.raises(ValueError, match="broken on hooked:event"):
            await runtime.publish("hooked:event")
    assert calls == [("broken", 1, "ValueError"), ("broken", 2, "ValueError")]


async def test_cancelled_eager_publish_drops_the_rest_and_drain_returns(
    registry: Registry,
) -> None:
    """Cancelling a publish mid-receiver drops its remaining deliveries; drain() still returns."""
    started = anyio.Event()
    ran: list[str] = []

    async def blocks(event: Event) -> None:
        started.set()
        await anyio.sleep_forever()

    registry.subscribe("cancel:me", blocks, id="blocks")
    registry.subscribe("cancel:me", lambda event: ran.append("second"), id="second", inline=True)
    async with EagerRuntime(registry) as runtime, anyio.create_task_group() as tasks:
        scope = anyio.CancelScope()

        async def publisher() -> None:
            with scope:
                await runtime.publish("cancel:me")

        tasks.start_soon(publisher)
        with anyio.fail_after(5):
            await started.wait()
            scope.cancel()
            await runtime.drain()
        assert runtime.stats().in_flight == 0
    assert ran == []


def test_eager_runtime_refuses_a_store() -> None:
    """Eager delivery keeps no journal, so store= is a configuration error."""
    with pytest.raises(ConfigurationError, match="eager delivery keeps no journal"):
        EagerRuntime(store=aevents.MemoryStore())


# ---------------------------------------------------------------------- dead-letter asserts


async def test_assert_no_dead_letters_drains_first_then_lists_them(registry: Registry) -> None:
    """It waits for deliveries still queued, then fails listing each dead letter."""
    registry.subscribe("dead:one", _broken, id="broken")
    async with EventRuntime(registry, retry=NO_RETRY) as runtime:
        await assert_no_dead_letters(runtime)
        await runtime.publish("dead:one", payload={"n": 1})
        with anyio.fail_after(5), pytest.raises(AssertionError) as failure:
            await assert_no_dead_letters()
    assert str(failure.value) == (
        "expected no dead letters\ndead letters (1):\n"
        "  receiver 'broken' on 'dead:one' after 1 attempt: ValueError: broken on dead:one"
    )


async def test_assert_dead_lettered_matches_name_receiver_error_and_times(
    registry: Registry,
) -> None:
    """Letters match by name pattern, receiver (callable or id), error class or name, and count."""
    registry.subscribe("dead:**", _broken)
    async with EventRuntime(registry, retry=NO_RETRY) as runtime:
        await runtime.publish("dead:one")
        await runtime.publish("dead:two")
        with anyio.fail_after(5):
            assert len(await assert_dead_lettered(times=2)) == 2
            [letter] = await assert_dead_lettered("dead:two", receiver=_broken, error=ValueError)
            assert letter.event.name == "dead:two"
            await assert_dead_lettered(receiver="nobody", times=0)
            with pytest.raises(AssertionError) as failure:
                await assert_dead_lettered("dead:*", error=KeyError)
    assert str(failure.value).startswith(
        "expected at least one dead letter of 'dead:*' with error builtins.KeyError, found 0\n"
        "dead letters (2):\n"
    )


# ---------------------------------------------------------------------- Recorder


async def test_recording_subscribes_for_the_block_only(registry: Registry) -> None:
    """Two recordings at once each get what they match; both unsubscribe afterwards."""
    async with EventRuntime(registry, retry=NO_RETRY) as runtime:
        with (
            recording("rec:**", registry=registry) as every,
            recording("rec:b", registry=registry) as b,
        ):
            await runtime.publish("rec:a")
            await runtime.publish("rec:b")
            with anyio.fail_after(5):
                await runtime.drain()
    assert [event.name for event in every.events] == ["rec:a", "rec:b"]
    assert [(d.event.name, d.attempt, d.pattern) for d in b.deliveries] == [("rec:b", 1, "rec:b")]
    assert every.id != b.id
    assert len(registry) == 0


async def test_recorder_called_directly_records_the_event_only() -> None:
    """Outside a runtime, a Recorder records the event but no delivery."""
    recorder = Recorder("direct")
    event = aevents.Event("1", "direct:call", {}, datetime.now(UTC))
    await recorder(event)
    assert (recorder.events, recorder.deliveries) == ([event], [])
    assert recorder.id == "aevents.testing:Recorder[direct]"
