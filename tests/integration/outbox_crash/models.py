"""One row per run of the receiver's write that committed: the test counts them per event."""

from django.db import models


class Effect(models.Model):  # type: ignore[misc]  # Django ships no type information
    """Written by ``events.record_effect``; deliberately without a unique constraint."""

    order_id = models.BigIntegerField()
    event_id = models.CharField(max_length=40)
