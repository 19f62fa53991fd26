"""Which store the admin pages read, and running a call on it from a sync view."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
from django.conf import settings

from .... import ConfigurationError
from ...._store._protocol import LeasedStore
from ...._store._sqlite import SQLiteStore
from ..._operations import redact
from .._outbox import store_from_setting

__all__ = ["store_factory", "with_store"]

T = TypeVar("T")


def store_factory() -> Callable[[], Any]:
    """A callable that makes a new, unopened store, from the settings.

    ``AEVENTS_ADMIN_STORE``, else ``AEVENTS["store"]``: a callable, or what
    ``aevents.contrib.django`` reads in ``AEVENTS["store"]``, made anew for each
    page: a path (an ``SQLiteStore``), a ``postgresql://`` URL or
    ``{"postgres": "<DATABASES alias>", **options}`` (a ``PostgresStore``), a
    ``redis://`` URL (a ``RedisStore``), or an
    ``SQLiteStore`` whose path is opened anew (a store object belongs to the event
    loop of the runtime that opened it). For a ``RedisStore``, or a store object
    object of another kind, set ``AEVENTS_ADMIN_STORE`` to a callable that returns a
    new one.
    """
    configured = getattr(settings, "AEVENTS_ADMIN_STORE", None)
    source: Any = configured
    if source is None:
        source = (getattr(settings, "AEVENTS", None) or {}).get("store")
    if callable(source) and not isinstance(source, LeasedStore):
        return source  # type: ignore[no-any-return]
    if isinstance(source, str | os.PathLike) and "://" not in os.fspath(source):
        path = os.fspath(source)
        return lambda: SQLiteStore(path)
    if isinstance(source, Mapping) or (
        isinstance(source, str)
        and source.startswith(("postgresql://", "postgres://", "redis://", "rediss://"))
    ):
        setting = source
        store_from_setting(setting)  # a mistake in the setting shows on the first page
        return lambda: store_from_setting(setting)
    if isinstance(source, SQLiteStore):
        path = source.path
        return lambda: SQLiteStore(path)
    shown = redact(source) if isinstance(source, str) else type(source).__name__
    raise ConfigurationError(
        "AEVENTS_ADMIN_STORE",
        f"cannot make a store for the admin pages from {shown}: set AEVENTS_ADMIN_STORE "
        "to a journal path or to a callable that returns a new store (for example "
        "lambda: aevents.RedisStore(url, prefix=...)), or AEVENTS['store'] to a path, "
        "a postgresql:// or redis:// URL or {'postgres': '<DATABASES alias>'}",
    )


def with_store(work: Callable[[Any], Awaitable[T]]) -> T:
    """Open a store, run ``work`` on it, close it; in a sync view (Django runs one on a
    thread without an event loop)."""
    factory = store_factory()

    async def run() -> T:
        store = factory()
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return anyio.run(run)
