"""JournalSchema and the file checks: what a journal file must be before the store uses it.

The schema part works on one sqlite3 connection and needs no store thread, so
these tests drive it directly on real files in ``tmp_path``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aevents._exceptions import JournalInUseError, StoreError
from aevents._store._sqlite_schema import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    JournalSchema,
    check_header,
    lock_journal,
    open_lock_file,
    sqlite_error,
)
from tests.test_store_sqlite import make_v1_journal


@contextmanager
def connection(path: Path, uri: str = "") -> Iterator[sqlite3.Connection]:
    """A connection like the store's (no implicit transactions), always closed."""
    conn = sqlite3.connect(uri or path, isolation_level=None, uri=bool(uri))
    try:
        yield conn
    finally:
        conn.close()


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


def test_an_empty_file_gets_every_table_in_wal_mode(tmp_path: Path) -> None:
    """Preparing a new file creates the current schema, marked with the application id."""
    with connection(tmp_path / "j.db") as conn:
        schema = JournalSchema(conn, "j.db")
        schema.check(read_only=False)
        assert (schema.version, schema.has_tables) == (0, False)
        schema.prepare_for_writes()
        assert (schema.version, schema.has_tables, schema.has_keys) == (SCHEMA_VERSION, True, True)
        assert {"events", "deliveries", "dead_letters", "idempotency"} <= tables(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_check_reads_the_version_of_an_existing_journal(tmp_path: Path) -> None:
    """A second connection to a prepared journal finds the current version and migrates nothing."""
    with connection(tmp_path / "j.db") as conn:
        JournalSchema(conn, "j.db").prepare_for_writes()
    with connection(tmp_path / "j.db") as conn:
        schema = JournalSchema(conn, "j.db")
        schema.check(read_only=False)
        assert schema.version == SCHEMA_VERSION


def test_a_version_1_journal_is_migrated_with_its_rows(tmp_path: Path) -> None:
    """Version 1 gains the idempotency table and keeps its events and deliveries."""
    path = tmp_path / "j.db"
    make_v1_journal(path)
    with connection(path) as conn:
        schema = JournalSchema(conn, str(path))
        schema.check(read_only=False)
        assert (schema.version, schema.has_keys) == (1, False)
        schema.prepare_for_writes()
        assert (schema.version, schema.has_keys) == (SCHEMA_VERSION, True)
        assert {"idempotency", "idempotency_by_time"} <= tables(conn)
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 4


def test_a_failed_migration_is_rolled_back(tmp_path: Path) -> None:
    """A migration that cannot finish raises its sqlite3 error and leaves version 1 whole."""
    path = tmp_path / "j.db"
    make_v1_journal(path, extra="CREATE VIEW idempotency_by_time AS SELECT 1")
    with connection(path) as conn:
        schema = JournalSchema(conn, str(path))
        schema.check(read_only=False)
        with pytest.raises(sqlite3.OperationalError):
            schema.prepare_for_writes()
        assert schema.version == 1
        assert not conn.in_transaction
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "idempotency" not in tables(conn)


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        ("PRAGMA application_id = 1234", "another application"),
        (f"PRAGMA user_version = {SCHEMA_VERSION + 1}", "newer aevents"),
        ("PRAGMA application_id = 0; CREATE TABLE users (id)", "another application"),
    ],
    ids=["foreign-id", "newer", "foreign-tables"],
)
def test_check_refuses_what_this_aevents_cannot_read(
    setup: str, problem: str, tmp_path: Path
) -> None:
    """A foreign or newer database raises StoreError naming the path, and is not changed."""
    path = tmp_path / "j.db"
    with connection(path) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.executescript(setup)
        before = path.read_bytes()
        with pytest.raises(StoreError, match=problem) as caught:
            JournalSchema(conn, str(path)).check(read_only=False)
    assert caught.value.path == str(path)
    assert path.read_bytes() == before


def test_check_refuses_a_journal_with_tables_missing(tmp_path: Path) -> None:
    """A journal whose version promises tables it lacks is called corrupt."""
    path = tmp_path / "j.db"
    with connection(path) as conn:
        JournalSchema(conn, str(path)).prepare_for_writes()
        conn.execute("DROP TABLE dead_letters")
        with pytest.raises(StoreError, match=r"tables missing \(dead_letters\)"):
            JournalSchema(conn, str(path)).check(read_only=False)


def test_read_only_accepts_an_empty_file_and_refuses_an_unmigrated_one(tmp_path: Path) -> None:
    """Read-only, an empty file is version 0 with nothing to read; tables at version 0 are not."""
    path = tmp_path / "j.db"
    path.touch()
    with connection(path) as conn:
        schema = JournalSchema(conn, str(path))
        schema.check(read_only=True)
        assert (schema.version, schema.has_tables) == (0, False)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY)")
        with pytest.raises(StoreError, match="open it once read-write"):
            JournalSchema(conn, str(path)).check(read_only=True)


def test_a_connection_that_cannot_use_wal_is_refused(tmp_path: Path) -> None:
    """Without WAL mode the journal's guarantees do not hold, so preparing it raises."""
    path = tmp_path / "j.db"
    path.touch()
    with connection(path, uri=f"file:{path}?nolock=1") as conn:
        schema = JournalSchema(conn, str(path))
        schema.check(read_only=False)
        with pytest.raises(StoreError, match="cannot use WAL mode"):
            schema.prepare_for_writes()
        assert schema.version == 0


def test_check_header_tells_a_missing_journal_from_a_foreign_file(tmp_path: Path) -> None:
    """The header check says whether the file exists and refuses what is not a journal."""
    path = tmp_path / "j.db"
    assert check_header(str(path), str(path)) is False
    path.touch()
    assert check_header(str(path), str(path)) is True  # an empty file is an empty database
    path.write_bytes(b"not a database at all\n" * 10)
    with pytest.raises(StoreError, match="not an SQLite database"):
        check_header(str(path), str(path))
    with pytest.raises(StoreError, match="directory does not exist"):
        check_header("x", str(tmp_path / "nowhere" / "j.db"))
    with pytest.raises(StoreError, match="is a directory"):
        check_header("x", str(tmp_path))


def test_sqlite_error_names_a_busy_journal(tmp_path: Path) -> None:
    """A lock held past busy_timeout is reported as such, with the sqlite3 error as cause."""
    path = tmp_path / "j.db"
    with connection(path) as holder, connection(path) as waiter:
        holder.execute("BEGIN EXCLUSIVE")
        waiter.execute("PRAGMA busy_timeout = 0")
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("BEGIN IMMEDIATE")
        holder.execute("ROLLBACK")
    error = sqlite_error("j.db", caught.value, "could not record", busy_timeout=0.25)
    assert (error.path, error.__cause__) == ("j.db", caught.value)
    assert error.problem == (
        "could not record: another connection held the journal locked for longer than "
        "busy_timeout=0.25s"
    )


def test_sqlite_error_names_a_full_disk(tmp_path: Path) -> None:
    """SQLITE_FULL says the disk is full; any other error keeps SQLite's own words."""
    with connection(tmp_path / "j.db") as conn:
        conn.execute("CREATE TABLE t (x)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.Error) as full:
            conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
        with pytest.raises(sqlite3.Error) as other:
            conn.execute("SELECT * FROM nowhere")
    assert sqlite_error("j", full.value, "doing", busy_timeout=1).problem.startswith(
        "doing: the disk is full ("
    )
    assert sqlite_error("j", other.value, "doing", busy_timeout=1).problem == (
        "doing: no such table: nowhere"
    )


def test_a_migration_another_process_finished_meanwhile_is_not_run_twice(tmp_path: Path) -> None:
    """Two openers that both read an old version: the second one finds it migrated and skips."""
    path = tmp_path / "j.db"
    make_v1_journal(path)
    with connection(path) as first, connection(path) as second:
        early, late = JournalSchema(first, str(path)), JournalSchema(second, str(path))
        early.check(read_only=False)
        late.check(read_only=False)
        assert (early.version, late.version) == (1, 1)
        early.prepare_for_writes()
        late.prepare_for_writes()  # would fail on "table idempotency already exists"
        assert late.version == SCHEMA_VERSION
        assert late.has_leases


def test_stores_share_the_lock_and_an_older_aevents_holding_it_alone_is_refused(
    tmp_path: Path,
) -> None:
    """The first opener takes the lock alone (so it may check what a crash left), and
    keeps it shared; later ones take it shared beside it. An older aevents holds it
    exclusively for its whole run: refused with a message saying so."""
    real = str(tmp_path / "j.db")
    first, second = open_lock_file(real, real), open_lock_file(real, real)
    try:
        assert lock_journal(real, first) is True
        fcntl.flock(first, fcntl.LOCK_SH)  # what an opener does once it has checked
        assert lock_journal(real, second) is False
    finally:
        os.close(first)
        os.close(second)
    older = os.open(real + ".lock", os.O_RDWR)
    fcntl.flock(older, fcntl.LOCK_EX)
    third = open_lock_file(real, real)
    try:
        with pytest.raises(JournalInUseError, match="older aevents"):
            lock_journal(real, third)
    finally:
        os.close(older)
        os.close(third)
