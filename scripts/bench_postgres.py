"""Publish → claim → settle through PostgresStore, by 1 and 4 processes on one schema,
against a bare psycopg loop that runs the same SQL with the same batching.

Three kinds per row: ``runtime``, whole EventRuntimes on the store (each process
publishes with ``publish_many`` in batches, and the runtimes' workers claim, run
one receiver that every process shares, start and settle, until ``drain()``);
``store``, the store's calls made directly (publish, claim, start, settle);
``bare``, plain psycopg with no event loop and no store thread: the same
statements (rendered by the store's SQL modules), the same transactions per
batch (publish; claim; start; settle), events made and serialised the same way.

All processes start together on a fresh schema; the rate is every process's
events over the time from the first start to the last finish. Each figure is
the median of ``--rounds`` interleaved rounds. Run it with ``nice`` on a quiet
machine; the server is the one ``AEVENTS_POSTGRES_DSN`` names (default the local
test database).

    nice python scripts/bench_postgres.py
    nice python scripts/bench_postgres.py --events 2000 --rounds 3 --processes 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from typing import Any

import anyio
import psycopg
from psycopg import sql

from aevents._event import make_event
from aevents._store import Completed, ConsumerId, Route
from aevents._store._postgres import PostgresStore
from aevents._store._postgres_schema import Statements
from aevents._store._postgres_sql import COMPLETED, QueueWrites, event_row, write_events

DSN = os.environ.get("AEVENTS_POSTGRES_DSN") or "postgresql://postgres@127.0.0.1:5432/test"
_LEASE_SECONDS = 60.0
KINDS = ("runtime", "store", "bare")


async def _store_worker(
    schema: str, index: int, events: int, batch: int, start: Barrier
) -> tuple[float, float]:
    store = PostgresStore(DSN, schema=schema)
    await store.open()
    receiver = f"bench:r{index}"
    consumer = ConsumerId("bench", os.getpid(), f"w{index}")
    await store.register(consumer, [Route("bench:*", receiver)], ttl=600)
    try:
        await anyio.to_thread.run_sync(start.wait)
        started = time.perf_counter()
        published = done = 0
        while done < events:
            if published < events:
                size = min(batch, events - published)
                await store.publish(
                    [
                        (make_event("bench:event", {"n": published + n}, {}), [receiver])
                        for n in range(size)
                    ]
                )
                published += size
            claims = await store.claim(consumer, batch, lease=_LEASE_SECONDS)
            await store.start(consumer, claims)
            await store.settle(consumer, [Completed(claim) for claim in claims])
            done += len(claims)
        finished = time.perf_counter()
    finally:
        await store.close()
    return started, finished


def _bare_worker(
    schema: str, index: int, events: int, batch: int, start: Barrier
) -> tuple[float, float]:
    statements = Statements(schema)
    writes = QueueWrites(statements)
    receiver = f"bench:r{index}"
    holder = str(ConsumerId("bench", os.getpid(), f"w{index}"))
    with psycopg.connect(DSN, autocommit=True) as conn, conn.cursor() as cursor:
        start.wait()
        started = time.perf_counter()
        published = done = 0
        while done < events:
            if published < events:
                size = min(batch, events - published)
                made = [make_event("bench:event", {"n": published + n}, {}) for n in range(size)]
                cursor.execute("BEGIN")
                write_events(cursor, statements, [event_row(e, [receiver], None) for e in made])
                cursor.execute("COMMIT")
                published += size
            now = datetime.now(UTC)
            cursor.execute("BEGIN")
            rows = writes.claim(
                cursor,
                ConsumerId("bench", os.getpid(), f"w{index}"),
                [receiver],
                batch,
                now,
                now + timedelta(seconds=_LEASE_SECONDS),
                {},
            )
            cursor.execute("COMMIT")
            held = [(event.id, receiver_id, attempt) for event, receiver_id, attempt, _ in rows]
            cursor.execute("BEGIN")
            writes.write(cursor, [(3, holder, held, [])])  # START
            cursor.execute("COMMIT")
            cursor.execute("BEGIN")
            outcomes = [(COMPLETED, *claim, None) for claim in held]
            writes.write(cursor, [(2, holder, datetime.now(UTC), outcomes, [])])  # SETTLE
            cursor.execute("COMMIT")
            done += len(rows)
        finished = time.perf_counter()
    return started, finished


async def _runtime_worker(
    schema: str, index: int, events: int, batch: int, start: Barrier
) -> tuple[float, float]:
    """The whole runtime: ``publish_many`` batches, claimed and run by any process's
    workers (one receiver id that every process runs), then ``drain()``."""
    import aevents

    registry = aevents.Registry()

    async def receiver(event: aevents.Event) -> None:
        pass

    registry.subscribe("bench:event", receiver, id="bench:fleet")
    store = PostgresStore(DSN, schema=schema)
    async with aevents.EventRuntime(registry, store=store, workers=64, buffer=4096) as runtime:
        await anyio.to_thread.run_sync(start.wait)
        started = time.perf_counter()
        for offset in range(0, events, batch):
            size = min(batch, events - offset)
            await runtime.publish_many("bench:event", [{"n": offset + n} for n in range(size)])
        await runtime.drain()
        finished = time.perf_counter()
    return started, finished


def _child(kind: str, args: tuple[Any, ...], results: Any) -> None:
    if kind == "store":
        results.put(anyio.run(_store_worker, *args))
    elif kind == "runtime":
        results.put(anyio.run(_runtime_worker, *args))
    else:
        results.put(_bare_worker(*args))


def _create(schema: str) -> None:
    async def create() -> None:  # the schema, made by the store itself, for every kind
        store = PostgresStore(DSN, schema=schema)
        await store.open()
        await store.close()

    anyio.run(create)


def _run(kind: str, processes: int, events: int, batch: int) -> float:
    context = multiprocessing.get_context("spawn")
    schema = f"aevents_bench_{secrets.token_hex(4)}"
    _create(schema)
    try:
        start = context.Barrier(processes)
        results = context.Queue()
        children = [
            context.Process(
                target=_child, args=(kind, (schema, index, events, batch, start), results)
            )
            for index in range(processes)
        ]
        for child in children:
            child.start()
        spans = [results.get(timeout=600) for _ in children]
        for child in children:
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"a {kind} process failed with exit code {child.exitcode}")
        with psycopg.connect(DSN) as conn:
            query = sql.SQL("SELECT count(*) FROM {}.deliveries WHERE state != 1").format(
                sql.Identifier(schema)
            )
            left = conn.execute(query).fetchone()
        if left is None or left[0]:
            raise SystemExit(f"{kind}: {left} deliveries were not done")
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    elapsed = float(max(end for _, end in spans) - min(begin for begin, _ in spans))
    return processes * events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4096, help="events per process")
    parser.add_argument("--batch", type=int, default=64, help="events per publish, claim, settle")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    with psycopg.connect(DSN) as conn:
        version = conn.info.server_version
    print(
        f"python {sys.version.split()[0]}, psycopg {psycopg.__version__}, PostgreSQL "
        f"{version // 10000}.{version % 10000}, {os.cpu_count()} cores, {args.events} events "
        f"per process, batches of {args.batch}, median of {args.rounds} interleaved rounds"
    )
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for processes in args.processes:
            for kind in KINDS:
                rate = _run(kind, processes, args.events, args.batch)
                rates.setdefault((kind, processes), []).append(rate)
    print(
        f"{'processes':>10}{'runtime ev/s':>14}{'store ev/s':>12}{'bare ev/s':>12}"
        f"{'runtime/bare':>14}{'store/bare':>12}"
    )
    for processes in args.processes:
        runtime, store, bare = (statistics.median(rates[kind, processes]) for kind in KINDS)
        print(
            f"{processes:>10}{runtime:>14,.0f}{store:>12,.0f}{bare:>12,.0f}"
            f"{runtime / bare:>14.2f}{store / bare:>12.2f}"
        )


if __name__ == "__main__":
    main()
