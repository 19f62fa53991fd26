"""WebSocket consumers (Django Channels) that publish: async and sync.

Served by ``mysite.asgi_channels``. Each message is a JSON object with a
``text``; the consumer publishes ``blog:comment:posted`` and answers with the
event's id.
"""

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer, JsonWebsocketConsumer

import aevents

from .events import BLOG


class CommentsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """An async consumer awaits ``aevents.publish``, as an async view does."""

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        event = await aevents.publish(
            BLOG.COMMENT_POSTED, payload={"text": content["text"], "via": "async consumer"}
        )
        await self.send_json({"event_id": event.id})


class SyncCommentsConsumer(JsonWebsocketConsumer):  # type: ignore[misc]
    """A sync consumer runs on a thread, where ``publish_threadsafe`` waits for the loop."""

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        event = aevents.publish_threadsafe(
            BLOG.COMMENT_POSTED, payload={"text": content["text"], "via": "sync consumer"}
        )
        self.send_json({"event_id": event.id})
