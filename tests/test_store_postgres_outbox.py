"""PostgresStore's outbox (events written in the caller's transaction), the journal CLI on a
postgresql:// URL, the schema version check, and passwords kept out of every message."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql

import aevents
from aevents._conformance_leases import ManualClock
from aevents._event import make_event
from aevents._store import PostgresStore, Route, new_consumer_id

from .pg import drop_schema, schema_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def schema(postgres_dsn: str, tmp_path: Path) -> Iterator[str]:
    name = schema_for(tmp_path)
    yield name
    drop_schema(postgres_dsn, name)


@pytest.fixture
def registry() -> aevents.Registry:
    registry = aevents.Registry()

    @registry.subscribe("order:**", id="ship")
    async def ship(event: aevents.Event) -> None:
        """Never run here: the tests claim the deliveries themselves."""

    return registry


async def _claimed(store: PostgresStore) -> list[str]:
    consumer = new_consumer_id()
    await store.register(consumer, [Route("**", "ship")], ttl=60)
    return [claim.event.name for claim in await store.claim(consumer, 10, lease=30)]


async def test_the_outbox_commits_and_rolls_back_with_a_sync_connection(
    postgres_dsn: str, schema: str, registry: aevents.Registry
) -> None:
    """An event published through a psycopg connection exists once its transaction commits,
    and never when it rolls back."""
    store = PostgresStore(postgres_dsn, schema=schema)
    await store.open()
    try:
        with psycopg.connect(postgres_dsn) as conn:
            with conn.transaction():
                store.publish_in(conn, "order:paid", {"id": 1}, registry=registry)
            with conn.transaction(force_rollback=True):
                store.publish_in(conn, "order:lost", {"id": 2}, registry=registry)
            with conn.transaction(), conn.cursor() as cursor:
                store.publish_in(cursor, "order:packed", {"id": 3}, registry=registry)
        assert await _claimed(store) == ["order:paid", "order:packed"]
    finally:
        await store.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_outbox_commits_and_rolls_back_with_an_async_connection(
    postgres_dsn: str, schema: str, registry: aevents.Registry
) -> None:
    """The same through psycopg's AsyncConnection (asyncio only, as psycopg's async is)."""
    store = PostgresStore(postgres_dsn, schema=schema)
    await store.open()
    try:
        async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
            async with conn.transaction():
                first = await store.publish_in_async(
                    conn, "order:paid", {"id": 1}, registry=registry
                )
            async with conn.transaction(force_rollback=True):
                await store.publish_in_async(conn, "order:lost", {"id": 2}, registry=registry)
        assert await _claimed(store) == ["order:paid"]
        assert (await store.stats()).events == 1
        assert first.name == "order:paid"
    finally:
        await store.close()


async def test_the_journal_cli_reads_and_repairs_a_store_by_url(
    postgres_dsn: str, schema: str, registry: aevents.Registry
) -> None:
    """stats, pending, dead-letters and redeliver take a postgresql:// URL like a path."""
    store = PostgresStore(postgres_dsn, schema=schema)
    await store.open()
    try:
        with psycopg.connect(postgres_dsn) as conn, conn.transaction():
            store.publish_in(conn, "order:paid", {"id": 1}, registry=registry)
    finally:
        await store.close()

    async def journal(*words: str, schema: str = schema) -> tuple[int, str, str]:
        command = [sys.executable, "-m", "aevents", "journal", postgres_dsn, "--schema", schema]
        done = await anyio.run_process([*command, *words], check=False)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    code, out, problem = await journal("stats", "--json")
    assert code == 0, problem
    assert json.loads(out)["pending"] == 1
    pending = json.loads((await journal("pending", "--json"))[1])
    assert [row["receiver_id"] for row in pending] == ["ship"]
    assert json.loads((await journal("dead-letters", "--json"))[1]) == []
    assert json.loads((await journal("redeliver", "--all", "--json"))[1]) == {"redelivered": 0}
    assert json.loads((await journal("prune", "--json"))[1]) == {"pruned": 0}
    code, _, problem = await journal("stats", schema="aevents_test_no_such_schema")
    assert code == 1
    assert "no such schema" in problem


async def test_a_schema_from_a_newer_aevents_is_refused_untouched(
    postgres_dsn: str, schema: str
) -> None:
    """Opening a schema whose version is newer raises StoreError and changes nothing."""
    store = PostgresStore(postgres_dsn, schema=schema, clock=ManualClock())
    await store.open()
    await store.close()
    table = sql.SQL("{}.aevents_schema").format(sql.Identifier(schema))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET version = 99").format(table))
    with pytest.raises(aevents.StoreError, match=r"newer aevents.*version 99"):
        await PostgresStore(postgres_dsn, schema=schema).open()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute(sql.SQL("SELECT version FROM {}").format(table)).fetchone() == (99,)


async def test_a_password_never_reaches_a_message_a_log_line_or_a_repr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a server that does not answer, the error, its traceback, the logs and the repr
    name the store without its password."""
    secret = "s3cr3t-Pa55"
    for conninfo in (
        f"postgresql://app:{secret}@127.0.0.1:9/shop",
        f"host=127.0.0.1 port=9 user=app password={secret} dbname=shop",
    ):
        store = PostgresStore(conninfo, connect_timeout=1)
        caplog.set_level(logging.DEBUG)
        with pytest.raises(aevents.StoreError) as raised:
            await store.open()
        shown = [
            repr(store),
            str(store.path),
            str(raised.value),
            repr(raised.value),
            "".join(traceback.format_exception(raised.value)),
            caplog.text,
        ]
        assert "postgresql://app@127.0.0.1:9/shop" in str(raised.value)
        assert not [text for text in shown if secret in text]


async def test_a_tail_never_skips_an_event_whose_transaction_commits_late(
    postgres_dsn: str, schema: str
) -> None:
    """An outbox transaction takes the next position and stays open; a publish after it
    waits for it rather than commit a later position first, so ``events_after`` sees
    nothing, then both, in position order: never the later one alone."""
    store = PostgresStore(postgres_dsn, schema=schema)
    reader = PostgresStore(postgres_dsn, schema=schema)  # its own thread and connection
    await store.open()
    await reader.open()
    try:
        start = await reader.event_position()
        with psycopg.connect(postgres_dsn) as late:
            first = store.publish_in(late, "late:first", {"n": 1}, registry=aevents.Registry())
            second: list[aevents.Event] = []

            async def publish_second() -> None:
                second.extend(await store.publish([(make_event("late:second", {}, {}), [])]))

            async with anyio.create_task_group() as group:
                group.start_soon(publish_second)
                await _until_waiting_for_a_lock(postgres_dsn, schema)
                page = await reader.events_after(start, 10)
                assert page.events == ()
                late.commit()
        page = await reader.events_after(start, 10)
        assert [event.id for event in page.events] == [first.id, second[0].id]
        assert page.position == start + 2
    finally:
        await reader.close()
        await store.close()


async def _until_waiting_for_a_lock(dsn: str, schema: str) -> None:
    """Wait until a connection of the store waits for a lock (another transaction's)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name LIKE %s AND wait_event_type = 'Lock'"
    )
    with anyio.fail_after(20), psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute(query, (f"aevents-%:{schema}",)).fetchone()[0]:  # type: ignore[index]  # noqa: ASYNC110 - another connection's state
            await anyio.sleep(0.02)
