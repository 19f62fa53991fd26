"""The delivery step: one attempt of one delivery, with the delivery hooks around it.

Every path runs attempts through ``attempt``: the workers, the durable
workers and eager delivery. What the attempt's outcome becomes is decided
apart, in ``Failures.on_failure`` and by the caller's bookkeeping.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ._delivery import Delivery, SyncThreads, call_receiver
from ._middleware import Middleware, after_delivery

__all__ = ["attempt"]


def attempt(
    delivery: Delivery,
    hooks: tuple[Middleware, ...],
    time_limit: float | None,
    threads: SyncThreads,
) -> Awaitable[Any]:
    """One attempt of ``delivery``: await it; it raises what the attempt failed with.

    A plain function that returns the awaitable, so that the common case, an
    async receiver with no hooks and no time limit, costs no coroutine of its
    own: the receiver's coroutine is returned as is. ``hooks`` are the
    middleware with delivery hooks; ``time_limit`` the attempt's timeout in
    seconds, if any. The caller sets ``current_delivery()`` around it.
    """
    subscription = delivery.subscription
    if not hooks and time_limit is None and subscription.is_async:
        return subscription.receiver(delivery.event)  # type: ignore[no-any-return]
    if not hooks:
        return call_receiver(subscription, delivery.event, time_limit, threads)
    return _with_hooks(delivery, hooks, time_limit, threads)


async def _with_hooks(
    delivery: Delivery,
    hooks: tuple[Middleware, ...],
    time_limit: float | None,
    threads: SyncThreads,
) -> None:
    """An attempt with ``before_delivery`` hooks in order and ``after_delivery`` in reverse."""
    info = delivery.info()
    entered: list[tuple[Middleware, Any]] = []
    try:
        for middleware in hooks:
            entered.append((middleware, middleware.before_delivery(info)))
        await call_receiver(delivery.subscription, delivery.event, time_limit, threads)
    except BaseException as error:
        for middleware, state in reversed(entered):
            after_delivery(middleware, info, state, error)
        raise
    for middleware, state in reversed(entered):
        after_delivery(middleware, info, state, None)
