"""Mistakes in a subscription are caught at the subscribe call, not at the first delivery."""

from __future__ import annotations

import functools
from typing import Any

import pytest

import aevents
from aevents import ConfigurationError, Event, Registry


async def no_arguments() -> None:
    """A receiver that forgot its event parameter."""


async def two_arguments(event: Event, extra: str) -> None:
    """A receiver that wants more than the event."""


def keyword_only(*, event: Event) -> None:
    """A receiver that takes the event by keyword only."""


@pytest.mark.parametrize("receiver", [no_arguments, two_arguments, keyword_only])
def test_a_receiver_that_cannot_take_the_event_is_refused(
    registry: Registry, receiver: Any
) -> None:
    """The error names the receiver id and the pattern, and nothing is subscribed."""
    with pytest.raises(ConfigurationError) as raised:
        registry.subscribe("order:placed", receiver, id="orders-audit")
    message = str(raised.value)
    assert "'orders-audit'" in message
    assert "'order:placed'" in message
    assert "one positional argument" in message
    assert registry.subscriptions() == []


def test_the_decorator_refuses_it_too(registry: Registry) -> None:
    """@subscribe(...) on a function without the event parameter raises at decoration."""
    with pytest.raises(ConfigurationError, match=r"order:\*\*"):

        @registry.subscribe("order:**")
        async def forgot_the_event() -> None:
            """Never subscribed."""


@pytest.mark.parametrize(
    "receiver",
    [
        lambda event: None,
        lambda event, extra=1: None,
        lambda *args: None,
        functools.partial(lambda prefix, event: None, "p"),
        print,  # a builtin: no signature to check on some Pythons, accepted either way
    ],
    ids=["one", "defaulted-extra", "varargs", "partial", "builtin"],
)
def test_receivers_that_take_one_positional_argument_are_accepted(
    registry: Registry, receiver: Any
) -> None:
    """Defaults, *args, partials and builtins pass the check."""
    registry.subscribe("order:placed", receiver, id="ok")
    assert len(registry.subscriptions()) == 1


def test_a_callable_object_is_checked_through_its_call(registry: Registry) -> None:
    """An instance is checked by its __call__ without self."""

    class Good:
        def __call__(self, event: Event) -> None:
            """Takes the event."""

    class Bad:
        def __call__(self) -> None:
            """Takes nothing."""

    registry.subscribe("order:placed", Good(), id="good")
    with pytest.raises(ConfigurationError, match="'bad'"):
        registry.subscribe("order:placed", Bad(), id="bad")


def test_receiver_none_raises_instead_of_returning_a_decorator(registry: Registry) -> None:
    """subscribe(pattern, receiver=None) is a mistake, not the decorator form."""
    with pytest.raises(TypeError, match="receiver is None"):
        registry.subscribe("a:**", receiver=None)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="receiver is None"):
        registry.subscribe("a:**", None)  # type: ignore[call-overload]
    assert registry.subscriptions() == []


def test_module_level_subscribe_refuses_none_and_keeps_its_decorator() -> None:
    """aevents.subscribe: None raises, no receiver at all still decorates."""
    with pytest.raises(TypeError, match="receiver is None"):
        aevents.subscribe("a:**", receiver=None)  # type: ignore[call-overload]

    @aevents.subscribe("a:**", id="decorated")
    async def decorated(event: Event) -> None:
        """Subscribed by the decorator."""

    assert [s.receiver_id for s in aevents.default_registry.subscriptions()] == ["decorated"]
