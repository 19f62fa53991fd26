"""Bare SQLite floors for the durable workload (journal_mode=WAL, orjson payloads).

- `sqlite-naive`: one producer; each event is INSERTed and COMMITted on its own (one fsync
  per event with synchronous=FULL), then delivered. It blocks the loop, as naive code does.
- `sqlite-group-commit`: 256 concurrent publishers each wait for their own commit; one
  writer takes up to 256 queued rows per transaction, commits in a worker thread, then wakes
  the publishers, which deliver.

Both record only the event rows (aevents also records and settles per-receiver deliveries),
so they are floors, not equivalents. Each run checks the row count in the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from benchmarks.systems.base import (
    AsyncioSystem,
    BenchmarkError,
    Bus,
    Payload,
    Semantics,
    Subscription,
    System,
)

T = TypeVar("T")

PUBLISHERS = 256
BATCH = 256
SCHEMA = "CREATE TABLE events (seq INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB NOT NULL)"
INSERT = "INSERT INTO events (name, payload) VALUES (?, ?)"


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute(SCHEMA)
    return connection


def row_count(connection: sqlite3.Connection) -> int:
    (count,) = connection.execute("SELECT count(*) FROM events").fetchone()
    return int(count)


class NaiveBus:
    def __init__(self, connection: sqlite3.Connection, subscriptions: Sequence[Subscription]):
        self.connection = connection
        self.receivers = [subscription.on_payload for subscription in subscriptions]
        self.published = 0

    async def publish(self, name: str, payload: Payload) -> None:
        connection = self.connection
        connection.execute("BEGIN")
        connection.execute(INSERT, (name, orjson.dumps(payload)))
        connection.execute("COMMIT")
        self.published += 1
        for on_payload in self.receivers:
            on_payload(payload)

    async def drain(self) -> None:
        if row_count(self.connection) != self.published:
            raise BenchmarkError("sqlite-naive: row count does not match publishes")


class GroupCommitBus:
    def __init__(self, connection: sqlite3.Connection, subscriptions: Sequence[Subscription]):
        self.connection = connection
        self.receivers = [subscription.on_payload for subscription in subscriptions]
        self.pending: asyncio.Queue[tuple[str, bytes, asyncio.Future[None]]] = asyncio.Queue()
        self.published = 0
        self.transactions = 0

    def write(self, rows: list[tuple[str, bytes]]) -> None:
        connection = self.connection
        connection.execute("BEGIN")
        connection.executemany(INSERT, rows)
        connection.execute("COMMIT")

    async def writer(self) -> None:
        pending = self.pending
        while True:
            batch = [await pending.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(pending.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await asyncio.to_thread(self.write, [(name, data) for name, data, _ in batch])
            except Exception as error:
                for _, _, waiter in batch:
                    waiter.set_exception(error)
                continue
            self.transactions += 1
            for _, _, waiter in batch:
                waiter.set_result(None)

    async def publish(self, name: str, payload: Payload) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.put_nowait((name, orjson.dumps(payload), waiter))
        await waiter
        self.published += 1
        for on_payload in self.receivers:
            on_payload(payload)

    async def drain(self) -> None:
        if row_count(self.connection) != self.published:
            raise BenchmarkError("sqlite-group-commit: row count does not match publishes")


@dataclass
class SQLiteFloor(AsyncioSystem):
    group_commit: bool = False

    def open(self, subscriptions: Sequence[Subscription], names: Sequence[str]) -> Any:
        raise NotImplementedError("the sqlite floors only run the durable workloads")

    @asynccontextmanager
    async def open_durable(
        self, subscriptions: Sequence[Subscription], path: str, synchronous: str
    ) -> AsyncIterator[Bus]:
        connection = connect(path, synchronous)
        try:
            if not self.group_commit:
                yield NaiveBus(connection, subscriptions)
                return
            bus = GroupCommitBus(connection, subscriptions)
            writer = asyncio.create_task(bus.writer())
            try:
                yield bus
            finally:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
        finally:
            connection.close()


_ONLY_DURABLE = {
    key: "durable floor only"
    for key in (
        "throughput",
        "throughput-small",
        "fanout",
        "routing",
        "sync-inline",
        "sync-thread",
        "latency",
        "memory",
        "startup",
    )
}
_ONLY_DURABLE["durable-shared"] = "one process: compare with 6a"

SYSTEMS: list[System] = [
    SQLiteFloor(
        name="sqlite-naive",
        family="durable floor",
        description="sqlite3, WAL, one INSERT + COMMIT per event on the loop, then deliver",
        semantics=Semantics(mode="inline", bounded="n/a", isolated="no", durable="yes"),
        unsupported=dict(_ONLY_DURABLE),
        scale={"durable": 0.25},
        group_commit=False,
    ),
    SQLiteFloor(
        name="sqlite-group-commit",
        family="durable floor",
        description=(
            f"sqlite3, WAL, {PUBLISHERS} publishers await their commit; a writer commits up "
            f"to {BATCH} rows per transaction in a thread, then publishers deliver"
        ),
        semantics=Semantics(mode="queued", bounded="yes", isolated="no", durable="yes"),
        unsupported=dict(_ONLY_DURABLE),
        group_commit=True,
    ),
]
