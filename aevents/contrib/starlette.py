"""Starlette glue: an ``EventRuntime`` that lives as long as the app's lifespan.

::

    from starlette.applications import Starlette
    from aevents.contrib.starlette import events_lifespan, get_runtime

    app = Starlette(routes=..., lifespan=events_lifespan())

    async def signup(request: Request) -> Response:
        await get_runtime(request).publish("user:signed-up", payload={...})

The runtime is put in the lifespan state under ``"events"``, so a request sees
it as ``request.state.events`` (``get_runtime`` is the typed spelling), and
module-level ``aevents.publish`` finds it from any endpoint, dependency or
background task. Works with FastAPI too (see ``aevents.contrib.fastapi``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

try:
    from starlette.requests import HTTPConnection
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    if error.name is None or error.name.partition(".")[0] != "starlette":
        raise
    raise ImportError(
        "aevents.contrib.starlette needs Starlette: pip install 'aevents[starlette]'"
    ) from error

from .. import AeventsError, ConfigurationError, EventRuntime

__all__ = ["STATE_KEY", "AppLifespan", "NoRuntimeInStateError", "events_lifespan", "get_runtime"]

STATE_KEY: Final = "events"
"""The lifespan state key the runtime is stored under: ``request.state.events``."""

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""What Starlette and FastAPI accept as ``lifespan=``: ``app -> async context manager``
yielding the lifespan state (a mapping) or ``None``."""


class NoRuntimeInStateError(AeventsError, LookupError):
    """A request asked for the runtime, but the app's lifespan did not start one."""

    def __init__(self) -> None:
        self.key = STATE_KEY
        super().__init__(
            f"request.state has no {STATE_KEY!r}: no event runtime was started for this app; "
            "pass `lifespan=aevents.contrib.starlette.events_lifespan()` to the outermost "
            "Starlette or FastAPI app (the lifespans of mounted apps never run)"
        )


def events_lifespan(
    lifespan: AppLifespan | None = None,
    /,
    *,
    runtime_factory: Callable[[], EventRuntime] = EventRuntime,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan that runs an ``EventRuntime`` for the app, wrapping the app's own.

    Pass it as ``Starlette(lifespan=...)`` or ``FastAPI(lifespan=...)``. The
    runtime goes into the lifespan state under ``"events"``, so a request sees
    it as ``request.state.events`` (or through ``get_runtime``).

    Startup fails, and the server does not start, if the runtime cannot
    start (a journal that cannot be opened raises ``StoreError``). At
    shutdown the runtime stops taking new events and drains what it accepted
    within its ``shutdown_timeout``, then cancels the rest (see ``EventRuntime``).

    Args:
        lifespan: The app's own lifespan (positional only). It runs outside the
            runtime: its startup first, its teardown only once the runtime has
            drained, so receivers can use what it opened until the last delivery
            is done. Its state is merged with ``{"events": runtime}``; it may not
            use that key. Default ``None``.
        runtime_factory: Builds a new runtime each time the lifespan starts (a
            runtime starts only once, and a test client may run the lifespan
            again): ``functools.partial(EventRuntime, workers=4, store=...)`` or
            a function. Default ``EventRuntime``.

    Returns:
        A lifespan: a function of the app returning an async context manager.

    Raises:
        ConfigurationError: ``runtime_factory`` is a runtime rather than a
            callable (at the call), returns something else than a runtime, or
            the app's lifespan uses the ``"events"`` key (at startup).
    """
    if isinstance(runtime_factory, EventRuntime) or not callable(runtime_factory):
        raise ConfigurationError(
            "events_lifespan(runtime_factory=...)",
            f"expected a callable that returns a new EventRuntime, got {runtime_factory!r}; "
            "a runtime starts once and a lifespan may run more than once, so pass "
            "functools.partial(EventRuntime, ...) or a function",
        )

    @asynccontextmanager
    async def events_lifespan_context(app: Any) -> AsyncIterator[dict[str, Any]]:
        async with _app_state(lifespan, app) as app_state:
            if STATE_KEY in app_state:
                raise ConfigurationError(
                    "events_lifespan(lifespan)",
                    f"the app's lifespan already puts {STATE_KEY!r} in the state; "
                    "that key is the event runtime's, rename the app's",
                )
            runtime = runtime_factory()
            if not isinstance(runtime, EventRuntime):
                raise ConfigurationError(
                    "events_lifespan(runtime_factory=...)",
                    f"must return an EventRuntime, returned {runtime!r}",
                )
            async with runtime:
                yield {**app_state, STATE_KEY: runtime}

    return events_lifespan_context


@asynccontextmanager
async def _app_state(lifespan: AppLifespan | None, app: Any) -> AsyncIterator[Mapping[str, Any]]:
    if lifespan is None:
        yield {}
        return
    async with lifespan(app) as state:
        yield state if state is not None else {}


def get_runtime(connection: HTTPConnection) -> EventRuntime:
    """The runtime ``events_lifespan`` started for this request's (or websocket's) app.

    A hand-written lifespan that yields ``{"events": runtime}`` works too.

    Args:
        connection: The request or websocket.

    Returns:
        The app's running runtime.

    Raises:
        NoRuntimeInStateError: The app's lifespan put no runtime in the state;
            the message says how to install ``events_lifespan``.
    """
    state = connection.scope.get("state")
    runtime = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    if not isinstance(runtime, EventRuntime):
        raise NoRuntimeInStateError()
    return runtime
