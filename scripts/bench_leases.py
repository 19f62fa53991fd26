"""Publish → claim → settle through SQLiteStore, by 1, 2 and 4 processes on one file,
against a bare sqlite3 loop that runs the same SQL with the same batching.

Four kinds per row: ``runtime``, whole EventRuntimes on the store (each
process publishes with ``publish_many`` in batches, and the runtimes' workers
claim, run one receiver that every process shares, and settle, until
``drain()``), on their defaults; ``ahead``, the same runtimes with
``start_ahead`` at two batches, so that a publish starts the batch it claims in
its own transaction while the batch before it runs, as the bare loop claims and
starts a batch at a time; ``store``, the store's calls made directly; ``bare``,
plain sqlite3.

Each process registers a consumer for its own receiver id and then, ``--events``
times over in batches of ``--batch``: publishes a batch (one ``publish`` call,
one transaction), claims up to a batch (one transaction), records them as
started (one transaction) and settles what it claimed as ``Completed`` (one
transaction), until everything it published is
done. All processes start together on one fresh file; the rate is every
process's events over the time from the first start to the last finish.

The bare loop does exactly that in plain sqlite3, with no event loop, no store
thread and no ``Claim`` objects: the same statements (imported from the
store's SQL module), the same four transactions per batch, the same
``synchronous`` per transaction (publishing at the chosen level, claims and
settlements at ``NORMAL``), events made and serialised the same way. The ratio
store/bare is what the store's machinery costs on top of the SQL.

For each ``synchronous`` level and process count it prints the median of
``--rounds`` rounds, the rounds interleaved (store and bare, every process
count, every level, then again), so drift in the machine hits all alike.

    python scripts/bench_leases.py
    python scripts/bench_leases.py --events 2000 --rounds 3 --processes 1 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from typing import Any

import anyio

from aevents._event import make_event
from aevents._store import Completed, ConsumerId, Route
from aevents._store._sqlite import SQLiteStore
from aevents._store._sqlite_leased_sql import (
    CLAIM,
    CLAIM_EXPIRED,
    COMPLETED,
    SETTLES,
    STARTS,
    TAKE_LEASES,
)
from aevents._store._sqlite_schema import SYNCHRONOUS
from aevents._store._sqlite_sql import (
    INSERT_DELIVERIES,
    INSERT_DELIVERY,
    INSERT_EVENT,
    INSERT_EVENTS,
    NEXT_SEQ,
    insert_rows,
    update_rows,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_LEASE_SECONDS = 60.0
KINDS = ("fleet", "ahead", "store", "bare")


async def _store_worker(
    path: str, synchronous: str, index: int, events: int, batch: int, start: Barrier
) -> tuple[float, float]:
    store = SQLiteStore(path, synchronous=synchronous)
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
    path: str, synchronous: str, index: int, events: int, batch: int, start: Barrier
) -> tuple[float, float]:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    receiver = f"bench:r{index}"
    holder = str(ConsumerId("bench", os.getpid(), f"w{index}"))
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(SYNCHRONOUS["NORMAL"])
        start.wait()
        started = time.perf_counter()
        published = done = 0
        while done < events:
            if published < events:
                size = min(batch, events - published)
                made = [make_event("bench:event", {"n": published + n}, {}) for n in range(size)]
                if synchronous != "NORMAL":  # as the store does: a PRAGMA only on a change
                    conn.execute(SYNCHRONOUS[synchronous])
                conn.execute("BEGIN IMMEDIATE")
                seq = conn.execute(NEXT_SEQ).fetchone()[0]
                rows, deliveries = [], []
                for event in made:
                    occurred = (event.occurred_at - _EPOCH) // _US
                    rows.append((seq, event.id, event.name, event.to_json(), occurred))
                    deliveries.append((seq, receiver, event.key))
                    seq += 1
                insert_rows(conn, INSERT_EVENT, INSERT_EVENTS, rows)
                insert_rows(conn, INSERT_DELIVERY, INSERT_DELIVERIES, deliveries)
                conn.execute("COMMIT")
                published += size
            now = (datetime.now(UTC) - _EPOCH) // _US
            if synchronous != "NORMAL":
                conn.execute(SYNCHRONOUS["NORMAL"])
            conn.execute("BEGIN IMMEDIATE")
            claimed = conn.execute(CLAIM, (receiver, now, batch)).fetchall()
            expired = conn.execute(CLAIM_EXPIRED, (receiver, now, batch)).fetchall()
            if expired:  # as the store merges them (none expire here: the lease is long)
                claimed = sorted(claimed + expired, key=lambda row: row[0])[:batch]
            until = now + int(_LEASE_SECONDS * 1e6)
            leases = [(row[0], row[1]) for row in claimed]
            update_rows(conn, TAKE_LEASES, leases, before=(holder, until))
            conn.execute("COMMIT")
            # Starts and settles by seq, a chunk per statement, as the store writes them
            # for the events it claimed (it checks that each changed its row).
            held = [(row[0], row[1], row[2] + 1) for row in claimed]
            conn.execute("BEGIN IMMEDIATE")
            assert update_rows(conn, STARTS, held, (holder,)) == len(held)
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            assert update_rows(conn, SETTLES[COMPLETED], held, (holder,)) == len(held)
            conn.execute("COMMIT")
            done += len(claimed)
        finished = time.perf_counter()
    finally:
        conn.close()
    return started, finished


async def _fleet_worker(
    path: str,
    synchronous: str,
    index: int,
    events: int,
    batch: int,
    start: Barrier,
    start_ahead: int | None = None,
) -> tuple[float, float]:
    """The whole runtime: ``publish_many`` batches, claimed and run by any process's
    workers (one receiver id that every process runs), then ``drain()``."""
    import aevents

    registry = aevents.Registry()
    seen = 0

    async def receiver(event: aevents.Event) -> None:
        nonlocal seen
        seen += 1

    registry.subscribe("bench:event", receiver, id="bench:fleet")
    store = SQLiteStore(path, synchronous=synchronous)
    async with aevents.EventRuntime(
        registry, store=store, workers=64, buffer=4096, start_ahead=start_ahead
    ) as runtime:
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
    elif kind == "fleet":
        results.put(anyio.run(_fleet_worker, *args))
    elif kind == "ahead":
        path, synchronous, index, events, batch, start = args
        ahead = 2 * batch
        results.put(anyio.run(_fleet_worker, path, synchronous, index, events, batch, start, ahead))
    else:
        results.put(_bare_worker(*args))


def _create(path: str) -> None:
    async def create() -> None:  # the schema, made by the store itself, for both kinds
        store = SQLiteStore(path)
        await store.open()
        await store.close()

    anyio.run(create)


def _run(kind: str, synchronous: str, processes: int, events: int, batch: int) -> float:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "queue.db")
        _create(path)
        start = context.Barrier(processes)
        results = context.Queue()
        children = [
            context.Process(
                target=_child,
                args=(kind, (path, synchronous, index, events, batch, start), results),
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
        with sqlite3.connect(path) as conn:
            left = conn.execute("SELECT count(*) FROM deliveries WHERE state != 1").fetchone()[0]
        if left:
            raise SystemExit(f"{kind}: {left} deliveries were not done")
    elapsed = float(max(end for _, end in spans) - min(begin for begin, _ in spans))
    return processes * events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4096, help="events per process")
    parser.add_argument("--batch", type=int, default=64, help="events per publish, claim, settle")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--synchronous", nargs="+", default=["FULL", "NORMAL"])
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} "
        f"cores, {args.events} events per process, batches of {args.batch}, "
        f"median of {args.rounds} interleaved rounds"
    )
    rates: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for synchronous in args.synchronous:
            for processes in args.processes:
                for kind in KINDS:
                    rate = _run(kind, synchronous, processes, args.events, args.batch)
                    rates.setdefault((kind, synchronous, processes), []).append(rate)
    print(
        f"{'synchronous':<12}{'processes':>10}{'runtime ev/s':>14}{'ahead ev/s':>12}"
        f"{'store ev/s':>12}{'bare ev/s':>12}{'runtime/bare':>14}{'ahead/bare':>12}"
        f"{'store/bare':>12}"
    )
    for synchronous in args.synchronous:
        for processes in args.processes:
            fleet, ahead, store, bare = (
                statistics.median(rates[kind, synchronous, processes]) for kind in KINDS
            )
            print(
                f"{synchronous:<12}{processes:>10}{fleet:>14,.0f}{ahead:>12,.0f}"
                f"{store:>12,.0f}{bare:>12,.0f}{fleet / bare:>14.2f}{ahead / bare:>12.2f}"
                f"{store / bare:>12.2f}"
            )


if __name__ == "__main__":
    main()
