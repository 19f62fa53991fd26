"""Middleware: hooks around each publish and around each delivery attempt.

A middleware overrides any of four plain (sync) methods. A ``before_*`` hook
returns a state object that the matching ``after_*`` hook receives, so a
middleware can time an attempt, open and close a span, or set and reset a
context variable without keeping a table of its own::

    class Timing(aevents.Middleware):
        def before_delivery(self, delivery):
            return time.perf_counter()

        def after_delivery(self, delivery, state, error):
            print(delivery.receiver_id, time.perf_counter() - state, error)

The rules, the same for both pairs:

* ``before_*`` hooks run in the order the middleware was given; ``after_*``
  hooks in the reverse order, and only for middleware whose ``before_*`` ran.
* A ``before_publish`` that raises rejects the publish: the publisher gets that
  error and nothing is accepted. A ``before_delivery`` that raises fails the
  attempt with that error, without calling the receiver: the attempt is
  retried or dead-lettered like any failure.
* ``after_*`` hooks always run, with the error that ended the publish or the
  attempt (a cancellation too), or ``None``. They cannot swallow or replace it.
  An ``after_*`` hook that raises is logged on ``aevents.middleware`` and
  ignored: the outcome stays what it was and the other hooks still run.
* Hooks are sync and run on the event loop's thread, so they must be quick.
  ``before_delivery`` runs in the task that calls the receiver: a context
  variable it sets is seen by an async receiver, and by a sync receiver on a
  worker thread.

Three more hooks say what became of a delivery, for metrics and alerts:
``on_retry`` (a failed attempt will run again), ``on_dead_letter`` (it ran out
of attempts) and ``on_dropped`` (shutdown left it unrun, or its dead letter
was evicted). They are called on the loop's thread; one that raises is logged
and ignored.

Hooks cost nothing when no middleware overrides them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import attrs

from ._delivery import DeliveryInfo
from ._event import Event
from ._exceptions import ConfigurationError
from ._policy import DeadLetter

__all__ = [
    "Counting",
    "Middleware",
    "MiddlewareStack",
    "PublishHooks",
    "Publishing",
    "after_delivery",
    "check_middleware",
    "log_after_delivery_error",
    "notify",
]

logger = logging.getLogger("aevents.middleware")

Counting = Callable[[str, str, int, Event, float, BaseException | None], None]
"""``Metrics.count``'s signature: an attempt counted without a ``DeliveryInfo``."""


@attrs.define(slots=True, eq=False)
class Publishing:
    """One call to publish, as the middleware sees it.

    ``before_publish`` may change ``metadata`` (add a tenant, a trace context)
    before the event is built from it. ``event`` is the accepted event once the
    publish succeeded, for ``after_publish``.
    """

    name: str
    payload: Mapping[str, Any] | None
    metadata: dict[str, str]
    key: str | None = None
    """The ordering key; a middleware may set or change it too."""
    event: Event | None = None


class Middleware:
    """Base class for middleware: override the hooks you need; the rest cost nothing."""

    def before_publish(self, publishing: Publishing) -> Any:
        """Called before the event is built; the return value goes to ``after_publish``."""
        return None

    def after_publish(
        self, publishing: Publishing, state: Any, error: BaseException | None
    ) -> None:
        """Called once the publish returned its event (``error`` is None) or raised."""

    def before_delivery(self, delivery: DeliveryInfo) -> Any:
        """Called before each attempt; the return value goes to ``after_delivery``."""
        return None

    def after_delivery(
        self, delivery: DeliveryInfo, state: Any, error: BaseException | None
    ) -> None:
        """Called after each attempt, with the error it failed with or None."""

    def on_retry(self, delivery: DeliveryInfo, error: BaseException, delay: float) -> None:
        """Called when a failed attempt is scheduled to run again in ``delay`` seconds."""

    def on_dead_letter(self, delivery: DeliveryInfo, letter: DeadLetter) -> None:
        """Called when a delivery runs out of attempts and becomes ``letter``.

        Also for deliveries the journal replay parks as dead letters; then
        ``delivery.pattern`` is empty if the receiver is no longer subscribed.
        """

    def on_dropped(self, delivery: DeliveryInfo) -> None:
        """Called for each delivery shutdown leaves unrun: queued, waiting in its
        key's lane or for a retry. An attempt that shutdown cancels is reported to
        ``after_delivery`` instead, with the cancellation as its error. Also
        called for each dead letter evicted past ``max_dead_letters``."""


def _overrides(middleware: Middleware, *names: str) -> bool:
    kind = type(middleware)
    return any(getattr(kind, name) is not getattr(Middleware, name) for name in names)


class MiddlewareStack:
    """The runtime's middleware, with the ones that have publish or delivery hooks apart.

    The tuples are replaced, never mutated: a publish or an attempt under way
    keeps the hooks it started with while middleware is added or removed.
    """

    __slots__ = ("all", "count", "delivery", "outcomes", "publish")

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.all: tuple[Middleware, ...] = ()
        self.publish: tuple[Middleware, ...] = ()
        self.delivery: tuple[Middleware, ...] = ()
        self.outcomes: tuple[Middleware, ...] = ()
        self.count: Counting | None
        self.count = None
        for each in middleware:
            self.add(each)

    def add(self, middleware: Middleware) -> None:
        self._set((*self.all, check_middleware(middleware, self.all)))

    def remove(self, middleware: Middleware) -> bool:
        if middleware not in self.all:
            return False
        self._set(tuple(each for each in self.all if each is not middleware))
        return True

    def _set(self, middleware: tuple[Middleware, ...]) -> None:
        self.all = middleware
        self.publish = tuple(
            each for each in middleware if _overrides(each, "before_publish", "after_publish")
        )
        self.delivery = tuple(
            each for each in middleware if _overrides(each, "before_delivery", "after_delivery")
        )
        self.outcomes = tuple(
            each
            for each in middleware
            if _overrides(each, "on_retry", "on_dead_letter", "on_dropped")
        )
        # When the only delivery middleware is a plain aevents.Metrics (not a subclass,
        # whose hooks may differ), the worker calls its count() in place of the hooks,
        # timing the attempt itself. aevents._metrics is loaded if a Metrics exists.
        self.count = None
        if len(self.delivery) == 1:
            metrics = sys.modules.get("aevents._metrics")
            if metrics is not None and type(self.delivery[0]) is metrics.Metrics:
                self.count = self.delivery[0].count  # type: ignore[attr-defined]


def check_middleware(middleware: object, added: Sequence[Middleware]) -> Middleware:
    """``middleware``, unless it is not an ``aevents.Middleware`` or is in ``added`` already."""
    if not isinstance(middleware, Middleware):
        raise ConfigurationError(
            "EventRuntime", f"middleware must subclass aevents.Middleware, got {middleware!r}"
        )
    if middleware in added:
        raise ConfigurationError("EventRuntime", f"middleware {middleware!r} is already added")
    return middleware


class PublishHooks:
    """The publish hooks around one publish: ``with PublishHooks(...) as publishing:``.

    Entering runs every ``before_publish`` (if one raises, the afters of those
    entered run and the error propagates); leaving runs the afters with the
    error the block raised, or None.
    """

    __slots__ = ("entered", "hooks", "publishing")

    def __init__(
        self,
        hooks: tuple[Middleware, ...],
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None = None,
    ) -> None:
        self.hooks = hooks
        self.publishing = Publishing(name, payload, {} if metadata is None else dict(metadata), key)
        self.entered: list[tuple[Middleware, Any]] = []

    def __enter__(self) -> Publishing:
        for middleware in self.hooks:
            try:
                self.entered.append((middleware, middleware.before_publish(self.publishing)))
            except BaseException as error:
                self._after(error)
                raise
        return self.publishing

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._after(error)

    def _after(self, error: BaseException | None) -> None:
        publishing = self.publishing
        for middleware, state in reversed(self.entered):
            try:
                middleware.after_publish(publishing, state, error)
            except Exception:
                logger.exception(
                    "middleware %r raised in after_publish for %r; ignored",
                    middleware,
                    publishing.name,
                    extra={"event_name": publishing.name},
                )


def after_delivery(
    middleware: Middleware, delivery: DeliveryInfo, state: Any, error: BaseException | None
) -> None:
    """Call one middleware's ``after_delivery``; log (and ignore) what it raises."""
    try:
        middleware.after_delivery(delivery, state, error)
    except Exception:
        log_after_delivery_error(middleware, "after_delivery", delivery)


def log_after_delivery_error(middleware: Middleware, hook: str, delivery: DeliveryInfo) -> None:
    """Log the exception a middleware's hook raised about a delivery (call in ``except``)."""
    logger.exception(
        "middleware %r raised in %s for receiver %r on %r; ignored",
        middleware,
        hook,
        delivery.receiver_id,
        delivery.event.name,
        extra={
            "event_id": delivery.event.id,
            "event_name": delivery.event.name,
            "receiver_id": delivery.receiver_id,
            "attempt": delivery.attempt,
        },
    )


def notify(hooks: tuple[Middleware, ...], hook: str, delivery: DeliveryInfo, *args: Any) -> None:
    """Call one of the outcome hooks (``on_retry``, ...) of each middleware, in order."""
    for middleware in hooks:
        try:
            getattr(middleware, hook)(delivery, *args)
        except Exception:
            log_after_delivery_error(middleware, hook, delivery)
