"""``publish_on_commit``: an event that exists only if the database transaction commits.

The event is checked when it is asked for (name, strict mode, payload), so a
bad one fails in the view that wrote it, inside the transaction, and never
half-way through a commit. The payload is copied then too: changing the dict
afterwards changes nothing. Django keeps the callback until the outermost
``atomic`` block on that database commits, and drops it on a rollback
(including the rollback of a savepoint it was registered in).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any

from django.db import transaction

from ..._exceptions import AeventsError, RuntimeNotRunningError
from ..._module import not_running_fix
from ..._runtime import EventRuntime, current_runtime
from ..._text import counted

__all__ = ["lost_events", "on_event_loop_thread", "publish_on_commit"]

logger = logging.getLogger("aevents.contrib.django")

_lost_lock = threading.Lock()
_lost = 0


def lost_events() -> int:
    """How many events this process committed but could not publish (each was logged)."""
    return _lost


def publish_on_commit(
    name: str,
    /,
    *,
    payload: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    key: str | None = None,
    idempotency_key: str | None = None,
    using: str | None = None,
) -> None:
    """Publish ``name`` once the transaction on database ``using`` commits; never on rollback.

    For sync code: sync views, ORM signal receivers, and functions that async
    views run through ``sync_to_async`` (where Django's transactions live).
    Outside an ``atomic`` block Django runs the callback at once, so the event
    is published before this returns.

    At commit the event goes to the runtime that was running at the call,
    through ``publish_threadsafe`` (it waits for room in the buffer, and with a
    store until the event is journaled). If that runtime has stopped by then,
    nothing is raised into the code that committed (its data is committed
    already): the loss is logged as an ERROR on the ``aevents.contrib.django``
    logger with the event's name and the count of events lost so far
    (``lost_events()``).

    Args:
        name: The event name (positional only).
        payload: A JSON-serialisable mapping, copied at the call.
        metadata: String entries carried with the event.
        key: The ordering key, as for ``publish``.
        idempotency_key: As for ``publish``: a transaction retried after a
            failure that commits twice publishes once.
        using: The database alias. Default ``None``: Django's default database.

    Raises:
        InvalidEventNameError: ``name`` breaks the name grammar.
        UnknownEventError: A strict runtime, and no catalog declares ``name``.
        PayloadError: The payload, the metadata or either key is refused.
        RuntimeNotRunningError: No runtime is running.
        AeventsError: Called on an event loop's thread, where no transaction can
            be open; there, ``await aevents.publish(...)`` once the
            ``sync_to_async`` call that committed has returned.
    """
    if on_event_loop_thread():
        raise AeventsError(
            f"publish_on_commit({name!r}) was called on an event loop's thread, where no "
            "database transaction can be open (Django runs the ORM in sync code); call it "
            "in the function you pass to sync_to_async, or `await aevents.publish(...)` "
            "once that call has committed"
        )
    runtime = current_runtime()
    if runtime is None:
        raise RuntimeNotRunningError(name, not_running_fix())
    body, meta, idempotency_key = runtime._validated(name, payload, metadata, key, idempotency_key)
    transaction.on_commit(
        functools.partial(_publish_committed, runtime, name, body, meta, key, idempotency_key),
        using=using,
    )


def _publish_committed(
    runtime: EventRuntime,
    name: str,
    payload: dict[str, Any],
    metadata: dict[str, str] | None,
    key: str | None,
    idempotency_key: str | None,
) -> None:
    # Whatever goes wrong, the data is committed already: raising would fail a request
    # whose transaction succeeded, and would stop Django running the transaction's
    # later hooks, losing their events without a word. Log the loss instead.
    try:
        runtime.publish_threadsafe(
            name, payload=payload, metadata=metadata, key=key, idempotency_key=idempotency_key
        )
    except AeventsError as error:  # the runtime stopped, or its journal failed
        report_lost(name, f"{type(error).__name__}: {error}")
    except Exception as error:  # a middleware hook raised: keep the traceback
        report_lost(name, f"{type(error).__name__}: {error}", traceback=True)


def report_lost(name: str, reason: str, *, traceback: bool = False) -> None:
    """Log, as an ERROR with the running count, an event that could not be published."""
    global _lost
    with _lost_lock:
        _lost += 1
        lost = _lost
    logger.error(
        "event %r was not published: %s (%s lost in this process so far)",
        name,
        reason,
        counted(lost, "event"),
        exc_info=traceback,
        extra={"event_name": name, "lost_events": lost},
    )


def on_event_loop_thread() -> bool:
    """True when the calling thread is running an asyncio or trio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True
