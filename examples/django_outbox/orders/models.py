"""Orders, and the shipments a receiver records for them."""

from django.db import models


class Order(models.Model):  # type: ignore[misc]  # Django ships no type information
    """An order; placing one publishes ``shop:order:placed`` in the same transaction."""

    item = models.CharField(max_length=200)


class Shipment(models.Model):  # type: ignore[misc]
    """Written by the ``record_shipment`` receiver, in its delivery's transaction.

    No unique constraint on ``event_id``: the inbox alone keeps it to one row
    per event, however often a delivery is attempted.
    """

    order_id = models.BigIntegerField()
    event_id = models.CharField(max_length=40)
