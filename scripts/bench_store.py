"""Append throughput of SQLiteStore against a bare SQLite group-commit loop.

Each run starts from an empty journal. The store is driven by ``--appenders``
concurrent tasks, each awaiting ``append`` (one event, one receiver) in turn,
so every append waits for its own commit. The bare loop writes the same rows
(same schema, same pragmas, events made and serialised the same way) with plain
sqlite3, ``--batch`` per transaction, in one thread with no event loop at all:
once with plain ``executemany`` (the baseline) and once with the multi-row
INSERTs the store itself uses (the ceiling). Prints the median of ``--runs``
runs of each for each synchronous level, runs interleaved.

    python scripts/bench_store.py                       # FULL and NORMAL, asyncio
    python scripts/bench_store.py --backend trio --events 50000
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import anyio

from aevents._event import make_event
from aevents._store import SQLiteStore
from aevents._store._sqlite_sql import INSERT_DELIVERIES, INSERT_EVENTS, insert_rows

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INSERT_EVENT = "INSERT INTO events (seq, id, name, body, published_at) VALUES (?, ?, ?, ?, ?)"
_INSERT_DELIVERY = "INSERT INTO deliveries (event_seq, receiver_id, key) VALUES (?, ?, ?)"


async def _store_run(path: str, synchronous: str, events: int, appenders: int) -> float:
    store = SQLiteStore(path, synchronous=synchronous, max_batch=256)
    await store.open()
    remaining = events
    receivers = ("bench:receiver",)

    async def appender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await store.append(make_event("bench:event", {"n": remaining}, {}), receivers)

    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(appenders):
                group.start_soon(appender)
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    return events / elapsed


def _bare_run(path: str, synchronous: str, events: int, batch: int, multirow: bool) -> float:
    async def create() -> None:  # the same schema, made by the store itself
        store = SQLiteStore(path)
        await store.open()
        await store.close()

    anyio.run(create)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        seq = 1
        started = time.perf_counter()
        while seq <= events:
            rows, deliveries = [], []
            for _ in range(min(batch, events - seq + 1)):
                event = make_event("bench:event", {"n": seq}, {})
                published = (event.occurred_at - _EPOCH) // timedelta(microseconds=1)
                rows.append((seq, event.id, event.name, event.to_json(), published))
                deliveries.append((seq, "bench:receiver", None))
                seq += 1
            conn.execute("BEGIN IMMEDIATE")
            if multirow:  # the store's own trick: 64 rows per statement step
                insert_rows(conn, _INSERT_EVENT, INSERT_EVENTS, rows)
                insert_rows(conn, _INSERT_DELIVERY, INSERT_DELIVERIES, deliveries)
            else:
                conn.executemany(_INSERT_EVENT, rows)
                conn.executemany(_INSERT_DELIVERY, deliveries)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--appenders", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256, help="rows per bare transaction")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument("--synchronous", nargs="+", default=["FULL", "NORMAL"])
    args = parser.parse_args()
    backend = "trio" if args.backend == "trio" else "asyncio"
    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {args.backend}, "
        f"{args.events} events/run, {args.appenders} appenders, median of {args.runs}"
    )
    for synchronous in args.synchronous:
        store_rates: list[float] = []
        bare_rates: list[float] = []
        multirow_rates: list[float] = []
        for _ in range(args.runs):  # interleaved, so drift in the disk hits both alike
            with tempfile.TemporaryDirectory() as directory:
                path = os.path.join(directory, "store.db")
                store_rates.append(
                    anyio.run(
                        _store_run,
                        path,
                        synchronous,
                        args.events,
                        args.appenders,
                        backend=backend,
                        backend_options=options,
                    )
                )
            for multirow, rates in ((False, bare_rates), (True, multirow_rates)):
                with tempfile.TemporaryDirectory() as directory:
                    bare_path = os.path.join(directory, "bare.db")
                    rates.append(
                        _bare_run(bare_path, synchronous, args.events, args.batch, multirow)
                    )
        store, bare = statistics.median(store_rates), statistics.median(bare_rates)
        ceiling = statistics.median(multirow_rates)
        print(
            f"synchronous={synchronous:<6}  store {store:>9,.0f} appends/s   "
            f"bare loop {bare:>9,.0f} rows/s (ratio {store / bare:.2f})   "
            f"bare multi-row {ceiling:>9,.0f} rows/s (ratio {store / ceiling:.2f})"
        )
        for label, rates in (("store", store_rates), ("bare", bare_rates)):
            print(f"  {label} runs: {', '.join(f'{rate:,.0f}' for rate in rates)}")
        print(f"  bare multi-row runs: {', '.join(f'{rate:,.0f}' for rate in multirow_rates)}")


if __name__ == "__main__":
    main()
