"""Running an ``EventRuntime`` for as long as a Django ASGI server runs.

Django's ASGI handler refuses ``lifespan`` scopes, so a server (uvicorn,
hypercorn) has nowhere to start and stop a runtime. ``AeventsASGI`` answers
the lifespan protocol itself: it starts the runtime on ``lifespan.startup``
and drains it on ``lifespan.shutdown``; every other scope goes to the
wrapped app untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from typing import Any, Final

from ..._exceptions import ConfigurationError
from ..._runtime import EventRuntime, _current_runtime
from ._outbox import store_from_setting

__all__ = [
    "STATE_KEY",
    "ASGIApp",
    "AeventsASGI",
    "get_asgi_application",
    "runtime_from_settings",
]

logger = logging.getLogger("aevents.contrib.django")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

STATE_KEY: Final = "events"
"""The lifespan state key the running runtime is stored under (``scope["state"]["events"]``)."""

_OPTIONS = frozenset(
    parameter.name
    for parameter in inspect.signature(EventRuntime).parameters.values()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)


def runtime_from_settings(**overrides: Any) -> EventRuntime:
    """A new ``EventRuntime`` configured by ``settings.AEVENTS`` (a dict; absent means defaults).

    The keys are ``EventRuntime``'s keyword arguments (``workers``, ``buffer``,
    ``strict``, ``shutdown_timeout``, ...). ``store`` may be a path, which
    means ``aevents.SQLiteStore(path)``, a ``postgresql://`` URL, which means
    ``aevents.PostgresStore(url)``, ``{"postgres": "default", **options}``,
    a ``PostgresStore`` on the database of that ``DATABASES`` alias, or a store. Unknown keys raise
    ``ConfigurationError`` naming them. ``overrides`` replace settings of the
    same name (``manage.py aevents_worker --concurrency`` sets ``workers``,
    ``--start-ahead`` sets ``start_ahead``).
    """
    from django.conf import settings

    options = getattr(settings, "AEVENTS", None)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            "settings.AEVENTS", f"must be a dict of EventRuntime options, got {options!r}"
        )
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigurationError(
            "settings.AEVENTS",
            f"unknown {'option' if len(unknown) == 1 else 'options'} "
            f"{', '.join(map(repr, unknown))}; "
            f"the options are {', '.join(sorted(_OPTIONS))}",
        )
    kwargs = {**options, **overrides}
    if kwargs.get("store") is not None:
        kwargs["store"] = store_from_setting(kwargs["store"])
    return EventRuntime(**kwargs)


class AeventsASGI:
    """An ASGI app: an ``EventRuntime`` for the lifespan, ``app`` for every other scope.

    On ``lifespan.startup`` it builds a runtime with ``runtime_factory``
    (``runtime_from_settings`` by default) and enters it; a runtime that
    cannot start (bad settings, a journal in use) is reported with
    ``lifespan.startup.failed`` and the error's message, so the server exits
    instead of serving without one. On ``lifespan.shutdown``, which servers
    send once the last request has finished, it leaves the runtime: new
    publishes are refused, and what was accepted is drained within the
    runtime's ``shutdown_timeout`` before ``lifespan.shutdown.complete``.

    While it runs, module-level ``aevents.publish`` finds it from request
    tasks and ``aevents.publish_threadsafe`` from sync views' threads (each
    request is bound to this app's runtime, so two apps in one process each
    reach their own); it is
    also ``self.runtime`` and, where the server keeps lifespan state,
    ``scope["state"]["events"]``. ``app`` never sees the lifespan. Run the
    server with the lifespan on (uvicorn's default ``--lifespan auto`` is
    enough; ``on`` also makes any lifespan error fatal).
    """

    def __init__(
        self, app: ASGIApp, *, runtime_factory: Callable[[], EventRuntime] | None = None
    ) -> None:
        if isinstance(runtime_factory, EventRuntime) or not (
            runtime_factory is None or callable(runtime_factory)
        ):
            raise ConfigurationError(
                "AeventsASGI(runtime_factory=...)",
                f"expected a callable that returns a new EventRuntime, got {runtime_factory!r}; "
                "a runtime starts once, so pass functools.partial(EventRuntime, ...) or a function",
            )
        self.app = app
        self.runtime_factory = (
            runtime_factory if runtime_factory is not None else runtime_from_settings
        )
        self.runtime: EventRuntime | None = None
        """The running runtime, between startup and shutdown."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        runtime = self.runtime
        if runtime is None:
            await self.app(scope, receive, send)
            return
        # The request's task (and the threads sync_to_async runs its sync code on,
        # which copy its context) publish to this app's runtime, even when another
        # runtime runs in the same process.
        token = _current_runtime.set(runtime)
        try:
            await self.app(scope, receive, send)
        finally:
            _current_runtime.reset(token)

    def _new_runtime(self) -> EventRuntime:
        runtime = self.runtime_factory()
        if not isinstance(runtime, EventRuntime):
            raise ConfigurationError(
                "AeventsASGI(runtime_factory=...)",
                f"must return an EventRuntime, returned {runtime!r}",
            )
        return runtime

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - a server bug
            return
        async with AsyncExitStack() as stack:
            try:
                runtime = await stack.enter_async_context(self._new_runtime())
            except Exception as error:
                logger.exception("the event runtime could not start")
                await send(
                    {
                        "type": "lifespan.startup.failed",
                        "message": f"aevents: the event runtime could not start: "
                        f"{type(error).__name__}: {error}",
                    }
                )
                return
            self.runtime = runtime
            state = scope.get("state")
            if isinstance(state, MutableMapping):
                state[STATE_KEY] = runtime
            try:
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown: the server has finished its requests
                try:
                    await stack.aclose()  # leaves the runtime, which drains
                except Exception as error:
                    logger.exception("the event runtime failed while stopping")
                    await send(
                        {
                            "type": "lifespan.shutdown.failed",
                            "message": f"aevents: the event runtime failed while stopping: "
                            f"{type(error).__name__}: {error}",
                        }
                    )
                    return
            finally:
                self.runtime = None
        await send({"type": "lifespan.shutdown.complete"})


def get_asgi_application(
    *, runtime_factory: Callable[[], EventRuntime] | None = None
) -> AeventsASGI:
    """Django's ``get_asgi_application()``, wrapped in ``AeventsASGI``: use it in ``asgi.py``.

    Sets Django up (as Django's own does, which runs ``AppConfig.ready()`` and
    so imports every app's ``events.py``) and returns an app that runs an
    ``EventRuntime`` configured by ``settings.AEVENTS`` for the server's life.
    """
    from django.core.asgi import get_asgi_application as django_asgi_application

    return AeventsASGI(django_asgi_application(), runtime_factory=runtime_factory)
