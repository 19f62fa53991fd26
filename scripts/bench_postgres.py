"""Publish → claim → settle through PostgresStore, by 1 and 4 processes on one schema,
against a bare psycopg loop that runs the same SQL with the same batching.

Three kinds per row: ``runtime``, whole EventRuntimes on the store (each process
publishes with ``publish_many`` in batches, and the runtimes' workers claim, run
one receiver that every process shares, start and settle, until ``drain()``);
``store``, the store's calls made directly (publish, claim, start, settle);
``bare``, plain psycopg on one connection with no event loop and no store
thread: the same statements (rendered by the store's SQL modules), the same
transactions per batch (publish; claim, one statement of its own that reads the
routes of the consumer the loop registered; start; settle), events made and
serialised the same way.

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
from aevents._store._postgres_queries import Queries
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
    consumer = ConsumerId("bench", os.getpid(), f"w{index}")
    holder = str(consumer)
    with psycopg.connect(DSN, autocommit=True) as conn, conn.cursor() as cursor:
        now = datetime.now(UTC)
        cursor.execute("BEGIN")  # registered as the store registers a consumer
        Queries(statements).register(
            cursor, consumer, [Route("bench:*", receiver)], now, now + timedelta(seconds=600)
        )
        cursor.execute("COMMIT")
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
            # one statement, its own transaction, reading the routes of the live consumer
            rows = writes.claim(
                cursor, consumer, batch, now, now + timedelta(seconds=_LEASE_SECONDS), {}
            )
            assert rows is not None
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


# -- outbox latency inside a Django transaction ---------------------------------------------


def _django_outbox_latency(samples: int) -> tuple[list[float], list[float]]:
    """Seconds per Django transaction that inserts one row, without and with
    ``publish_in_transaction`` (interleaved, so both see the same server and load)."""
    import django
    from django.conf import settings
    from django.db import connection, transaction
    from psycopg.conninfo import conninfo_to_dict

    from aevents.contrib.django import publish_in_transaction

    schema = f"bench_outbox_{secrets.token_hex(4)}"
    parts = conninfo_to_dict(DSN)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": parts.get("dbname", ""),
                "USER": parts.get("user", ""),
                "PASSWORD": parts.get("password", ""),
                "HOST": parts.get("host", ""),
                "PORT": parts.get("port", ""),
            }
        },
        INSTALLED_APPS=["aevents.contrib.django"],
        AEVENTS={"store": {"postgres": "default", "schema": f"{schema}_events"}},
    )
    django.setup()
    registry_receivers = ["bench:r"]
    import aevents

    aevents.subscribe("bench:outbox", receiver=lambda event: None, id=registry_receivers[0])
    table = sql.Identifier(schema, "rows").as_string(None)
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)).as_string(None))
        cursor.execute(f"CREATE TABLE {table} (n int)")
    plain: list[float] = []
    outbox: list[float] = []
    try:
        publish_in_transaction("bench:outbox", payload={"n": -1})  # tables, first checks
        for n in range(samples):
            for times, publish in ((plain, False), (outbox, True)):
                began = time.perf_counter()
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute(f"INSERT INTO {table} VALUES (%s)", [n])  # noqa: S608
                    if publish:
                        publish_in_transaction("bench:outbox", payload={"n": n})
                times.append(time.perf_counter() - began)
    finally:
        with connection.cursor() as cursor:
            for name in (schema, f"{schema}_events"):
                cursor.execute(
                    sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)).as_string(None)
                )
    return plain, outbox


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- procrastinate, as a peer ------------------------------------------------------------------


def _procrastinate_rate(events: int, batch: int) -> float | None:
    """Events per second through procrastinate: defer ``events`` jobs in batches, then a
    worker (concurrency 8) runs a no-op task until the queue is empty. None if it is not
    installed."""
    try:
        import procrastinate
    except ImportError:
        return None
    schema = f"bench_procrastinate_{secrets.token_hex(4)}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    connector = procrastinate.PsycopgConnector(
        conninfo=DSN, kwargs={"options": f"-c search_path={schema}"}
    )
    app = procrastinate.App(connector=connector)
    done = 0

    @app.task(name="bench_noop", queue="bench")
    async def noop(n: int) -> None:
        nonlocal done
        done += 1

    async def run() -> float:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            began = time.perf_counter()
            for first in range(0, events, batch):
                chunk: list[Any] = [{"n": n} for n in range(first, min(events, first + batch))]
                await noop.batch_defer_async(*chunk)
            await app.run_worker_async(queues=["bench"], wait=False, concurrency=8)
            return time.perf_counter() - began

    try:
        elapsed = anyio.run(run)
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    if done != events:
        raise SystemExit(f"procrastinate: {done} of {events} jobs ran")
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4096, help="events per process")
    parser.add_argument("--batch", type=int, default=64, help="events per publish, claim, settle")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--outbox-samples",
        type=int,
        default=500,
        help="Django transactions timed with and without an outbox publish (0: skip)",
    )
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
    for processes in args.processes:  # the spread: each round's ratio, from the same round
        each = zip(rates["runtime", processes], rates["bare", processes], strict=True)
        print(
            f"runtime/bare by round, {processes} process{'es' if processes > 1 else ''}: "
            + ", ".join(f"{runtime / bare:.2f}" for runtime, bare in each)
        )
    peer = [_procrastinate_rate(args.events, args.batch) for _ in range(args.rounds)]
    if None in peer:
        print("procrastinate: not installed (pip install procrastinate), not measured")
    else:
        print(
            f"procrastinate, 1 process (defer in batches, then a worker of concurrency 8; "
            f"at least once per job, no per-key order, one task per job rather than one "
            f"delivery per receiver): {statistics.median(peer):,.0f} jobs/s"  # type: ignore[type-var]
        )
    if args.outbox_samples:
        plain, outbox = _django_outbox_latency(args.outbox_samples)
        print(
            f"Django transaction inserting one row, {args.outbox_samples} each, interleaved "
            "(ms): p50 / p99"
        )
        for label, times in (("without publish", plain), ("with publish_in_transaction", outbox)):
            print(
                f"  {label:<30}{_percentile(times, 0.5) * 1e3:>8.3f}"
                f"{_percentile(times, 0.99) * 1e3:>9.3f}"
            )
        print(
            f"  {'added by the outbox':<30}"
            f"{(_percentile(outbox, 0.5) - _percentile(plain, 0.5)) * 1e3:>8.3f}"
            f"{(_percentile(outbox, 0.99) - _percentile(plain, 0.99)) * 1e3:>9.3f}"
        )


if __name__ == "__main__":
    main()
