"""The ASGI application with Django Channels: HTTP and WebSockets, and an aevents runtime.

``uvicorn mysite.asgi_channels:application``. Channels' ``ProtocolTypeRouter``
has no ``lifespan`` route, so ``AeventsASGI`` goes around the whole router: it
answers the lifespan (starting and draining the runtime) and hands HTTP and
WebSocket scopes to the router.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from django.core.asgi import get_asgi_application

# Sets Django up (apps, models), so it comes before importing the consumers.
django_app = get_asgi_application()

from blog.consumers import CommentsConsumer, SyncCommentsConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from aevents.contrib.django import AeventsASGI  # noqa: E402

application = AeventsASGI(
    ProtocolTypeRouter(
        {
            "http": django_app,
            "websocket": URLRouter(
                [
                    path("ws/comments/", CommentsConsumer.as_asgi()),
                    path("ws/comments/sync/", SyncCommentsConsumer.as_asgi()),
                ]
            ),
        }
    )
)
