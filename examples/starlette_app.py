"""aevents in a Starlette app: the runtime lives in the app's lifespan.

Run it from the repository root (``pip install -e '.[starlette]' uvicorn``)::

    uvicorn examples.starlette_app:app
    curl -X POST localhost:8000/signup -d '{"email": "ada@example.com"}'
    curl -X POST localhost:8000/newsletter -d '{"email": "ada@example.com"}'
    curl localhost:8000/stats

With ``EVENTS_JOURNAL=events.db`` the runtime journals every event, so what
was accepted survives a crash (see the README's durable delivery section).
``tests/integration/test_starlette_server.py`` runs this app under uvicorn.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aevents
from aevents.contrib.starlette import events_lifespan, get_runtime

USER = aevents.Catalog(
    {
        "SIGNED_UP": "user:signed-up",
        "NEWSLETTER_JOINED": "user:newsletter:joined",
    }
)


class Outbox:
    """Stands in for a mail connection the app opens at startup and closes at shutdown."""

    def __init__(self) -> None:
        self.is_open = False
        self.sent = 0

    def send(self, to: str, subject: str) -> None:
        if not self.is_open:
            raise RuntimeError("the outbox is closed")
        self.sent += 1
        print(f"mail to {to}: {subject}")


outbox = Outbox()


@aevents.subscribe(USER.SIGNED_UP)
async def send_welcome(event: aevents.Event) -> None:
    """Runs on the runtime's workers, after the response has gone out."""
    outbox.send(event.payload["email"], "Welcome!")


@aevents.subscribe(USER.NEWSLETTER_JOINED)
async def confirm_newsletter(event: aevents.Event) -> None:
    outbox.send(event.payload["email"], "Please confirm your subscription")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    """The app's own lifespan: receivers can use what it opens until the last one is done."""
    outbox.is_open = True
    try:
        yield {"outbox": outbox}
    finally:
        outbox.is_open = False
        print(f"outbox closed after {outbox.sent} mails")


def make_runtime() -> aevents.EventRuntime:
    """A new runtime each time the lifespan starts; durable if EVENTS_JOURNAL is set."""
    journal = os.environ.get("EVENTS_JOURNAL")
    store = aevents.SQLiteStore(journal) if journal else None
    return aevents.EventRuntime(workers=4, store=store)


async def signup(request: Request) -> JSONResponse:
    email = (await request.json())["email"]
    event = await request.state.events.publish(USER.SIGNED_UP, payload={"email": email})
    return JSONResponse({"event_id": event.id}, status_code=202)


async def join_newsletter(request: Request) -> JSONResponse:
    email = (await request.json())["email"]
    # Published after the response is sent; module-level publish finds the app's runtime.
    task = BackgroundTask(aevents.publish, USER.NEWSLETTER_JOINED, payload={"email": email})
    return JSONResponse({"joined": email}, status_code=202, background=task)


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(attrs.asdict(get_runtime(request).stats()))


app = Starlette(
    routes=[
        Route("/signup", signup, methods=["POST"]),
        Route("/newsletter", join_newsletter, methods=["POST"]),
        Route("/stats", stats),
    ],
    lifespan=events_lifespan(lifespan, runtime_factory=make_runtime),
)
