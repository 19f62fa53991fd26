"""The registry: subscribing receivers under ids, and routing names to them."""

from __future__ import annotations

import functools
import math
import random
import threading
from typing import Any

import pytest

import aevents
from tests.test_names import reference_match, tokens

NAME = "user:account:created"


def sync_receiver(event: aevents.Event) -> None:
    """A module-level sync receiver."""


async def async_receiver(event: aevents.Event) -> None:
    """A module-level async receiver."""


def other_sync_receiver(event: aevents.Event, extra: object = None) -> None:
    """Another sync receiver."""


async def other_async_receiver(event: aevents.Event, extra: object = None) -> None:
    """Another async receiver."""


class Handler:
    def on_event(self, event: aevents.Event) -> None:
        """A sync method receiver."""

    async def on_event_async(self, event: aevents.Event) -> None:
        """An async method receiver."""


class SyncCallable:
    def __call__(self, event: aevents.Event) -> None:
        """A callable object with a sync ``__call__``."""


class AsyncCallable:
    async def __call__(self, event: aevents.Event) -> None:
        """A callable object with an async ``__call__``."""


def ids(subscriptions: tuple[aevents.Subscription, ...]) -> list[str]:
    return [subscription.receiver_id for subscription in subscriptions]


def make_receiver() -> Any:
    """A fresh callable each time (they all share one qualname, hence one default id)."""

    def receiver(event: aevents.Event) -> None:
        """A closure receiver."""

    return receiver


# ------------------------------------------------------------------ subscribing


def test_decorator_form_returns_the_function_unchanged(registry: aevents.Registry) -> None:
    """``@registry.subscribe(pattern)`` subscribes and gives back the very same function."""

    @registry.subscribe(NAME)
    async def send_welcome(event: aevents.Event) -> None:
        """Decorated receiver."""

    assert send_welcome.__name__ == "send_welcome"
    assert [s.receiver for s in registry.route(NAME)] == [send_welcome]
    assert registry.subscribe("user:**")(sync_receiver) is sync_receiver


def test_call_form_subscribes_and_returns_the_receiver(registry: aevents.Registry) -> None:
    """``registry.subscribe(pattern, receiver=...)`` subscribes and returns the receiver."""
    assert registry.subscribe("user:**", receiver=sync_receiver, id="audit") is sync_receiver
    (subscription,) = registry.route(NAME)
    assert subscription.receiver is sync_receiver
    assert subscription.receiver_id == "audit"
    assert subscription.pattern == "user:**"


def test_module_level_subscribe_uses_the_default_registry() -> None:
    """``aevents.subscribe`` and ``aevents.unsubscribe`` act on ``aevents.default_registry``."""
    assert aevents.subscribe(NAME)(sync_receiver) is sync_receiver
    assert ids(aevents.default_registry.route(NAME)) == [f"{__name__}:sync_receiver"]
    assert aevents.unsubscribe(NAME, receiver=sync_receiver) is True
    assert aevents.default_registry.route(NAME) == ()


@pytest.mark.parametrize(
    ("receiver", "expected"),
    [
        pytest.param(sync_receiver, "sync_receiver", id="function"),
        pytest.param(async_receiver, "async_receiver", id="async-function"),
        pytest.param(Handler().on_event, "Handler.on_event", id="bound-method"),
        pytest.param(
            functools.partial(other_sync_receiver, extra=1), "other_sync_receiver", id="partial"
        ),
        pytest.param(SyncCallable(), "SyncCallable", id="callable-object"),
    ],
)
def test_default_receiver_id_is_module_and_qualname(
    registry: aevents.Registry, receiver: Any, expected: str
) -> None:
    """Without ``id=``, a receiver is known as ``"module:qualname"``."""
    registry.subscribe(NAME, receiver)
    assert ids(registry.route(NAME)) == [f"{__name__}:{expected}"]


def test_nested_function_id_includes_the_enclosing_qualname(registry: aevents.Registry) -> None:
    """A receiver defined in a function is named by its full qualified name."""
    registry.subscribe(NAME, make_receiver())
    assert ids(registry.route(NAME)) == [f"{__name__}:make_receiver.<locals>.receiver"]


def test_subscribing_the_same_receiver_twice_is_a_no_op(registry: aevents.Registry) -> None:
    """The same receiver on the same pattern is subscribed once, however often it is asked."""
    registry.subscribe(NAME, sync_receiver)
    registry.subscribe(NAME, sync_receiver)
    registry.subscribe(NAME, sync_receiver, id=f"{__name__}:sync_receiver")
    assert len(registry) == 1
    assert len(registry.route(NAME)) == 1


def test_bound_methods_of_one_instance_are_the_same_receiver(registry: aevents.Registry) -> None:
    """Each attribute access makes a new bound method; they still count as one receiver."""
    handler = Handler()
    assert handler.on_event is not handler.on_event
    registry.subscribe(NAME, handler.on_event)
    registry.subscribe(NAME, handler.on_event)
    assert len(registry.route(NAME)) == 1
    assert registry.unsubscribe(NAME, handler.on_event) is True
    assert registry.route(NAME) == ()


def test_a_different_callable_under_a_used_id_raises(registry: aevents.Registry) -> None:
    """Two callables cannot share a receiver id: a journal could not tell them apart."""
    registry.subscribe(NAME, sync_receiver, id="welcome")
    with pytest.raises(aevents.DuplicateReceiverError) as caught:
        registry.subscribe(NAME, async_receiver, id="welcome")
    assert isinstance(caught.value, ValueError)
    assert caught.value.receiver_id == "welcome"
    assert "'welcome'" in str(caught.value)
    assert [s.receiver for s in registry.route(NAME)] == [sync_receiver]


def test_a_used_id_is_refused_on_other_patterns_too(registry: aevents.Registry) -> None:
    """The id check spans patterns (stricter than per pattern, because journals record ids)."""
    registry.subscribe(NAME, sync_receiver, id="welcome")
    with pytest.raises(aevents.DuplicateReceiverError, match="user:\\*\\*"):
        registry.subscribe("user:**", async_receiver, id="welcome")
    assert len(registry) == 1


def test_same_named_closures_need_explicit_ids(registry: aevents.Registry) -> None:
    """Two closures with one qualname get the same default id, so the second is refused."""
    registry.subscribe(NAME, make_receiver())
    with pytest.raises(aevents.DuplicateReceiverError):
        registry.subscribe("other:name", make_receiver())
    registry.subscribe("other:name", make_receiver(), id="second")
    assert len(registry) == 2


def test_methods_of_two_instances_need_explicit_ids(registry: aevents.Registry) -> None:
    """Bound methods of different instances are different callables under one default id."""
    registry.subscribe(NAME, Handler().on_event)
    with pytest.raises(aevents.DuplicateReceiverError):
        registry.subscribe(NAME, Handler().on_event)


def test_the_same_receiver_may_subscribe_to_several_patterns(registry: aevents.Registry) -> None:
    """One receiver (one id) on several patterns is fine, and is routed once per name."""
    registry.subscribe(NAME, sync_receiver)
    registry.subscribe("user:**", sync_receiver)
    registry.subscribe("*:account:*", sync_receiver)
    assert len(registry) == 3
    (subscription,) = registry.route(NAME)
    assert subscription.pattern == NAME  # the first subscription that matched
    assert ids(registry.route("user:deleted")) == [f"{__name__}:sync_receiver"]


# ---------------------------------------------------------------- unsubscribing


def test_unsubscribe_by_receiver_reports_whether_it_removed_anything(
    registry: aevents.Registry,
) -> None:
    """``unsubscribe`` returns True once, then False, and the route forgets the receiver."""
    registry.subscribe(NAME, sync_receiver)
    registry.subscribe(NAME, async_receiver)
    assert registry.unsubscribe(NAME, sync_receiver) is True
    assert registry.unsubscribe(NAME, sync_receiver) is False
    assert [s.receiver for s in registry.route(NAME)] == [async_receiver]


def test_unsubscribe_by_id(registry: aevents.Registry) -> None:
    """A receiver can be removed by its id alone."""
    registry.subscribe("user:**", sync_receiver, id="audit")
    assert registry.unsubscribe("user:**", id="audit") is True
    assert registry.unsubscribe("user:**", id="audit") is False
    assert registry.route(NAME) == ()


def test_unsubscribe_only_touches_the_given_pattern(registry: aevents.Registry) -> None:
    """Removing one pattern leaves the receiver's other subscriptions in place."""
    registry.subscribe(NAME, sync_receiver)
    registry.subscribe("user:**", sync_receiver)
    assert registry.unsubscribe("other:pattern", sync_receiver) is False
    assert registry.unsubscribe(NAME, sync_receiver) is True
    (subscription,) = registry.route(NAME)
    assert subscription.pattern == "user:**"


def test_unsubscribe_frees_the_id_for_another_callable(registry: aevents.Registry) -> None:
    """Once a receiver's last subscription is gone, its id can be reused."""
    registry.subscribe(NAME, sync_receiver, id="welcome")
    registry.unsubscribe(NAME, id="welcome")
    registry.subscribe(NAME, async_receiver, id="welcome")
    assert [s.receiver for s in registry.route(NAME)] == [async_receiver]


def test_unsubscribe_without_receiver_or_id_is_a_configuration_error(
    registry: aevents.Registry,
) -> None:
    """Saying neither which receiver nor which id is a mistake, not a silent no-op."""
    with pytest.raises(aevents.ConfigurationError):
        registry.unsubscribe(NAME)


# --------------------------------------------------------------------- routing


def test_route_keeps_subscription_order_across_exact_and_wildcard(
    registry: aevents.Registry,
) -> None:
    """Receivers are routed in the order they subscribed, whether exact or wildcard."""
    registry.subscribe("user:**", sync_receiver, id="first")
    registry.subscribe(NAME, async_receiver, id="second")
    registry.subscribe("*:account:*", other_sync_receiver, id="third")
    registry.subscribe(NAME, other_async_receiver, id="fourth")
    registry.subscribe("user:*", SyncCallable(), id="not-matching")
    assert ids(registry.route(NAME)) == ["first", "second", "third", "fourth"]


def test_route_of_an_unmatched_name_is_empty(registry: aevents.Registry) -> None:
    """A name no pattern matches routes to nobody."""
    registry.subscribe("user:**", sync_receiver)
    assert registry.route("order:created") == ()


def test_route_sees_subscriptions_made_after_it_was_cached(registry: aevents.Registry) -> None:
    """Subscribing or unsubscribing invalidates cached routes."""
    assert registry.route(NAME) == ()
    version = registry.version
    registry.subscribe("user:**", sync_receiver, id="late")
    assert registry.version > version
    assert ids(registry.route(NAME)) == ["late"]
    registry.subscribe(NAME, async_receiver, id="later")
    assert ids(registry.route(NAME)) == ["late", "later"]
    registry.unsubscribe("user:**", id="late")
    assert ids(registry.route(NAME)) == ["later"]
    registry.clear()
    assert registry.route(NAME) == ()


def test_route_results_are_stable_between_changes(registry: aevents.Registry) -> None:
    """Routing the same name twice without changes gives the same subscriptions."""
    registry.subscribe("user:**", sync_receiver)
    assert registry.route(NAME) == registry.route(NAME)


def test_registries_are_independent(registry: aevents.Registry) -> None:
    """A receiver subscribed to one registry is not routed by another."""
    registry.subscribe(NAME, sync_receiver)
    assert aevents.Registry().route(NAME) == ()
    assert aevents.default_registry.route(NAME) == ()


def test_registry_lookup_by_receiver_id(registry: aevents.Registry) -> None:
    """``receiver(id)`` resolves a journal's receiver id to its first subscription."""
    registry.subscribe(NAME, sync_receiver, id="audit")
    registry.subscribe("user:**", sync_receiver, id="audit")
    subscription = registry.receiver("audit")
    assert subscription is not None
    assert subscription.pattern == NAME
    assert registry.receiver("unknown") is None
    assert [s.pattern for s in registry.subscriptions()] == [NAME, "user:**"]


def test_routing_many_names_agrees_with_the_reference_matcher(
    registry: aevents.Registry,
) -> None:
    """With 1,000 patterns subscribed, each of 1,000 names routes to exactly the matching ones."""
    rng = random.Random(20240501)

    def text(choices: list[str]) -> str:
        parts = [rng.choice(choices) for _ in range(rng.randint(1, 4))]
        separators = ["", *rng.choices(":.", k=len(parts) - 1)]
        return "".join(sep + part for sep, part in zip(separators, parts, strict=True))

    pattern_list = [text(["a", "b", "c", "*", "**"]) for _ in range(1_000)]
    name_list = [text(["a", "b", "c"]) for _ in range(1_000)]
    for index, pattern in enumerate(pattern_list):
        registry.subscribe(pattern, sync_receiver if index % 2 else async_receiver, id=f"r{index}")
    pattern_tokens = [(f"r{index}", tokens(pattern)) for index, pattern in enumerate(pattern_list)]
    matched = 0
    for name in name_list:
        name_tokens = tokens(name)
        expected = [rid for rid, pattern in pattern_tokens if reference_match(pattern, name_tokens)]
        assert ids(registry.route(name)) == expected, name
        matched += len(expected)
    assert matched > 1_000  # the alphabets are small enough that many pairs match


# ------------------------------------------------------------- receiver kinds


@pytest.mark.parametrize(
    ("receiver", "is_async"),
    [
        pytest.param(async_receiver, True, id="async-def"),
        pytest.param(sync_receiver, False, id="def"),
        pytest.param(AsyncCallable(), True, id="async-call-object"),
        pytest.param(SyncCallable(), False, id="sync-call-object"),
        pytest.param(functools.partial(other_async_receiver, extra=1), True, id="async-partial"),
        pytest.param(functools.partial(other_sync_receiver, extra=1), False, id="sync-partial"),
        pytest.param(Handler().on_event_async, True, id="async-method"),
        pytest.param(Handler().on_event, False, id="sync-method"),
        pytest.param(print, False, id="builtin"),
    ],
)
def test_sync_and_async_receivers_are_told_apart(
    registry: aevents.Registry, receiver: Any, is_async: bool
) -> None:
    """Async functions, async ``__call__`` and partials of async functions count as async."""
    registry.subscribe(NAME, receiver, id="receiver")
    (subscription,) = registry.route(NAME)
    assert subscription.is_async is is_async


def test_inline_is_for_sync_receivers_only(registry: aevents.Registry) -> None:
    """``inline=True`` marks a sync receiver and is refused for an async one."""
    registry.subscribe(NAME, sync_receiver, inline=True)
    assert registry.route(NAME)[0].inline is True
    with pytest.raises(aevents.ConfigurationError, match="inline"):
        registry.subscribe(NAME, async_receiver, inline=True)
    with pytest.raises(aevents.ConfigurationError, match="inline"):
        registry.subscribe(NAME, AsyncCallable(), inline=True)
    assert len(registry) == 1


def test_retry_and_timeout_are_kept_on_the_subscription(registry: aevents.Registry) -> None:
    """A receiver's own policy travels with its subscription."""
    policy = aevents.RetryPolicy(attempts=5)
    registry.subscribe(NAME, async_receiver, retry=policy, timeout=2.5)
    (subscription,) = registry.route(NAME)
    assert subscription.retry is policy
    assert subscription.timeout == 2.5


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"timeout": 0}, id="zero-timeout"),
        pytest.param({"timeout": -1}, id="negative-timeout"),
        pytest.param({"timeout": math.nan}, id="nan-timeout"),
        pytest.param({"timeout": "1"}, id="str-timeout"),
        pytest.param({"retry": 3}, id="int-retry"),
        pytest.param({"retry": {"attempts": 3}}, id="dict-retry"),
        pytest.param({"id": ""}, id="empty-id"),
        pytest.param({"id": "   "}, id="blank-id"),
        pytest.param({"id": 7}, id="int-id"),
    ],
)
def test_bad_subscribe_options_are_configuration_errors(
    registry: aevents.Registry, options: dict[str, Any]
) -> None:
    """A bad ``timeout``, ``retry`` or ``id`` is a ``ConfigurationError``; nothing is subscribed."""
    with pytest.raises(aevents.ConfigurationError) as caught:
        registry.subscribe(NAME, async_receiver, **options)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TypeError)
    assert len(registry) == 0


@pytest.mark.parametrize("receiver", [42, "sync_receiver", object()])
def test_non_callable_receivers_are_configuration_errors(
    registry: aevents.Registry, receiver: Any
) -> None:
    """Only callables can receive events."""
    with pytest.raises(aevents.ConfigurationError, match="callable"):
        registry.subscribe(NAME, receiver)
    with pytest.raises(aevents.ConfigurationError, match="callable"):
        registry.subscribe(NAME)(receiver)


@pytest.mark.parametrize("pattern", ["", "user::x", "user*", "user:created "])
def test_invalid_patterns_are_refused(registry: aevents.Registry, pattern: str) -> None:
    """Subscribing to something that is not a pattern raises ``InvalidEventNameError``."""
    with pytest.raises(aevents.InvalidEventNameError):
        registry.subscribe(pattern, sync_receiver)
    assert len(registry) == 0


# ------------------------------------------------------------------ threads


def test_concurrent_subscribes_from_threads_all_land(registry: aevents.Registry) -> None:
    """Threads subscribing distinct receivers at once lose none of them."""
    threads_count, per_thread = 8, 50
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def subscribe_many(thread_index: int) -> None:
        try:
            barrier.wait(timeout=30)
            for index in range(per_thread):
                pattern = NAME if index % 2 else "user:**"
                registry.subscribe(pattern, make_receiver(), id=f"t{thread_index}-{index}")
                registry.route(NAME)  # interleave cache fills with changes
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=subscribe_many, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    expected = {f"t{t}-{i}" for t in range(threads_count) for i in range(per_thread)}
    assert {s.receiver_id for s in registry.subscriptions()} == expected
    assert set(ids(registry.route(NAME))) == expected
    assert len(registry.route(NAME)) == len(expected)


def test_receiver_for_a_name_is_the_subscription_routing_picks(registry: aevents.Registry) -> None:
    """With a name, ``receiver(id, name)`` agrees with ``route(name)``: exact before wildcard."""
    registry.subscribe("user:**", sync_receiver, id="audit")
    registry.subscribe(NAME, sync_receiver, id="audit")
    (routed,) = registry.route(NAME)
    assert routed.pattern == NAME
    assert registry.receiver("audit", NAME) is routed
    first = registry.subscriptions()[0]
    assert registry.receiver("audit") is first
    # A name none of its patterns matches any more falls back to the first subscription.
    assert registry.receiver("audit", "order:placed") is first
    assert registry.receiver("unknown", NAME) is None


@pytest.mark.anyio
async def test_a_redelivered_dead_letter_runs_under_the_subscription_live_delivery_used(
    registry: aevents.Registry,
) -> None:
    """A receiver id on a wildcard and on the exact name: live and redelivered attempts agree."""
    attempts: list[int] = []

    async def failing(event: aevents.Event) -> None:
        delivery = aevents.current_delivery()
        assert delivery is not None
        attempts.append(delivery.attempt)
        raise RuntimeError("down")

    def policy(count: int) -> aevents.RetryPolicy:
        return aevents.RetryPolicy(attempts=count, initial_delay=0, jitter=0)

    registry.subscribe("user:**", failing, id="audit", retry=policy(1))
    registry.subscribe(NAME, failing, id="audit", retry=policy(3))
    async with aevents.EventRuntime(registry) as runtime:
        await runtime.publish(NAME)
        await runtime.drain()
        assert attempts == [1, 2, 3]  # the exact subscription's policy
        attempts.clear()
        assert await runtime.redeliver() == 1
        await runtime.drain()
    assert attempts == [1, 2, 3]
