"""The registry in detail: exact messages, the fast flag, index clean-up, and the route caches."""

from __future__ import annotations

import functools
import gc
from typing import Any

import pytest

import aevents
from aevents._registry import MAX_ROUTE_CACHE, Subscription, receiver_id_of

NAME = "user:account:created"


def sync_receiver(event: aevents.Event) -> None:
    """A sync receiver."""


async def async_receiver(event: aevents.Event) -> None:
    """An async receiver."""


async def other_async_receiver(event: aevents.Event, extra: object = None) -> None:
    """Another async receiver."""


class AsyncCallable:
    async def __call__(self, event: aevents.Event) -> None:
        """An object whose __call__ is async."""


class Handler:
    async def on_event(self, event: aevents.Event) -> None:
        """An async method."""


def ids(subscriptions: tuple[Subscription, ...] | list[Subscription]) -> list[str]:
    return [subscription.receiver_id for subscription in subscriptions]


# ----------------------------------------------------------------- receiver ids


def test_nested_partials_and_partials_of_bound_methods_are_named_by_their_function() -> None:
    """Partials are unwrapped all the way down, then bound methods to their function."""
    inner = functools.partial(other_async_receiver, extra=1)
    assert receiver_id_of(functools.partial(inner)) == f"{__name__}:other_async_receiver"
    method = functools.partial(Handler().on_event)
    assert receiver_id_of(method) == f"{__name__}:Handler.on_event"


def test_an_object_without_a_qualname_is_named_by_its_class() -> None:
    """A callable instance has its class's ``__module__`` but no ``__qualname__``."""
    assert receiver_id_of(AsyncCallable()) == f"{__name__}:AsyncCallable"
    assert receiver_id_of(print) == "builtins:print"


def test_a_callable_without_a_module_is_named_by_its_type() -> None:
    """Some C-level callables have no ``__module__`` at all; their type names them."""
    method_wrapper = (1).__add__
    assert not hasattr(method_wrapper, "__module__")
    assert receiver_id_of(method_wrapper) == "builtins:method-wrapper"


# ----------------------------------------------------------------- subscriptions


def test_the_decorator_passes_every_option_on(registry: aevents.Registry) -> None:
    """``@registry.subscribe(pattern, id=..., retry=..., timeout=..., inline=...)``."""
    policy = aevents.RetryPolicy(attempts=7)

    @registry.subscribe(NAME, id="decorated", retry=policy, timeout=2.5, inline=True)
    def decorated(event: aevents.Event) -> None:
        """A sync receiver, subscribed by decorator."""

    (subscription,) = registry.route(NAME)
    assert subscription.receiver is decorated
    assert subscription.receiver_id == "decorated"
    assert (subscription.retry, subscription.timeout, subscription.inline) == (policy, 2.5, True)


@pytest.mark.parametrize(
    ("receiver", "timeout", "fast"),
    [
        pytest.param(async_receiver, None, True, id="async"),
        pytest.param(AsyncCallable(), None, True, id="async-call"),
        pytest.param(async_receiver, 1.0, False, id="async-with-timeout"),
        pytest.param(sync_receiver, None, False, id="sync"),
    ],
)
def test_only_async_receivers_without_a_timeout_are_fast(
    registry: aevents.Registry, receiver: Any, timeout: float | None, fast: bool
) -> None:
    """``fast`` marks what a worker may call directly: async, and no timeout of its own."""
    registry.subscribe(NAME, receiver, id="r", timeout=timeout)
    (subscription,) = registry.route(NAME)
    assert subscription.fast is fast
    assert (subscription.pattern, subscription.receiver_id) == (NAME, "r")
    assert subscription.receiver is receiver
    assert (subscription.inline, subscription.retry, subscription.timeout) == (False, None, timeout)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"timeout": 0}, "timeout must be > 0 seconds, got 0"),
        ({"timeout": True}, "timeout must be > 0 seconds, got True"),
        ({"timeout": "1"}, "timeout must be > 0 seconds, got '1'"),
        ({"retry": 3}, "retry must be a RetryPolicy, got 3"),
        ({"id": " "}, "id must be a non-empty str, got ' '"),
        ({"id": 7}, "id must be a non-empty str, got 7"),
    ],
)
def test_bad_options_are_explained_exactly(
    registry: aevents.Registry, options: dict[str, Any], problem: str
) -> None:
    """The message names the call, the pattern, the rule and the value."""
    with pytest.raises(aevents.ConfigurationError) as caught:
        registry.subscribe(NAME, async_receiver, **options)
    assert caught.value.what == f"subscribe({NAME!r})"
    assert caught.value.problem == problem


def test_the_smallest_valid_options_are_accepted(registry: aevents.Registry) -> None:
    """An int timeout, a tiny one, and an id with spaces around text are fine."""
    registry.subscribe(NAME, async_receiver, id=" audit ", timeout=1)
    registry.subscribe(NAME, sync_receiver, id="tiny", timeout=1e-9)
    assert ids(registry.route(NAME)) == [" audit ", "tiny"]


def test_a_non_callable_is_explained_exactly(registry: aevents.Registry) -> None:
    with pytest.raises(aevents.ConfigurationError) as caught:
        registry.subscribe(NAME, 42)  # type: ignore[call-overload]
    assert str(caught.value) == f"subscribe({NAME!r}): receiver must be callable, got int"


def test_inline_async_is_explained_exactly(registry: aevents.Registry) -> None:
    with pytest.raises(aevents.ConfigurationError) as caught:
        registry.subscribe(NAME, async_receiver, inline=True)
    assert caught.value.what == f"subscribe({NAME!r})"
    assert caught.value.problem == (
        "inline=True is for sync receivers; async ones already run on the loop"
    )


def test_a_duplicate_id_names_the_id_and_the_pattern(registry: aevents.Registry) -> None:
    registry.subscribe(NAME, async_receiver, id="mailer")
    with pytest.raises(aevents.DuplicateReceiverError) as caught:
        registry.subscribe("order:*", other_async_receiver, id="mailer")
    assert "'mailer'" in str(caught.value)
    assert "'order:*'" in str(caught.value)
    assert len(registry) == 1


def test_unsubscribe_without_receiver_or_id_is_explained(registry: aevents.Registry) -> None:
    with pytest.raises(aevents.ConfigurationError) as caught:
        registry.unsubscribe(NAME)
    assert str(caught.value) == f"unsubscribe({NAME!r}): give the receiver or its id"


# ----------------------------------------------------------------- unsubscribing


def test_unsubscribing_one_wildcard_keeps_the_others_of_its_bucket(
    registry: aevents.Registry,
) -> None:
    """Patterns under the same first segment, or the same leading wildcard, stay routed."""
    registry.subscribe("user:*:created", async_receiver, id="a")
    registry.subscribe("user:**", other_async_receiver, id="b")
    registry.subscribe("**:created", sync_receiver, id="c")
    registry.subscribe("*:account:*", AsyncCallable(), id="d")
    assert ids(registry.route(NAME)) == ["a", "b", "c", "d"]
    assert registry.unsubscribe("user:*:created", id="a") is True
    assert registry.unsubscribe("**:created", id="c") is True
    assert ids(registry.route(NAME)) == ["b", "d"]
    assert registry.unsubscribe("user:**", id="b") is True
    assert registry.unsubscribe("*:account:*", id="d") is True
    assert registry.route(NAME) == ()
    assert len(registry) == 0
    registry.subscribe("user:**", async_receiver, id="again")  # the emptied buckets work again
    registry.subscribe("**", sync_receiver, id="everything")
    assert ids(registry.route(NAME)) == ["again", "everything"]


def test_unsubscribing_one_exact_receiver_keeps_the_others(registry: aevents.Registry) -> None:
    registry.subscribe(NAME, async_receiver, id="a")
    registry.subscribe(NAME, other_async_receiver, id="b")
    registry.subscribe(NAME, sync_receiver, id="c")
    assert registry.unsubscribe(NAME, id="b") is True
    assert ids(registry.route(NAME)) == ["a", "c"]
    assert registry.unsubscribe(NAME, async_receiver) is True
    assert registry.unsubscribe(NAME, sync_receiver, id="c") is True
    assert registry.route(NAME) == ()
    registry.subscribe(NAME, async_receiver, id="a")
    assert ids(registry.route(NAME)) == ["a"]


def test_unsubscribe_needs_both_receiver_and_id_to_match_when_both_are_given(
    registry: aevents.Registry,
) -> None:
    registry.subscribe(NAME, async_receiver, id="a")
    assert registry.unsubscribe(NAME, async_receiver, id="b") is False
    assert registry.unsubscribe(NAME, sync_receiver, id="a") is False
    assert registry.unsubscribe(NAME, async_receiver, id="a") is True


def test_an_id_still_used_on_another_pattern_stays_taken(registry: aevents.Registry) -> None:
    """Unsubscribing one of an id's patterns keeps the id bound to its receiver."""
    registry.subscribe(NAME, async_receiver, id="a")
    registry.subscribe("order:*", async_receiver, id="a")
    registry.unsubscribe(NAME, id="a")
    with pytest.raises(aevents.DuplicateReceiverError):
        registry.subscribe(NAME, sync_receiver, id="a")
    registry.unsubscribe("order:*", id="a")
    registry.subscribe(NAME, sync_receiver, id="a")
    assert [s.receiver for s in registry.route(NAME)] == [sync_receiver]


# ----------------------------------------------------------------- routes and caches


def test_a_receiver_matched_twice_is_routed_once_exact_pattern_first(
    registry: aevents.Registry,
) -> None:
    """One receiver id under several matching patterns gets one delivery: through its exact
    subscription if it has one, else through the first wildcard that matches."""
    registry.subscribe("user:**", async_receiver, id="a")
    registry.subscribe(NAME, async_receiver, id="a")
    registry.subscribe("*:account:*", async_receiver, id="a")
    (subscription,) = registry.route(NAME)
    assert subscription.pattern == NAME
    (subscription,) = registry.route("user:account:deleted")
    assert subscription.pattern == "user:**"


def test_a_route_is_computed_once_and_then_served_from_the_cache(
    registry: aevents.Registry,
) -> None:
    """Routing a name again without changes returns the very same tuple."""
    registry.subscribe("user:**", async_receiver, id="a")
    first = registry.route(NAME)
    assert registry.route(NAME) is first
    registry.subscribe(NAME, sync_receiver, id="b")
    second = registry.route(NAME)
    assert second is not first
    assert registry.route(NAME) is second
    assert ids(second) == ["a", "b"]


def test_the_version_moves_on_every_change_and_only_then(registry: aevents.Registry) -> None:
    assert aevents.Registry().version == 0
    version = registry.version
    registry.subscribe(NAME, async_receiver, id="a")
    assert registry.version == version + 1
    registry.subscribe(NAME, async_receiver, id="a")  # a no-op
    assert registry.version == version + 1
    assert registry.unsubscribe(NAME, id="missing") is False
    assert registry.version == version + 1
    registry.unsubscribe(NAME, id="a")
    assert registry.version == version + 2
    registry.clear()
    assert registry.version == version + 3


def test_clear_forgets_every_subscription_and_id(registry: aevents.Registry) -> None:
    registry.subscribe(NAME, async_receiver, id="a")
    registry.subscribe("user:**", async_receiver, id="a")
    registry.route(NAME)
    registry.clear()
    assert (len(registry), list(registry), registry.subscriptions()) == (0, [], [])
    assert registry.receiver("a") is None
    assert registry.route(NAME) == ()
    registry.subscribe(NAME, sync_receiver, id="a")  # the id is free again
    assert list(registry) == registry.subscriptions()
    assert ids(list(registry)) == ["a"]


def test_a_route_cache_is_emptied_on_every_change(registry: aevents.Registry) -> None:
    """A runtime's cache holds routes until the registry changes, then starts empty."""
    cache = registry.route_cache()
    registry.subscribe(NAME, async_receiver, id="a")
    cache[NAME] = registry.route(NAME)
    registry.subscribe("order:*", sync_receiver, id="b")
    assert cache == {}
    cache[NAME] = registry.route(NAME)
    registry.unsubscribe("order:*", id="b")
    assert cache == {}
    cache[NAME] = registry.route(NAME)
    registry.clear()
    assert cache == {}


def test_a_dropped_route_cache_is_forgotten(registry: aevents.Registry) -> None:
    """Caches are held weakly: a runtime that is gone leaves nothing behind."""
    kept = registry.route_cache()
    dropped = registry.route_cache()
    del dropped
    gc.collect()
    registry.subscribe(NAME, async_receiver, id="a")
    kept[NAME] = registry.route(NAME)
    registry.subscribe("order:*", async_receiver, id="b")
    assert kept == {}
    assert len(registry._caches) == 1


def test_the_route_cache_starts_over_past_its_limit(registry: aevents.Registry) -> None:
    """At most ``MAX_ROUTE_CACHE`` names are cached; routes stay right past the limit."""
    assert MAX_ROUTE_CACHE == 10_000
    registry.subscribe("n:*", async_receiver, id="a")
    for number in range(MAX_ROUTE_CACHE):
        registry.route(f"n:{number}")
    assert len(registry._routes) == MAX_ROUTE_CACHE
    assert ids(registry.route("n:last")) == ["a"]
    assert len(registry._routes) == 1
    assert registry.route("other") == ()
    assert len(registry._routes) == 2
