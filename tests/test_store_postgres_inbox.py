"""PostgresStore's inbox: a receiver completes its delivery in its own transaction, the
runtime's settle afterwards only lets go of it, and an attempt that lost its lease cannot
complete (its transaction rolls back)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql

import aevents
from aevents._event import make_event
from aevents._store import ConsumerId, PostgresStore, Route

from .pg import drop_schema, schema_for

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def schema(postgres_dsn: str, tmp_path: Path) -> Iterator[str]:
    name = schema_for(tmp_path)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE TABLE {}.effects (event_id text)").format(sql.Identifier(name))
        )
    yield name
    drop_schema(postgres_dsn, name)
    drop_schema(postgres_dsn, f"{name}_events")


def _effects(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT event_id FROM {}.effects ORDER BY 1").format(sql.Identifier(schema))
        ).fetchall()
    return [row[0] for row in rows]


async def test_a_delivery_completed_in_the_receivers_transaction_settles_quietly(
    postgres_dsn: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The effect and the completion commit together; the runtime counts the delivery and
    its settle finds it done by this attempt: no "another consumer" line, no dead letter."""
    store = PostgresStore(postgres_dsn, schema=f"{schema}_events")
    registry = aevents.Registry()
    effects = sql.SQL("INSERT INTO {}.effects VALUES (%s)").format(sql.Identifier(schema))

    @registry.subscribe("inbox:**", id="writer")
    def writer(event: aevents.Event) -> None:
        delivery = aevents.current_delivery()
        assert delivery is not None
        with psycopg.connect(postgres_dsn) as conn:
            conn.execute(effects, (event.id,))
            store.complete_in(conn, delivery)

    caplog.set_level(logging.INFO, logger="aevents")
    with anyio.fail_after(30):
        async with aevents.EventRuntime(registry, store=store) as runtime:
            events = [await runtime.publish("inbox:done", payload={"n": n}) for n in range(10)]
            await runtime.drain()
            stats = await store.stats()
            leases = await store.leases()
    assert _effects(postgres_dsn, schema) == sorted(event.id for event in events)
    assert runtime.stats().delivered == 10
    assert stats.done == 10
    assert stats.pending == stats.dead == 0
    assert leases == []
    assert "another consumer" not in caplog.text


async def test_an_attempt_that_lost_its_lease_cannot_complete(
    postgres_dsn: str, schema: str
) -> None:
    """When another consumer has taken the delivery, complete_in raises StoreError naming
    the event and the receiver, and the transaction with the effect rolls back."""
    store = PostgresStore(postgres_dsn, schema=f"{schema}_events")
    await store.open()
    try:
        event = await _published(store)
        first = ConsumerId("host", 1, "first")
        second = ConsumerId("host", 2, "second")
        for consumer in (first, second):
            await store.register(consumer, [Route("inbox:**", "writer")], ttl=60)
        [claim] = await store.claim(first, 1, lease=0.001)
        await store.start(first, [claim])
        await anyio.sleep(0.01)  # the lease runs out
        [taken] = await store.claim(second, 1, lease=60)
        assert taken.attempt == claim.attempt + 1
        held = aevents.DeliveryInfo(claim.event, "writer", claim.attempt, "inbox:**", False)
        effects = sql.SQL("INSERT INTO {}.effects VALUES (%s)").format(sql.Identifier(schema))

        def write_and_complete() -> None:
            with psycopg.connect(postgres_dsn) as conn:
                conn.execute(effects, (event.id,))
                store.complete_in(conn, held)

        with pytest.raises(aevents.StoreError, match=event.id) as caught:
            write_and_complete()
        assert "'writer'" in str(caught.value)
        assert _effects(postgres_dsn, schema) == []
        assert (await store.stats()).pending == 1
    finally:
        await store.close()


async def _published(store: PostgresStore) -> aevents.Event:
    event = make_event("inbox:lost", {}, {})
    [stored] = await store.publish([(event, ["writer"])])
    return stored
