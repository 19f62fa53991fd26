"""The shop's events and receivers (imported by ``aevents.contrib.django`` at startup)."""

from typing import Any

from django.db.models.signals import post_save

import aevents
from aevents.contrib.django import atomic_receiver, mirror_signal

from .models import Order, Shipment

SHOP = aevents.Catalog({"ORDER_PLACED": "shop:order:placed", "ORDER_SAVED": "shop:order:saved"})


def order_saved(instance: Order, created: bool, **signal: Any) -> dict[str, Any]:
    """The payload of ``shop:order:saved``, from ``post_save``'s arguments."""
    return {"id": instance.pk, "created": created}


# Through the outbox: the event is written in the save's transaction.
mirror_signal(post_save, sender=Order, name=SHOP.ORDER_SAVED, payload=order_saved, outbox=True)


@aevents.subscribe(SHOP.ORDER_PLACED, id="orders.record_shipment")
@atomic_receiver()
def record_shipment(event: aevents.Event) -> None:
    """The inbox: this row and the delivery's completion commit together."""
    Shipment.objects.create(order_id=event.payload["id"], event_id=event.id)
