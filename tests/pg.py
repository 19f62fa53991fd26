"""Helpers for the PostgreSQL tests: a schema per test, named from its directory, so a
child process given the same directory opens the same store; dropped after the test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
from psycopg import sql

from aevents._store import Clock, LeasedStore, PostgresStore

from .services import POSTGRES


def schema_for(directory: Path) -> str:
    """The schema of the test that owns ``directory`` (its ``tmp_path``)."""
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return f"aevents_test_{digest}"


def leased(directory: Path, clock: Clock) -> LeasedStore:
    """The store the conformance suite and its child processes open."""
    return PostgresStore(POSTGRES.url, schema=schema_for(directory), clock=clock)


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def terminate_backends(dsn: str, schema: str) -> int:
    """Terminate every server process serving a store of ``schema``; return how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE %s AND pid != pg_backend_pid()",
            (f"aevents-%:{schema}",),
        ).fetchall()
    return len(rows)


RUNTIME_CHILD = """
import sys, json, anyio, aevents
from aevents._store import PostgresStore

dsn, schema, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
registry = aevents.Registry()

@registry.subscribe("pg:**", id="seen")
async def seen(event):
    print(json.dumps(["seen", event.id]), flush=True)

async def main():
    store = PostgresStore(dsn, schema=schema)
    async with aevents.EventRuntime(registry, store=store) as runtime:
        if mode == "publish":
            for n in range(count):
                event = await runtime.publish("pg:child", payload={"n": n})
                print(json.dumps(["published", event.id]), flush=True)
        elif mode == "idempotent":
            print(json.dumps(["ready"]), flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)
            event = await runtime.publish("pg:once", idempotency_key="k")
            print(json.dumps(["published", event.id]), flush=True)
        print(json.dumps(["ready"]), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)

anyio.run(main)
"""
