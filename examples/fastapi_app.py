"""aevents in a FastAPI app: the runtime as a typed dependency.

Run it from the repository root (``pip install -e '.[fastapi]' uvicorn``)::

    uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"sku": "tea", "quantity": 2}'
    curl -X POST localhost:8000/orders/7/ship
    curl localhost:8000/catalogue
    curl localhost:8000/stats

``tests/integration/test_starlette_server.py`` runs this app under uvicorn.
"""

from __future__ import annotations

import threading

import attrs
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from pydantic import BaseModel, Field

import aevents
from aevents.contrib.fastapi import Events, events_lifespan

SHOP = aevents.Catalog(
    {
        "ORDER_PLACED": "shop:order:placed",
        "ORDER_SHIPPED": "shop:order:shipped",
        "PAGE_VIEWED": "shop:page:viewed",
    }
)


class Order(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


@aevents.subscribe(SHOP.ORDER_PLACED)
async def reserve_stock(event: aevents.Event) -> None:
    print(f"reserved {event.payload['quantity']} x {event.payload['sku']}")


@aevents.subscribe("shop:order:*")
def audit(event: aevents.Event) -> None:
    """A sync receiver: it runs on a worker thread, never on the event loop."""
    on_loop = threading.current_thread() is threading.main_thread()
    print(f"audit {event.name} (on the loop: {on_loop})")


@aevents.subscribe(SHOP.PAGE_VIEWED)
async def count_view(event: aevents.Event) -> None:
    print(f"viewed {event.payload['path']}")


app = FastAPI(lifespan=events_lifespan())


async def record_view(request: Request) -> None:
    """A dependency that publishes, with the module-level shortcut."""
    await aevents.publish(SHOP.PAGE_VIEWED, payload={"path": request.url.path})


@app.post("/orders", status_code=202)
async def place_order(order: Order, events: Events) -> dict[str, str]:
    event = await events.publish(SHOP.ORDER_PLACED, payload=order.model_dump())
    return {"event_id": event.id}


@app.post("/orders/{order_id}/ship", status_code=202)
async def ship_order(order_id: int, background: BackgroundTasks) -> dict[str, int]:
    # Published after the response is sent.
    background.add_task(aevents.publish, SHOP.ORDER_SHIPPED, payload={"order_id": order_id})
    return {"order_id": order_id}


@app.get("/catalogue", dependencies=[Depends(record_view)])
async def catalogue() -> list[str]:
    return ["tea", "coffee"]


@app.get("/stats")
async def stats(events: Events) -> dict[str, int | None]:
    return attrs.asdict(events.stats())
