"""Every error aevents raises, and nothing else.

::

    AeventsError
    ├── InvalidEventNameError (ValueError)   a name or pattern breaks the grammar
    ├── UnknownEventError (AttributeError)   a catalog key or an undeclared name (strict mode)
    ├── DuplicateEventError (ValueError)     two catalogs declare one name under different keys
    ├── PayloadError (TypeError)             payload or metadata cannot be carried faithfully
    ├── QueueFullError                       publish_nowait found the buffer full
    │   └── KeyInFlightError                 publish_nowait repeated a key whose first publish
    │                                        is still waiting
    ├── RuntimeClosedError                   the runtime is shutting down or has stopped
    ├── RuntimeNotRunningError               module-level publish with no runtime running
    ├── WrongThreadError (RuntimeError)      a publish from a thread it is not meant for
    ├── DuplicateReceiverError (ValueError)  another callable already uses that receiver id
    ├── ConfigurationError (ValueError, TypeError)  a bad argument to subscribe(), RetryPolicy
    │                                        or EventRuntime
    ├── CausationDepthError                  a chain of receivers publishing events ran too deep
    └── StoreError                           the journal cannot be used, or could not record
        ├── JournalInUseError                another process holds the journal
        └── JournalLinkError                 the journal file has more than one name (a hard link)

Each exception keeps its data as attributes and composes its own message, so
callers can branch on the data and log the message as it is. Values a user
typed (names, keys) appear in messages through ``repr`` so control characters
never reach a terminal or a log line raw.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._text import counted

__all__ = [
    "AeventsError",
    "CausationDepthError",
    "ConfigurationError",
    "DuplicateEventError",
    "DuplicateReceiverError",
    "InvalidEventNameError",
    "JournalInUseError",
    "JournalLinkError",
    "KeyInFlightError",
    "PayloadError",
    "QueueFullError",
    "RuntimeClosedError",
    "RuntimeNotRunningError",
    "StoreError",
    "UnknownEventError",
    "WrongThreadError",
]


class AeventsError(Exception):
    """Base class of every error raised by aevents."""

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses take their data, not a message, so the default
        # (cls, args) reduction cannot rebuild them; copy and pickle the state.
        return _rebuild, (type(self), str(self), self.__dict__)


def _rebuild(kind: type[AeventsError], message: str, state: dict[str, Any]) -> AeventsError:
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidEventNameError(AeventsError, ValueError):
    """A name (or pattern) does not follow the grammar."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid event name {name!r}: {reason}")


class UnknownEventError(AeventsError, AttributeError):
    """A catalog has no such key, or a strict runtime was given an undeclared name."""

    def __init__(self, name: str, *, known: Iterable[str] = (), catalog: str | None = None) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        self.catalog = catalog
        if catalog is not None:
            listing = ", ".join(self.known) or "(none)"
            message = f"catalog {catalog} has no event {name!r}; declared keys: {listing}"
        else:
            message = (
                f"event {name!r} is not declared in any catalog and this runtime is strict; "
                "declare it in an aevents.Catalog or start the runtime with strict=False"
            )
        super().__init__(message)


class DuplicateEventError(AeventsError, ValueError):
    """Two catalogs declare the same event name under different keys."""

    def __init__(self, name: str, key: str, existing_key: str, existing_catalog: str) -> None:
        self.name = name
        self.key = key
        self.existing_key = existing_key
        self.existing_catalog = existing_catalog
        super().__init__(
            f"event {name!r} is declared as {key!r} but catalog {existing_catalog} "
            f"already declares it as {existing_key!r}; declare each name once"
        )


class PayloadError(AeventsError, TypeError):
    """A payload or metadata value that cannot make an exact orjson round trip."""

    def __init__(self, event: str, path: str, problem: str) -> None:
        self.event = event
        self.path = path
        self.problem = problem
        super().__init__(f"event {event!r}: {path}: {problem}")


class QueueFullError(AeventsError):
    """``publish_nowait`` found no room in the runtime's buffer."""

    def __init__(self, event: str, buffer: int) -> None:
        self.event = event
        self.buffer = buffer
        super().__init__(
            f"cannot publish {event!r}: the buffer of {counted(buffer, 'delivery')} is full; "
            "use `await publish(...)` to wait for room, or raise EventRuntime(buffer=...)"
        )


class KeyInFlightError(QueueFullError):
    """``publish_nowait`` with an ``idempotency_key`` whose first publish is still waiting.

    A ``QueueFullError``: the repeat would have to wait for that first publish
    to be accepted or refused, and ``publish_nowait`` never waits.
    """

    def __init__(self, event: str, buffer: int, key: str) -> None:
        super().__init__(event, buffer)
        self.key = key
        self.args = (
            f"cannot publish {event!r} with idempotency_key {key!r}: the first publish "
            "with that key is still waiting to be accepted; use `await publish(...)`, "
            "which waits for it and returns its event",
        )


class RuntimeClosedError(AeventsError):
    """The runtime no longer accepts events: it is shutting down or has stopped."""

    def __init__(self, event: str) -> None:
        self.event = event
        super().__init__(f"cannot publish {event!r}: the event runtime is closed")


class RuntimeNotRunningError(AeventsError):
    """Publishing found no running runtime (or this runtime was never entered).

    Raised by the module-level ``publish``, ``publish_nowait`` and
    ``publish_threadsafe`` (and Django's ``publish_on_commit``) when no runtime is
    running, and by a runtime's own publish methods before its ``async with``.
    The message ends with ``fix``.

    Attributes:
        event: The name of the event that was not published.
        fix: How to start a runtime where the publish was made. In a Django
            project it points to ``aevents.contrib.django.get_asgi_application()``;
            in a process that imported Starlette or FastAPI, to
            ``lifespan=events_lifespan()``; in a plain script, to
            ``async with aevents.EventRuntime():`` inside a function run with
            ``anyio.run()`` or ``asyncio.run()``; for a runtime created but never
            entered, to ``async with runtime:``.
    """

    DEFAULT_FIX = (
        "start one with `async with aevents.EventRuntime():` around the code that publishes"
    )

    def __init__(self, event: str, fix: str | None = None) -> None:
        self.event = event
        self.fix = fix if fix is not None else self.DEFAULT_FIX
        super().__init__(f"cannot publish {event!r}: no event runtime is running; {self.fix}")


class WrongThreadError(AeventsError, RuntimeError):
    """A publish was made on a thread it cannot be made from; nothing was published.

    ``await publish(...)`` and ``publish_nowait(...)`` (a runtime's methods and the
    module-level functions) may be called only on the thread of the event loop
    the runtime runs on. From any other thread (a sync view, a sync receiver, a
    thread of your own, another event loop) use ``publish_threadsafe(...)``,
    which hands the publish to the runtime's loop and blocks until the event is
    accepted. ``publish_threadsafe`` called on the loop's thread raises this
    error too, since it would block the loop. Also a ``RuntimeError``.

    Attributes:
        event: The name of the event that was not published.
        call: The function that was called on the wrong thread: ``"publish"``,
            ``"publish_nowait"`` or ``"publish_threadsafe"``.
    """

    def __init__(self, event: str, call: str) -> None:
        self.event = event
        self.call = call
        if call == "publish_threadsafe":
            advice = (
                f"publish_threadsafe({event!r}) was called on the event loop's thread, where it "
                "would block the loop; use `await publish(...)` or `publish_nowait(...)` there"
            )
        else:
            advice = (
                f"{call}({event!r}) was called from a thread that is not the event loop's, "
                "and the runtime is not thread-safe; from another thread use "
                "`publish_threadsafe(...)`, which hands the publish to the loop and waits "
                "until it is accepted"
            )
        super().__init__(advice)


class DuplicateReceiverError(AeventsError, ValueError):
    """A different callable is already subscribed under this receiver id."""

    def __init__(self, receiver_id: str, pattern: str) -> None:
        self.receiver_id = receiver_id
        self.pattern = pattern
        super().__init__(
            f"receiver id {receiver_id!r} is already used by a different callable "
            f"(subscribing to {pattern!r}); pass a unique id=... to subscribe()"
        )


class CausationDepthError(AeventsError):
    """Receivers publishing events that publish events went deeper than the cap."""

    def __init__(self, event: str, depth: int, limit: int) -> None:
        self.event = event
        self.depth = depth
        self.limit = limit
        super().__init__(
            f"cannot publish {event!r}: causation depth {depth} exceeds the limit of {limit}; "
            "a receiver chain is publishing without end (raise max_causation_depth if intended)"
        )


class ConfigurationError(AeventsError, ValueError, TypeError):
    """A bad argument to ``subscribe``, ``RetryPolicy`` or ``EventRuntime``."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"{what}: {problem}")


class StoreError(AeventsError):
    """The journal cannot be opened or used, or could not record something."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"journal {path!r}: {problem}")


class JournalInUseError(StoreError):
    """Another process holds the journal alone: an ``SQLiteStore(exclusive=True)``, or an
    older aevents; or an exclusive store found the journal open in another process."""

    def __init__(self, path: str, problem: str | None = None) -> None:
        super().__init__(
            path,
            problem
            or "is in use by another process; one runtime owns a journal at a time "
            "(stop it first, or give each process its own file)",
        )


class JournalLinkError(StoreError):
    """The journal file has more than one name (a hard link); it is refused.

    SQLite keeps one ``-wal`` and ``-shm`` file per name, so two processes opening
    two names of one file would each write their own log, never see each other's
    writes, and corrupt the journal. Remove the extra links (or copy the file)
    to use it again. A symlink is fine: the journal's side files and its lock
    follow the file it points to. A ``StoreError``; ``python -m aevents journal``
    exits 1 on it.

    Attributes:
        path: The journal path as given.
        problem: What is wrong, with the number of names the file has.
    """

    def __init__(self, path: str, links: int) -> None:
        super().__init__(
            path,
            f"is a hard link (the file has {links} names); SQLite keeps a separate -wal and "
            "-shm file per name, so processes that open different names of one file do not "
            "see each other's writes and corrupt it. Give the journal a single name (remove "
            "the other links, or copy the file)",
        )
