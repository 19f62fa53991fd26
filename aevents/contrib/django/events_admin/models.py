"""Unmanaged models: the admin pages' entries and permissions, with no table behind them.

The store's tables are not Django's (and with another store not even SQL), so
the pages never query these models: they read the store through its protocol.
"""

from __future__ import annotations

from django.db import models


class DeadLetter(models.Model):  # type: ignore[misc]  # Django ships no type information
    """A dead letter of the store. ``change`` lets a user redeliver, ``delete`` discard."""

    id = models.CharField(primary_key=True, max_length=64)

    class Meta:
        managed = False
        db_table = "aevents_admin_no_table_dead_letter"
        verbose_name = "dead letter"
        verbose_name_plural = "dead letters"
        default_permissions = ("view", "change", "delete")


class Delivery(models.Model):  # type: ignore[misc]  # Django ships no type information
    """The store's deliveries that are not done: backlog, leases, pending. Read only."""

    id = models.CharField(primary_key=True, max_length=64)

    class Meta:
        managed = False
        db_table = "aevents_admin_no_table_delivery"
        verbose_name = "delivery"
        verbose_name_plural = "deliveries"
        default_permissions = ("view",)
