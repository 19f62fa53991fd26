"""The operations dashboard mounted in a Starlette app, with a shop that publishes orders.

Run it from the repository root (``pip install -e '.[dashboard]' uvicorn``)::

    AEVENTS_DASHBOARD_TOKEN=s3cret uvicorn examples.dashboard_app:app
    curl -X POST localhost:8000/orders -d '{"card": "declined"}'
    curl -H 'Authorization: Bearer s3cret' localhost:8000/_events/

Orders paid with the card ``"declined"`` fail to charge until the card service
is repaired (``curl -X POST localhost:8000/card-service/repair``): they end as
dead letters, which the dashboard redelivers. With ``EVENTS_JOURNAL=events.db``
the events go through a SQLite store, and with
``EVENTS_POSTGRES=postgresql://user:password@host/db`` (and optionally
``EVENTS_POSTGRES_SCHEMA``, default ``aevents``) through a PostgreSQL store; the
dashboard then shows the fleet.
``tests/integration/test_dashboard_browser.py`` drives it with a real browser.
"""

from __future__ import annotations

import functools
import os
import secrets

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import aevents
from aevents.contrib.dashboard import Dashboard
from aevents.contrib.starlette import events_lifespan, get_runtime

SHOP = aevents.Catalog({"ORDER_PLACED": "shop:order:placed"})
TOKEN = os.environ.get("AEVENTS_DASHBOARD_TOKEN") or secrets.token_urlsafe(16)


class CardService:
    """Stands in for a payment API that is down until someone repairs it."""

    def __init__(self) -> None:
        self.declines = True
        self.charged: list[int] = []


cards = CardService()


@aevents.subscribe(SHOP.ORDER_PLACED)
async def send_confirmation(event: aevents.Event) -> None:
    """Always works."""


@aevents.subscribe(SHOP.ORDER_PLACED, retry=aevents.RetryPolicy(attempts=2, initial_delay=0.01))
async def charge_card(event: aevents.Event) -> None:
    if event.payload["card"] == "declined" and cards.declines:
        raise ConnectionRefusedError(f"card service refused order {event.payload['order']}")
    cards.charged.append(event.payload["order"])


def authorize(request: Request) -> bool:
    """A bearer token, as a script or a monitoring probe sends it."""
    sent = request.headers.get("authorization", "")
    return secrets.compare_digest(sent.encode(), f"Bearer {TOKEN}".encode())


orders = iter(range(1, 1_000_000_000))


async def place_order(request: Request) -> JSONResponse:
    body = await request.json() if await request.body() else {}
    card = "declined" if body.get("card") == "declined" else "ok"
    payload = {"order": next(orders), "card": card, "note": str(body.get("note", ""))}
    event = await get_runtime(request).publish(SHOP.ORDER_PLACED, payload=payload)
    return JSONResponse({"id": event.id, "order": payload["order"]}, status_code=202)


async def repair(request: Request) -> JSONResponse:
    cards.declines = False
    return JSONResponse({"declines": cards.declines})


async def charged(request: Request) -> JSONResponse:
    return JSONResponse({"charged": cards.charged})


def make_store() -> aevents.SQLiteStore | aevents.PostgresStore | None:
    postgres = os.environ.get("EVENTS_POSTGRES")
    if postgres:
        schema = os.environ.get("EVENTS_POSTGRES_SCHEMA", "aevents")
        return aevents.PostgresStore(postgres, schema=schema)
    journal = os.environ.get("EVENTS_JOURNAL")
    return aevents.SQLiteStore(journal) if journal else None


def make_runtime() -> aevents.EventRuntime:
    return aevents.EventRuntime(metrics=True, store=make_store())


dashboard = Dashboard(
    authorize=authorize,
    secret=os.environ.get("AEVENTS_DASHBOARD_SECRET"),
    refresh=float(os.environ.get("AEVENTS_DASHBOARD_REFRESH", "5")),
)
app = Starlette(
    routes=[
        Route("/orders", place_order, methods=["POST"]),
        Route("/card-service/repair", repair, methods=["POST"]),
        Route("/charged", charged),
        Mount("/_events", app=dashboard),
    ],
    lifespan=events_lifespan(runtime_factory=functools.partial(make_runtime)),
)
