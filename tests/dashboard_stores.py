"""The stores the dashboard and admin tests run on: none (the runtime's memory), an
SQLiteStore file, a PostgresStore schema and a RedisStore prefix of the test's own.

``make_store(kind, ...)`` gives a factory of new, unopened stores on one location (a
store object belongs to the runtime that opened it; a test may start several).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from aevents import PostgresStore, RedisStore, SQLiteStore

from .pg import drop_schema, schema_for

STORE_KINDS = ("none", "sqlite", "postgres", "redis")

StoreFactory = Callable[[], Any]


def redis_prefix() -> str:
    return "aevents-test-" + os.urandom(6).hex()


def make_store(kind: str, directory: Path, server: str | None) -> StoreFactory:
    """New stores of ``kind`` on the test's own file, schema or prefix."""
    if kind == "none":
        return lambda: None
    if kind == "sqlite":
        path = directory / "events.db"
        return lambda: SQLiteStore(path)
    assert server is not None
    if kind == "postgres":
        schema = schema_for(directory)
        # poll_interval: a retry or a redelivery comes due without a notification
        return lambda: PostgresStore(server, schema=schema, poll_interval=0.05)
    assert kind == "redis"
    prefix = redis_prefix()
    return lambda: RedisStore(server, prefix=prefix, retention=None)


async def delete_keys(factory: StoreFactory) -> None:
    """Delete every key of a RedisStore's prefix."""
    store = factory()
    await store.open()
    try:
        await store.delete_all()
    finally:
        await store.close()


def remove_store(kind: str, directory: Path, server: str | None, factory: StoreFactory) -> None:
    """Drop the schema or delete the prefix's keys (the SQLite file goes with tmp_path);
    outside an event loop."""
    if kind == "postgres" and server is not None:
        drop_schema(server, schema_for(directory))
    elif kind == "redis":
        anyio.run(delete_keys, factory)
