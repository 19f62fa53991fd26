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
