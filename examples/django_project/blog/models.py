"""Articles, and what the event receivers saw (so that the tests can observe them)."""

from django.db import models


class Article(models.Model):  # type: ignore[misc]  # Django ships no type information
    """A blog article; saving one is mirrored as ``blog:article:saved``."""

    title = models.CharField(max_length=200)


class Received(models.Model):  # type: ignore[misc]
    """One row per (event, receiver): written by the receivers in ``events.py``."""

    event_id = models.CharField(max_length=40)
    receiver = models.CharField(max_length=100)
    name = models.CharField(max_length=255)
    payload = models.JSONField()

    class Meta:
        # Delivery is at least once: a receiver run again after a crash finds its row.
        constraints = (
            models.UniqueConstraint(fields=["event_id", "receiver"], name="one_row_per_delivery"),
        )
