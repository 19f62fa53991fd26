"""Django glue: a runtime for the ASGI server's life, events after commit, signals as events.

::

    # settings.py
    INSTALLED_APPS = [..., "aevents.contrib.django", "blog"]   # imports blog/events.py
    AEVENTS = {"workers": 4, "strict": True, "store": STATE_DIR / "events.journal"}

    # asgi.py
    from aevents.contrib.django import get_asgi_application
    application = get_asgi_application()

    # a view
    with transaction.atomic():
        article = Article.objects.create(title=title)
        publish_on_commit("blog:article:published", payload={"id": article.pk})

On PostgreSQL, ``publish_in_transaction`` writes the event through Django's
connection in the view's transaction (the outbox), and ``atomic_receiver``
completes a sync receiver's delivery in its own transaction (the inbox).

Async views ``await aevents.publish(...)``; sync views (which Django runs on
a thread) call ``aevents.publish_threadsafe(...)``. ``mirror_signal`` turns a
Django signal such as ``post_save`` into an event, published on commit.
"""

try:
    import django  # noqa: F401
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    if error.name is None or error.name.partition(".")[0] != "django":
        raise
    raise ImportError(
        "aevents.contrib.django needs Django: pip install 'aevents[django]'"
    ) from error

from ._asgi import STATE_KEY, AeventsASGI, ASGIApp, get_asgi_application, runtime_from_settings
from ._discovery import autodiscover
from ._outbox import atomic_receiver, publish_in_transaction
from ._signals import PayloadBuilder, mirror_signal, unmirror_signal
from ._transaction import lost_events, publish_on_commit

__all__ = [
    "STATE_KEY",
    "ASGIApp",
    "AeventsASGI",
    "PayloadBuilder",
    "atomic_receiver",
    "autodiscover",
    "get_asgi_application",
    "lost_events",
    "mirror_signal",
    "publish_in_transaction",
    "publish_on_commit",
    "runtime_from_settings",
    "unmirror_signal",
]
