"""PostgresStore under the runtime: runtimes in two processes share one flow, idempotency
keys race across processes, notifications wake idle consumers (polling when one is lost),
and a store outlives its server connections being terminated."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import aevents
from aevents._event import make_event
from aevents._exceptions import StoreError
from aevents._store import ConsumerId, PostgresStore, Route

from .pg import RUNTIME_CHILD, drop_schema, schema_for, terminate_backends

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """asyncio and trio: uvloop changes nothing the store does (its thread wakes the loop
    through the same call as asyncio's), and these tests start processes."""
    backend: str = request.param
    return backend


@pytest.fixture
def schema(postgres_dsn: str, tmp_path: Path) -> Iterator[str]:
    name = schema_for(tmp_path)
    yield name
    drop_schema(postgres_dsn, name)


class Child:
    """A runtime in another interpreter, talking in JSON lines."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[list[Any]] = []
        self.changed = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.lines.append(json.loads(line))
                self.changed.set()
                self.changed = anyio.Event()

    async def wait_for(self, kind: str, count: int = 1) -> list[list[Any]]:
        while len(found := [line for line in self.lines if line[0] == kind]) < count:
            await self.changed.wait()
        return found

    async def send(self, text: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(text.encode() + b"\n")


async def test_two_runtimes_in_two_processes_share_one_flow(postgres_dsn: str, schema: str) -> None:
    """Events published in either process run once, in one process or the other."""
    registry = aevents.Registry()
    here: list[str] = []

    @registry.subscribe("pg:**", id="seen")
    async def seen(event: aevents.Event) -> None:
        here.append(event.id)

    store = PostgresStore(postgres_dsn, schema=schema)
    with anyio.fail_after(60):
        async with aevents.EventRuntime(registry, store=store) as runtime:
            mine = [(await runtime.publish("pg:parent", payload={"n": n})).id for n in range(20)]
            async with (
                await anyio.open_process(
                    [sys.executable, "-c", RUNTIME_CHILD, postgres_dsn, schema, "publish", "20"]
                ) as process,
                anyio.create_task_group() as group,
            ):
                child = Child(process)
                group.start_soon(child.read)
                theirs = [line[1] for line in await child.wait_for("published", 20)]
                await child.wait_for("ready")
                await _until_none_pending(store)
                await child.send("stop")
                assert await process.wait() == 0
    ran_there = [line[1] for line in child.lines if line[0] == "seen"]
    assert sorted(here + ran_there) == sorted(mine + theirs)
    assert (await _stats(postgres_dsn, schema)).done == 40


async def _until_none_pending(store: PostgresStore) -> None:
    """Wait until no delivery is pending (the other process's work: nothing to wait on)."""
    while (await store.stats()).pending:  # noqa: ASYNC110
        await anyio.sleep(0.05)


async def _stats(dsn: str, schema: str) -> aevents.StoreStats:
    store = PostgresStore(dsn, schema=schema)
    await store.open()
    try:
        return await store.stats()
    finally:
        await store.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the race is in the children
async def test_eight_processes_publishing_one_idempotency_key_add_one_event(
    postgres_dsn: str, schema: str
) -> None:
    """Eight runtimes publish the same key at once: one event, and all of them return it."""
    store = PostgresStore(postgres_dsn, schema=schema)
    await store.open()  # the schema exists before the race
    await store.close()
    children: list[Child] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for _ in range(8):
                process = await anyio.open_process(
                    [sys.executable, "-c", RUNTIME_CHILD, postgres_dsn, schema, "idempotent", "1"]
                )
                child = Child(process)
                children.append(child)
                group.start_soon(child.read)
            for child in children:
                await child.wait_for("ready")
            for child in children:  # all at once
                await child.send("go")
            published = [(await child.wait_for("published"))[0][1] for child in children]
            for child in children:
                await child.wait_for("ready", 2)
                await child.send("stop")
            for child in children:
                assert await child.process.wait() == 0
                await child.process.aclose()
    assert len(set(published)) == 1
    stats = await _stats(postgres_dsn, schema)
    assert (stats.events, stats.idempotency_keys) == (1, 1)


async def test_a_notification_wakes_an_idle_consumer_and_polling_covers_a_lost_one(
    postgres_dsn: str, schema: str
) -> None:
    """A consumer that listens claims another process's event at once; one that does not
    hear it (``listen=False``) still gets it from its poll."""
    for listen in (True, False):
        registry = aevents.Registry()
        got = anyio.Event()

        @registry.subscribe("pg:**", id=f"seen-{listen}")
        async def seen(event: aevents.Event, got: anyio.Event = got) -> None:
            got.set()

        store = PostgresStore(postgres_dsn, schema=schema, listen=listen, poll_interval=0.5)
        other = PostgresStore(postgres_dsn, schema=schema)
        with anyio.fail_after(30):
            async with aevents.EventRuntime(registry, store=store):
                await anyio.sleep(0.6)  # idle long enough to poll at its longest
                await other.open()
                try:
                    await other.publish([(make_event("pg:other", {}, {}), [f"seen-{listen}"])])
                finally:
                    await other.close()
                await got.wait()


async def test_the_store_reconnects_after_its_backends_are_terminated(
    postgres_dsn: str, schema: str
) -> None:
    """Publishing and claiming go on after the server ended the store's connections, and
    nothing that was acknowledged is lost."""
    registry = aevents.Registry()
    seen: list[int] = []
    all_seen = anyio.Event()

    @registry.subscribe("pg:**", id="count")
    async def count(event: aevents.Event) -> None:
        seen.append(event.payload["n"])
        if len(set(seen)) == 30:
            all_seen.set()

    store = PostgresStore(postgres_dsn, schema=schema, poll_interval=0.2)
    acknowledged: list[int] = []
    with anyio.fail_after(60):
        # A claim cut off while committing may have leased deliveries: a short lease
        # lets them pass to the next claim soon.
        async with aevents.EventRuntime(registry, store=store, lease=2) as runtime:
            for n in range(30):
                if n % 10 == 5:
                    assert terminate_backends(postgres_dsn, schema) >= 1
                try:
                    await runtime.publish("pg:n", payload={"n": n})
                except aevents.StoreError:
                    continue  # lost while committing: the publisher is told so
                acknowledged.append(n)
            assert len(acknowledged) >= 27
            await runtime.drain()
    assert set(acknowledged) <= set(seen)


async def test_a_claim_is_one_statement_that_alone_skips_the_flush(
    postgres_dsn: str, schema: str
) -> None:
    """A claim reads the routes of the live registration in its own statement: a consumer
    that is not registered is refused, and one that is gets its receivers' deliveries only.
    ``synchronous_commit`` is off for the claim's own transaction and on again after it."""
    store = PostgresStore(postgres_dsn, schema=schema, listen=False)
    await store.open()
    try:
        consumer = ConsumerId("host", 1, "a")
        with pytest.raises(StoreError, match="not registered"):
            await store.claim(consumer, 8, lease=30)
        await store.register(consumer, [Route("pg:*", "mine")], ttl=60)
        await store.publish(
            [(make_event("pg:one", {"n": n}, {}), ["mine", "theirs"]) for n in range(3)]
        )
        assert await store.claim(consumer, 0, lease=30) == []
        before = await store._call(show_synchronous_commit, "could not read")
        claims = await store.claim(consumer, 8, lease=30)
        assert [(c.event.payload["n"], c.receiver_id, c.attempt) for c in claims] == [
            (0, "mine", 1),
            (1, "mine", 1),
            (2, "mine", 1),
        ]
        assert await store._call(show_synchronous_commit, "could not read") == before
        assert await store.start(consumer, claims) == []
    finally:
        await store.close()


def show_synchronous_commit(session: Any) -> Any:
    """On the store's own connection (its thread's session), outside any transaction."""
    return session.connection().execute("SHOW synchronous_commit").fetchone()
