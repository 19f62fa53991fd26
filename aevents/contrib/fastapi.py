"""FastAPI glue: the app's ``EventRuntime`` as a typed dependency.

::

    from fastapi import FastAPI
    from aevents.contrib.fastapi import Events, events_lifespan

    app = FastAPI(lifespan=events_lifespan())

    @app.post("/orders")
    async def place_order(order: Order, events: Events) -> dict[str, str]:
        event = await events.publish("order:placed", payload=order.model_dump())
        return {"event_id": event.id}

``Events`` is ``Annotated[EventRuntime, Depends(get_events)]``: type checkers
see an ``EventRuntime``. The lifespan is ``aevents.contrib.starlette``'s,
re-exported here.
"""

from __future__ import annotations

from typing import Annotated

try:
    from fastapi import Depends
    from starlette.requests import HTTPConnection
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    if error.name is None or error.name.partition(".")[0] not in ("fastapi", "starlette"):
        raise
    raise ImportError(
        "aevents.contrib.fastapi needs FastAPI: pip install 'aevents[fastapi]'"
    ) from error

from .. import EventRuntime
from .starlette import STATE_KEY, NoRuntimeInStateError, events_lifespan, get_runtime

__all__ = [
    "STATE_KEY",
    "Events",
    "NoRuntimeInStateError",
    "events_lifespan",
    "get_events",
    "get_runtime",
]


async def get_events(connection: HTTPConnection) -> EventRuntime:
    """The dependency behind ``Events``: the runtime ``events_lifespan`` started.

    Async on purpose: FastAPI runs a plain ``def`` dependency on a worker
    thread. Raises ``NoRuntimeInStateError`` when the app has no runtime.
    """
    return get_runtime(connection)


Events = Annotated[EventRuntime, Depends(get_events)]
"""A parameter annotated ``events: Events`` receives the app's ``EventRuntime``."""
