"""Placing an order: the row and its event commit together, or neither does."""

from django.db import transaction

from aevents.contrib.django import publish_in_transaction

from .events import SHOP
from .models import Order


class OrderRejected(Exception):
    """Raised inside the transaction to roll it back."""


def place_order(item: str, *, reject: bool = False) -> int:
    """Save an order and publish ``shop:order:placed`` in the same transaction."""
    with transaction.atomic():
        order = Order.objects.create(item=item)
        # Written through Django's connection, in this transaction: a rollback
        # leaves no event, and once the block exits the event is durable.
        publish_in_transaction(
            SHOP.ORDER_PLACED, payload={"id": order.pk, "item": item}, key=f"order-{order.pk}"
        )
        if reject:
            raise OrderRejected(item)
    order_id: int = order.pk
    return order_id
