"""The outbox and the inbox on PostgreSQL, through Django's own database connection.

``publish_in_transaction`` writes an event and its deliveries with the
connection of a ``DATABASES`` alias, inside its open transaction, so they
commit or roll back with the view's data. ``atomic_receiver`` runs a sync
receiver inside ``transaction.atomic()`` and marks its delivery done in that
same transaction. Both need the aevents store to be a ``PostgresStore`` in the
same database as that connection: ``AEVENTS = {"store": {"postgres": "default"}}``
(the store built from that alias's settings) or a ``postgresql://`` URL.

Which store and registry: those of the runtime running in this process, if
its store is a ``PostgresStore``; otherwise the store ``settings.AEVENTS``
describes (built once, its tables created if need be, and never opened: the
writes go through Django's connection) and ``aevents.default_registry``, where each installed app's
``events.py`` subscribed its receivers. A process that runs no runtime (a WSGI
worker, a management command) publishes this way too.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from ..._delivery import current_delivery
from ..._event import Event
from ..._exceptions import ConfigurationError
from ..._idempotency import IDEMPOTENCY_KEY
from ..._registry import Registry, default_registry
from ..._runtime import current_runtime
from ._transaction import on_event_loop_thread

__all__ = ["atomic_receiver", "outbox_store", "publish_in_transaction", "store_from_setting"]

logger = logging.getLogger("aevents.contrib.django")

_R = TypeVar("_R")

# Options of a Django PostgreSQL database that are Django's, not libpq's.
_DJANGO_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory"}
)

_built_lock = threading.Lock()
_built: dict[str, Any] = {}  # repr of the setting -> the PostgresStore built from it
_checked: set[tuple[int, str]] = set()  # (id of a store, alias) found on one database


def store_from_setting(value: Any) -> Any:
    """The store ``settings.AEVENTS["store"]`` describes.

    * a ``postgresql://`` (or ``postgres://``) URL: ``aevents.PostgresStore(url)``;
    * ``{"postgres": "default", **options}``: a ``PostgresStore`` on the database
      of that ``DATABASES`` alias (its name, user, password, host, port and libpq
      ``OPTIONS``), with ``options`` (``schema``, ``poll_interval``, ...) passed on;
    * a ``redis://`` (or ``rediss://``) URL: ``aevents.RedisStore(url)``;
    * another URL (``scheme://...``): a ``ConfigurationError``;
    * another ``str`` or path: ``aevents.SQLiteStore(path)``;
    * anything else is taken as a store already made.
    """
    if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
        from ..._store._postgres import PostgresStore

        return PostgresStore(value)
    if isinstance(value, str) and value.startswith(("redis://", "rediss://")):
        from ..._store._redis import RedisStore

        return RedisStore(value)
    if isinstance(value, str) and "://" in value:
        scheme = value.partition("://")[0]
        raise ConfigurationError(
            "settings.AEVENTS['store']",
            f"no store for URLs of scheme {scheme!r}: give a journal path, a "
            "postgresql:// or redis:// URL, {'postgres': '<DATABASES alias>'} or a store",
        )
    if isinstance(value, str | os.PathLike):
        from ..._store._sqlite import SQLiteStore

        return SQLiteStore(value)
    if isinstance(value, Mapping):
        options = dict(value)
        alias = options.pop("postgres", None)
        if not isinstance(alias, str):
            raise ConfigurationError(
                "settings.AEVENTS['store']",
                "a dict must name a DATABASES alias as 'postgres' "
                f"({{'postgres': 'default', 'schema': 'aevents'}}), got {value!r}",
            )
        from ..._store._postgres import PostgresStore

        return PostgresStore(conninfo_of(alias), **options)
    return value


def conninfo_of(alias: str) -> str:
    """A libpq connection string for the database of Django's ``DATABASES[alias]``."""
    from django.conf import settings
    from psycopg.conninfo import make_conninfo

    databases = getattr(settings, "DATABASES", {})
    where = f"settings.DATABASES[{alias!r}]"
    if alias not in databases:
        raise ConfigurationError(where, f"no such database; the aliases are {sorted(databases)}")
    database = databases[alias]
    if "postgresql" not in str(database.get("ENGINE", "")):
        raise ConfigurationError(
            where,
            f"is {database.get('ENGINE')!r}, not PostgreSQL; a PostgresStore needs "
            "django.db.backends.postgresql (or a store of another kind in AEVENTS['store'])",
        )
    parts: dict[str, Any] = {
        key: value
        for key, value in (database.get("OPTIONS") or {}).items()
        if key not in _DJANGO_OPTIONS and isinstance(value, str | int)
    }
    for key, setting in (
        ("dbname", "NAME"),
        ("user", "USER"),
        ("password", "PASSWORD"),
        ("host", "HOST"),
        ("port", "PORT"),
    ):
        if database.get(setting):
            parts[key] = str(database[setting])
    return make_conninfo("", **parts)


def outbox_store() -> tuple[Any, Registry]:
    """The ``PostgresStore`` and the registry that the outbox and the inbox use here.

    Raises:
        ConfigurationError: Neither the running runtime's store nor
            ``settings.AEVENTS["store"]`` is a ``PostgresStore``.
    """
    from django.conf import settings

    from ..._store._postgres import PostgresStore

    runtime = current_runtime()
    if runtime is not None and isinstance(runtime.store, PostgresStore):
        return runtime.store, runtime.registry
    options = getattr(settings, "AEVENTS", None) or {}
    value = options.get("store") if isinstance(options, Mapping) else None
    shown = repr(value)
    with _built_lock:
        store = _built.get(shown)
        if store is None:
            store = store_from_setting(value)
            if isinstance(store, PostgresStore):
                store.prepare()  # no runtime may have created its tables yet
                _built[shown] = store
    if not isinstance(store, PostgresStore):
        raise ConfigurationError(
            "settings.AEVENTS['store']",
            "the outbox and the inbox need a PostgresStore in the same database as the "
            "Django connection ({'postgres': 'default'} or a postgresql:// URL), got "
            f"{value!r}; with another store, use publish_on_commit",
        )
    return store, default_registry


def _connection_on_store(store: Any, using: str | None, what: str) -> Any:
    """Django's connection ``using``, checked (once) to be on the database of ``store``."""
    from ..._store._postgres_schema import database_of

    alias = using or DEFAULT_DB_ALIAS
    connection = connections[alias]
    if (id(store), alias) in _checked:
        return connection
    if connection.vendor != "postgresql":
        raise ConfigurationError(
            what, f"database {alias!r} is {connection.vendor}, not PostgreSQL, as the store is"
        )
    theirs = database_of(conninfo_of(alias))
    if theirs != store.database:
        raise ConfigurationError(
            what,
            f"database {alias!r} is {theirs[2]!r} on {theirs[0]}:{theirs[1]}, but the store "
            f"{store.path} is elsewhere; they must be one database for the event to commit "
            "with the data",
        )
    _checked.add((id(store), alias))
    return connection


def publish_in_transaction(
    name: str,
    /,
    *,
    payload: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    key: str | None = None,
    idempotency_key: str | None = None,
    using: str | None = None,
) -> Event:
    """Publish ``name`` through Django's connection ``using``, in its open transaction.

    The event and one delivery per receiver subscribed to it are written in
    the transaction of the enclosing ``transaction.atomic()`` block: a
    rollback leaves no trace, the commit makes them durable before the block
    exits, and consumers see the event only once it commits. Outside an
    ``atomic`` block it runs in a transaction of its own, committed before it
    returns. The store is a ``PostgresStore`` in the same database (see the
    module's docstring); no runtime needs to run in this process.

    It takes its turn in the store's publish order and holds it until the
    transaction ends, so call it late in the transaction.

    Args:
        name: The event name (positional only).
        payload: A JSON-serialisable mapping, copied at the call.
        metadata: String entries carried with the event.
        key: The ordering key, as for ``publish``.
        idempotency_key: As for ``publish``: a repeat returns the first event,
            whichever process recorded it.
        using: The database alias. Default ``None``: Django's default database.

    Returns:
        The event, or the first event of ``idempotency_key``.

    Raises:
        InvalidEventNameError, UnknownEventError, PayloadError: Bad input, checked
            before anything is written.
        ConfigurationError: The store is not a ``PostgresStore`` on that database.
        AeventsError: Called on an event loop's thread, where no transaction can be open.
        django.db.Error: From the connection; the transaction is to be rolled back.
    """
    if on_event_loop_thread():
        raise ConfigurationError(
            f"publish_in_transaction({name!r})",
            "called on an event loop's thread, where no database transaction can be open; "
            "call it in the sync code you pass to sync_to_async",
        )
    store, registry = outbox_store()
    connection = _connection_on_store(store, using, f"publish_in_transaction({name!r})")
    runtime = current_runtime()
    if runtime is not None:  # a strict runtime's catalogs, as publish would check them
        payload, metadata, idempotency_key = runtime._validated(
            name, payload, metadata, key, idempotency_key
        )
    meta = dict(metadata or {})
    if idempotency_key is not None:
        meta[IDEMPOTENCY_KEY] = idempotency_key
    with transaction.atomic(using=using, savepoint=False):
        event: Event = store.publish_in(
            connection, name, payload, key=key, metadata=meta, registry=registry
        )
    return event


@overload
def atomic_receiver(function: Callable[[Event], _R], /) -> Callable[[Event], _R]: ...


@overload
def atomic_receiver(
    *, using: str | None = None
) -> Callable[[Callable[[Event], _R]], Callable[[Event], _R]]: ...


def atomic_receiver(
    function: Callable[[Event], _R] | None = None, /, *, using: str | None = None
) -> Any:
    """Run a sync receiver in ``transaction.atomic(using=using)`` and complete its delivery
    in that transaction: the inbox, exactly once for what it does in that database.

    Put it under ``@aevents.subscribe(...)``. The receiver's writes and the
    mark that its delivery is done commit together, or neither does (an
    exception, a crash, a lost connection) and the delivery runs again, so a
    delivery's writes to this database happen once however often it is
    attempted. Calls to other systems (mail, HTTP, another database) are not
    covered: they still happen at least once.

    With a runtime whose store is not a ``PostgresStore`` (no store, a SQLite
    one), or for a ``scope="process"`` receiver, it runs in the transaction and
    is delivered at least once, as any receiver. If the attempt has lost its
    lease to another consumer by the time it completes, the transaction is
    rolled back and ``StoreError`` raised: the other consumer runs it.

    Raises:
        ConfigurationError: ``function`` is a coroutine function (the ORM's
            transactions are sync).
    """

    def decorate(receiver: Callable[[Event], _R]) -> Callable[[Event], _R]:
        if inspect.iscoroutinefunction(receiver):
            raise ConfigurationError(
                f"atomic_receiver({getattr(receiver, '__qualname__', receiver)!r})",
                "needs a sync receiver: Django's transactions are sync; the runtime runs "
                "sync receivers on its worker threads",
            )

        @functools.wraps(receiver)
        def in_transaction(event: Event) -> _R:
            delivery = current_delivery()
            store = _inbox_store(delivery)
            with transaction.atomic(using=using):
                result = receiver(event)
                if store is not None and delivery is not None:
                    what = f"atomic_receiver({delivery.receiver_id!r})"
                    store.complete_in(_connection_on_store(store, using, what), delivery)
            return result

        return in_transaction

    if function is not None:
        return decorate(function)
    return decorate


def _inbox_store(delivery: Any) -> Any:
    """The runtime's ``PostgresStore`` if ``delivery`` is one of its fleet deliveries."""
    from ..._store._postgres import PostgresStore

    runtime = current_runtime()
    if delivery is None or runtime is None or not isinstance(runtime.store, PostgresStore):
        return None
    subscription = runtime.registry.receiver(delivery.receiver_id, delivery.event.name)
    if subscription is None or subscription.scope != "fleet":
        return None
    return runtime.store
