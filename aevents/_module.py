"""Module-level shortcuts: ``aevents.publish`` and friends, bound to what is running."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import anyio.lowlevel

from ._event import Event
from ._exceptions import RuntimeNotRunningError
from ._policy import RetryPolicy
from ._registry import MISSING, Receiver, Scope, _Missing, default_registry
from ._runtime import EventRuntime, current_runtime

__all__ = [
    "publish",
    "publish_many",
    "publish_many_nowait",
    "publish_nowait",
    "publish_threadsafe",
    "subscribe",
    "unsubscribe",
]

R = TypeVar("R", bound=Callable[..., Any])


def _runtime_for(name: str) -> EventRuntime:
    runtime = current_runtime()
    if runtime is None:
        raise RuntimeNotRunningError(name, not_running_fix())
    return runtime


def not_running_fix() -> str:
    """How to start a runtime, for where the caller is: Django, Starlette/FastAPI, a script."""
    try:
        anyio.lowlevel.current_token()
        in_loop = True
    except Exception:  # no event loop running on this thread
        in_loop = False
    conf = sys.modules.get("django.conf")
    if conf is not None and getattr(conf.settings, "configured", False):
        if in_loop:
            return (
                "serve the project with `application = "
                "aevents.contrib.django.get_asgi_application()` in asgi.py"
            )
        return (
            "in a Django shell or management command, run the publishing code inside "
            "`async with aevents.EventRuntime():` (in a function run with asyncio.run()); "
            "under an ASGI server, serve aevents.contrib.django.get_asgi_application()"
        )
    if in_loop and "starlette" in sys.modules:
        module = "fastapi" if "fastapi" in sys.modules else "starlette"
        return (
            f"pass `lifespan=aevents.contrib.{module}.events_lifespan()` to the outermost app, "
            "and run the server with its lifespan on"
        )
    if in_loop:
        return RuntimeNotRunningError.DEFAULT_FIX
    return (
        RuntimeNotRunningError.DEFAULT_FIX
        + ", inside an async function run with anyio.run() or asyncio.run()"
    )


async def publish(
    name: str,
    /,
    *,
    payload: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    key: str | None = None,
    idempotency_key: str | None = None,
) -> Event:
    """``await runtime.publish(...)`` on the running runtime (see ``current_runtime``).

    Waits for room, and with a store until the event is journaled. Cancellation
    behaves as in ``EventRuntime.publish``, which documents every argument.

    Args:
        name: The event name (positional only).
        payload: A JSON-serialisable mapping with ``str`` keys; default empty.
        metadata: String entries carried with the event.
        key: An ordering key: one receiver gets one key's events in order.
        idempotency_key: A repeat within the runtime's ``idempotency_window``
            returns the first event and publishes nothing.

    Returns:
        The accepted event.

    Raises:
        RuntimeNotRunningError: No runtime is running here; the message says how
            to start one.
        AeventsError: Any error of ``EventRuntime.publish`` (a bad name or
            payload, a closed runtime, a journal error).
    """
    return await _runtime_for(name).publish(
        name, payload=payload, metadata=metadata, key=key, idempotency_key=idempotency_key
    )


def publish_nowait(
    name: str,
    /,
    *,
    payload: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    key: str | None = None,
    idempotency_key: str | None = None,
) -> Event:
    """``runtime.publish_nowait(...)`` on the running runtime: never waits.

    Args:
        name: The event name (positional only).
        payload: A JSON-serialisable mapping with ``str`` keys; default empty.
        metadata: String entries carried with the event.
        key: An ordering key: one receiver gets one key's events in order.
        idempotency_key: A repeat within the runtime's ``idempotency_window``
            returns the first event and publishes nothing.

    Returns:
        The accepted event.

    Raises:
        RuntimeNotRunningError: No runtime is running here.
        QueueFullError: The buffer has no room.
        WrongThreadError: Called from a thread other than the event loop's.
        AeventsError: Any other error of ``EventRuntime.publish_nowait``.
    """
    return _runtime_for(name).publish_nowait(
        name, payload=payload, metadata=metadata, key=key, idempotency_key=idempotency_key
    )


async def publish_many(
    name: str,
    /,
    payloads: Iterable[Mapping[str, Any] | None],
    *,
    keys: Iterable[str | None] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Event]:
    """``await runtime.publish_many(...)`` on the running runtime: a batch, all or none.

    ``EventRuntime.publish_many`` documents every argument, the waits and
    cancellation.

    Args:
        name: The event name of every event in the batch (positional only).
        payloads: One JSON-serialisable mapping per event, in order.
        keys: ``None``, or one ordering key (``str`` or ``None``) per payload.
        metadata: String entries carried by every event of the batch.

    Returns:
        The accepted events, in order.

    Raises:
        RuntimeNotRunningError: No runtime is running here; the message says how
            to start one.
        AeventsError: Any error of ``EventRuntime.publish_many``; none of the
            batch was accepted.
    """
    return await _runtime_for(name).publish_many(name, payloads, keys=keys, metadata=metadata)


def publish_many_nowait(
    name: str,
    /,
    payloads: Iterable[Mapping[str, Any] | None],
    *,
    keys: Iterable[str | None] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Event]:
    """``runtime.publish_many_nowait(...)`` on the running runtime: never waits.

    Args:
        name: The event name of every event in the batch (positional only).
        payloads: One JSON-serialisable mapping per event, in order.
        keys: ``None``, or one ordering key (``str`` or ``None``) per payload.
        metadata: String entries carried by every event of the batch.

    Returns:
        The accepted events, in order.

    Raises:
        RuntimeNotRunningError: No runtime is running here.
        QueueFullError: The buffer has no room for the whole batch; none of it
            was accepted.
        AeventsError: Any other error of ``EventRuntime.publish_many_nowait``.
    """
    return _runtime_for(name).publish_many_nowait(name, payloads, keys=keys, metadata=metadata)


def publish_threadsafe(
    name: str,
    /,
    *,
    payload: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    key: str | None = None,
    idempotency_key: str | None = None,
) -> Event:
    """``runtime.publish_threadsafe(...)`` on the running runtime, from a foreign thread.

    Blocks the calling thread until the event is accepted.

    Args:
        name: The event name (positional only).
        payload: A JSON-serialisable mapping with ``str`` keys; default empty.
        metadata: String entries carried with the event.
        key: An ordering key: one receiver gets one key's events in order.
        idempotency_key: A repeat within the runtime's ``idempotency_window``
            returns the first event and publishes nothing.

    Returns:
        The accepted event.

    Raises:
        RuntimeNotRunningError: No runtime is running in this process.
        AeventsError: Called on the event loop's thread, or any other error of
            ``EventRuntime.publish_threadsafe``.
    """
    return _runtime_for(name).publish_threadsafe(
        name, payload=payload, metadata=metadata, key=key, idempotency_key=idempotency_key
    )


@overload
def subscribe(
    pattern: str,
    *,
    id: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    inline: bool = False,
    scope: Scope = "fleet",
) -> Callable[[R], R]: ...


@overload
def subscribe(
    pattern: str,
    receiver: R,
    *,
    id: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    inline: bool = False,
    scope: Scope = "fleet",
) -> R: ...


def subscribe(
    pattern: str,
    receiver: R | _Missing = MISSING,
    *,
    id: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    inline: bool = False,
    scope: Scope = "fleet",
) -> R | Callable[[R], R]:
    """Subscribe a receiver on ``aevents.default_registry``, as a decorator or with ``receiver``.

    See ``Registry.subscribe`` for the arguments, their defaults and what it raises.

    Returns:
        The receiver unchanged, or, without ``receiver``, a decorator that
            subscribes the function it decorates and returns it unchanged.
    """
    if receiver is MISSING:
        return default_registry.subscribe(
            pattern, id=id, retry=retry, timeout=timeout, inline=inline, scope=scope
        )
    return default_registry.subscribe(
        pattern, receiver, id=id, retry=retry, timeout=timeout, inline=inline, scope=scope
    )


def unsubscribe(pattern: str, receiver: Receiver | None = None, *, id: str | None = None) -> bool:
    """Remove a subscription from ``aevents.default_registry``.

    See ``Registry.unsubscribe`` for the arguments.

    Returns:
        Whether anything was removed.
    """
    return default_registry.unsubscribe(pattern, receiver, id=id)
