"""Calling one receiver for one delivery, and what a receiver can know about it.

The worker in ``_runtime`` calls plain async receivers itself (the hot path);
everything with a twist comes here: a timeout, a sync receiver on a worker
thread, a cheap sync receiver run inline, a sync callable that returns an
awaitable.
"""

from __future__ import annotations

import inspect
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.to_thread

from ._event import Event

if TYPE_CHECKING:
    from ._registry import Subscription
    from ._state import Epoch

__all__ = [
    "DeliveryInfo",
    "Item",
    "ReplayedAttempt",
    "call_receiver",
    "current_delivery",
    "delivery_info",
    "delivery_var",
]

Item = tuple[Event, "Subscription", int, "Epoch"]
"""One queued delivery: event, subscription, attempt number (from 1), drain epoch."""

delivery_var: ContextVar[Item | None] = ContextVar("aevents_delivery", default=None)
"""The delivery the current task (or worker thread) is running, if any."""


class ReplayedAttempt(int):
    """An attempt number that remembers its delivery was replayed from the journal.

    The queue carries attempt numbers; tagging the number keeps the flag on
    the delivery through its retries (``attempt + 1`` stays tagged) at no
    cost to deliveries that were not replayed.
    """

    __slots__ = ()

    def __add__(self, other: int) -> ReplayedAttempt:
        return ReplayedAttempt(int(self) + other)


class DeliveryInfo(NamedTuple):
    """What a receiver, or a middleware, may ask about the delivery it is running.

    A named tuple rather than an attrs class: middleware builds one per
    attempt, and a tuple costs a third as much.
    """

    event: Event
    receiver_id: str
    attempt: int
    """1 on the first try, 2 on the first retry, and so on."""
    pattern: str
    """The pattern the receiver subscribed with, which matched the event's name."""
    replay: bool
    """True when the journal replayed this delivery after a restart: an earlier run
    accepted it and may have run it (``attempt`` counts the attempts it recorded)."""


def current_delivery() -> DeliveryInfo | None:
    """The delivery being run by the calling receiver, or ``None`` outside a receiver.

    Works in async receivers and in sync receivers on worker threads.
    """
    item = delivery_var.get()
    if item is None:
        return None
    return delivery_info(item)


_new_info = tuple.__new__  # a NamedTuple without its __new__'s argument handling


def delivery_info(item: Item) -> DeliveryInfo:
    """The ``DeliveryInfo`` of a queued delivery (the worker's one-middleware path inlines it)."""
    event, subscription, attempt, _ = item
    return _new_info(
        DeliveryInfo,
        (
            event,
            subscription.receiver_id,
            attempt,
            subscription.pattern,
            type(attempt) is ReplayedAttempt,
        ),
    )


async def call_receiver(
    subscription: Subscription,
    event: Event,
    time_limit: float | None,
    limiter: anyio.CapacityLimiter,
) -> None:
    """Run one attempt of one delivery; raise whatever the receiver raised.

    Running past ``time_limit`` seconds raises ``TimeoutError``. A sync
    receiver on a thread cannot be interrupted: when its attempt times out (or
    the runtime is cancelled) the attempt is abandoned and the thread is left
    to finish on its own.
    """
    receiver = subscription.receiver
    if subscription.is_async:
        if time_limit is None:
            await receiver(event)
        else:
            with anyio.fail_after(time_limit):
                await receiver(event)
        return
    result: Any
    if subscription.inline:
        result = receiver(event)
    else:
        # The result comes back through a box: trio refuses a thread function
        # whose return value is a coroutine, which a lambda around an async
        # function produces.
        box: list[Any] = []

        def run_in_thread() -> None:
            box.append(receiver(event))

        if time_limit is None:
            await anyio.to_thread.run_sync(run_in_thread, limiter=limiter, abandon_on_cancel=True)
        else:
            with anyio.fail_after(time_limit):
                await anyio.to_thread.run_sync(
                    run_in_thread, limiter=limiter, abandon_on_cancel=True
                )
        result = box[0]
    if inspect.isawaitable(result):
        # A sync callable that returns an awaitable (a lambda around an async
        # function, a wrapper that hides ``async def``): finish it on the loop.
        if time_limit is None:
            await result
        else:
            with anyio.fail_after(time_limit):
                await result
