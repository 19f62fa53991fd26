"""Mirroring Django signals into events: ``post_save`` on a model becomes ``blog:article:saved``.

The Django receiver is connected with a ``dispatch_uid`` and a strong
reference, so mirroring the same (signal, sender, name) again (``ready()``
running twice, a module imported twice) connects nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..._exceptions import ConfigurationError, RuntimeClosedError, RuntimeNotRunningError
from ..._module import publish_threadsafe
from ..._names import validate_name
from ._outbox import publish_in_transaction
from ._transaction import publish_on_commit, report_lost

__all__ = ["mirror_signal", "unmirror_signal"]

PayloadBuilder = Callable[..., Mapping[str, Any] | None]
"""Called with the signal's keyword arguments (``sender``, ``instance``, ``created``, ...);
returns the event's payload, or ``None`` to publish nothing for this signal."""

KeyBuilder = Callable[..., str | None]
"""Called with the signal's keyword arguments; returns the event's ordering key, or ``None``."""


def mirror_signal(
    signal: Any,
    *,
    name: str,
    payload: PayloadBuilder,
    sender: object = None,
    key: KeyBuilder | None = None,
    on_commit: bool = True,
    outbox: bool = False,
    dispatch_uid: str | None = None,
) -> str:
    """Publish event ``name`` each time ``signal`` is sent (by ``sender``, if given).

    The signal must be sent off the event loop's thread, which is where Django
    sends model signals (async ORM calls run the save in a thread). When no
    runtime is running (a management command, a shell) or it has stopped, the
    event is logged as lost, as an ERROR with the count so far
    (``lost_events()``), and the save goes on. The receiver is held strongly.

    Args:
        signal: A Django signal, such as ``post_save``.
        name: The event to publish.
        payload: Gets the signal's keyword arguments and returns the payload,
            or ``None`` to skip this one (a ``raw`` save while loading
            fixtures, say). A bad payload raises from the code that sent the
            signal, inside its transaction.
        sender: Only signals sent by this sender. Default ``None``: any.
        key: Gets the same arguments and returns the event's ordering key
            (``lambda instance, **_: f"article-{instance.pk}"``), so that each
            receiver sees one row's events in the order they were sent.
            Default ``None``: no key.
        on_commit: Publish through ``publish_on_commit`` on the database the
            signal names, so a save that is rolled back publishes nothing.
            ``False`` publishes at once with ``publish_threadsafe``, for signals
            that are not about a database write. Default ``True``.
        outbox: Publish with ``publish_in_transaction`` instead, through the
            connection the signal names, in the transaction of the save: the
            event commits with the row (the store must be a ``PostgresStore``
            in that database). A save outside ``transaction.atomic()`` has
            committed by the time its ``post_save`` is sent, so the event then
            commits just after it, in a transaction of its own: use it with
            ``atomic()`` blocks or ``ATOMIC_REQUESTS``. Default ``False``.
        dispatch_uid: The connection's id. Default ``"aevents:" + name``.

    Returns:
        The ``dispatch_uid``, which ``unmirror_signal`` takes.

    Raises:
        InvalidEventNameError: ``name`` breaks the name grammar.
    """
    validate_name(name)
    if not callable(payload):
        raise ConfigurationError(
            f"mirror_signal({name!r})", f"payload must be a callable, got {payload!r}"
        )
    if key is not None and not callable(key):
        raise ConfigurationError(
            f"mirror_signal({name!r})", f"key must be a callable or None, got {key!r}"
        )
    uid = dispatch_uid if dispatch_uid is not None else f"aevents:{name}"

    def mirror(**kwargs: Any) -> None:
        body = payload(**kwargs)
        if body is None:
            return
        ordering = None if key is None else key(**kwargs)
        if outbox:  # its errors belong to the code that saved: the event commits with it
            publish_in_transaction(name, payload=body, key=ordering, using=kwargs.get("using"))
            return
        try:
            if on_commit:
                publish_on_commit(name, payload=body, key=ordering, using=kwargs.get("using"))
            else:
                publish_threadsafe(name, payload=body, key=ordering)
        except (RuntimeNotRunningError, RuntimeClosedError) as error:
            report_lost(name, str(error))

    mirror.__qualname__ = f"mirror_signal[{name}]"
    signal.connect(mirror, sender=sender, weak=False, dispatch_uid=uid)
    return uid


def unmirror_signal(
    signal: Any, *, name: str, sender: object = None, dispatch_uid: str | None = None
) -> bool:
    """Undo ``mirror_signal`` for the same signal, sender and name (or ``dispatch_uid``).

    Returns whether a mirror was connected.
    """
    uid = dispatch_uid if dispatch_uid is not None else f"aevents:{name}"
    return bool(signal.disconnect(sender=sender, dispatch_uid=uid))
