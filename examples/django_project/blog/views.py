"""Views that publish: async and sync, with and without a transaction."""

from typing import Any

import attrs
from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, JsonResponse

import aevents
from aevents.contrib.django import publish_on_commit

from .events import BLOG
from .models import Article, Received


async def post_comment_async(request: HttpRequest) -> JsonResponse:
    """An async view awaits ``aevents.publish``; it returns once the event is accepted."""
    event = await aevents.publish(
        BLOG.COMMENT_POSTED, payload={"text": request.POST["text"], "via": "async view"}
    )
    return JsonResponse({"event_id": event.id}, status=202)


def post_comment_sync(request: HttpRequest) -> JsonResponse:
    """A sync view runs on a thread of Django's, where ``publish_threadsafe`` waits for the loop."""
    event = aevents.publish_threadsafe(
        BLOG.COMMENT_POSTED, payload={"text": request.POST["text"], "via": "sync view"}
    )
    return JsonResponse({"event_id": event.id}, status=202)


class ArticleRejected(Exception):
    """Raised inside the transaction to roll it back."""


def save_article(title: str, *, reject: bool) -> int:
    """Save an article and publish its event on commit; ``reject`` rolls both back."""
    with transaction.atomic():
        article = Article.objects.create(title=title)  # post_save: blog:article:saved
        publish_on_commit(BLOG.ARTICLE_PUBLISHED, payload={"id": article.pk, "title": title})
        if reject:
            raise ArticleRejected(title)
    article_id: int = article.pk
    return article_id


def create_article(request: HttpRequest) -> JsonResponse:
    """A sync view with a transaction: the events are published only if it commits."""
    try:
        article_id = save_article(request.POST["title"], reject="reject" in request.POST)
    except ArticleRejected:
        return JsonResponse({"rolled_back": True}, status=409)
    return JsonResponse({"id": article_id}, status=201)


async def create_article_async(request: HttpRequest) -> JsonResponse:
    """An async view: its transaction runs in sync code, through ``sync_to_async``."""
    try:
        article_id = await sync_to_async(save_article)(
            request.POST["title"], reject="reject" in request.POST
        )
    except ArticleRejected:
        return JsonResponse({"rolled_back": True}, status=409)
    return JsonResponse({"id": article_id}, status=201)


async def request_reports(request: HttpRequest) -> JsonResponse:
    """Publish ``count`` report requests, which the slow ``build_report`` receiver handles."""
    count = int(request.POST.get("count", "1"))
    for number in range(count):
        await aevents.publish(BLOG.REPORT_REQUESTED, payload={"number": number})
    return JsonResponse({"requested": count}, status=202)


async def received_events(request: HttpRequest) -> JsonResponse:
    """What the receivers have written so far, and the runtime's counters."""
    runtime = aevents.current_runtime()
    rows = [
        {
            "event_id": row.event_id,
            "receiver": row.receiver,
            "name": row.name,
            "payload": row.payload,
        }
        async for row in Received.objects.order_by("id")
    ]
    stats: dict[str, Any] = attrs.asdict(runtime.stats()) if runtime is not None else {}
    return JsonResponse({"received": rows, "stats": stats})


async def drain_events(request: HttpRequest) -> JsonResponse:
    """Wait until every event accepted so far has been handled, then report as ``/events/``."""
    runtime = aevents.current_runtime()
    if runtime is None:
        return JsonResponse({"error": "no event runtime is running"}, status=503)
    await runtime.drain()
    return await received_events(request)
