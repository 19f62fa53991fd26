"""The blog's events: declared names, receivers, and the ORM signal mirrored as an event.

``aevents.contrib.django`` imports this module once, from ``AppConfig.ready()``:
it is the ``events.py`` of an installed app.
"""

from typing import Any

import anyio
from django.db.models.signals import post_save

import aevents
from aevents.contrib.django import mirror_signal

from .models import Article, Received

BLOG = aevents.Catalog(
    {
        "ARTICLE_SAVED": "blog:article:saved",
        "ARTICLE_PUBLISHED": "blog:article:published",
        "COMMENT_POSTED": "blog:comment:posted",
        "REPORT_REQUESTED": "blog:report:requested",
    }
)


def article_saved(instance: Article, created: bool, **signal: Any) -> dict[str, Any]:
    """The payload of ``blog:article:saved``, from ``post_save``'s arguments."""
    return {"id": instance.pk, "title": instance.title, "created": created}


# Published on commit: a save that is rolled back publishes nothing. Keyed by the
# article, so each receiver sees one article's saves in the order they happened.
mirror_signal(
    post_save,
    sender=Article,
    name=BLOG.ARTICLE_SAVED,
    payload=article_saved,
    key=lambda instance, **signal: f"article-{instance.pk}",
)


@aevents.subscribe("blog:**")
def record(event: aevents.Event) -> None:
    """A sync receiver: it runs on a runtime worker thread, so it uses the ORM directly."""
    Received.objects.get_or_create(
        event_id=event.id,
        receiver="record",
        defaults={"name": event.name, "payload": dict(event.payload)},
    )


@aevents.subscribe(BLOG.ARTICLE_PUBLISHED)
async def notify_subscribers(event: aevents.Event) -> None:
    """An async receiver: it uses Django's async ORM."""
    await Received.objects.aget_or_create(
        event_id=event.id,
        receiver="notify_subscribers",
        defaults={"name": event.name, "payload": dict(event.payload)},
    )


@aevents.subscribe(BLOG.REPORT_REQUESTED)
async def build_report(event: aevents.Event) -> None:
    """A slow receiver: shutting the server down waits for it (the runtime drains)."""
    await anyio.sleep(0.2)  # stands for the slow work of building a report
    await Received.objects.aget_or_create(
        event_id=event.id,
        receiver="build_report",
        defaults={"name": event.name, "payload": dict(event.payload)},
    )
