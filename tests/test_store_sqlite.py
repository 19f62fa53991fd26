"""SQLiteStore: the conformance suite, then what only a real file can show.

These test the store through its API. Each part it is made of has tests of its
own: ``test_sqlite_thread`` (the thread, group commit, waking callers),
``test_sqlite_journal`` (opening and closing a journal), ``test_sqlite_sql``
(the statements and queries), ``test_sqlite_schema`` (tables, migrations, file
checks) and ``test_sqlite_lock`` (the lock file and its record).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import orjson
import pytest

pytest.register_assert_rewrite("aevents.testing")

from aevents import ConfigurationError  # noqa: E402
from aevents._event import Event, make_event, new_event_id  # noqa: E402
from aevents._exceptions import StoreError  # noqa: E402
from aevents._policy import DeadLetter  # noqa: E402
from aevents._store import SQLiteStore, Store, StoreStats  # noqa: E402
from aevents._store._sqlite import APPLICATION_ID, SCHEMA_VERSION, request_redelivery  # noqa: E402
from aevents.testing import PersistentStoreConformance  # noqa: E402


class TestSQLiteStore(PersistentStoreConformance):
    def make_store(self, directory: Path) -> Store:
        return SQLiteStore(directory / "journal.db")


class TestSQLiteStoreNormalSmallBatches(PersistentStoreConformance):
    """The same suite with NORMAL sync and tiny batches, so batching edges get exercised."""

    def make_store(self, directory: Path) -> Store:
        return SQLiteStore(directory / "journal.db", synchronous="normal", max_batch=3)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
async def store(path: Path, anyio_backend: object) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(path, busy_timeout=0.2)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, always closed."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def exists(path: Path | str) -> bool:
    return os.path.exists(path)


def spoil_page_one(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)  # the rest of page 1: the schema b-tree
    path.write_bytes(bytes(data))


def append_bytes(path: Path | str, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


async def make_journal(path: Path, events: int = 1) -> list[Event]:
    made = [make_event("user.created", {"n": n}, {}) for n in range(events)]
    store = SQLiteStore(path)
    await store.open()
    for event in made:
        await store.append(event, ["r"])
    await store.close()
    return made


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("synchronous", "OFF"),
        ("synchronous", 2),
        ("busy_timeout", -1),
        ("busy_timeout", float("nan")),
        ("max_batch", 0),
        ("max_batch", 1.5),
        ("retention", timedelta(days=-1)),
        ("retention", 7),
    ],
)
def test_bad_arguments_raise_configuration_error(argument: str, value: object) -> None:
    """Every option is checked when the store is made."""
    with pytest.raises(ConfigurationError, match=argument):
        SQLiteStore("x.db", **{argument: value})  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_new_journal_is_private_and_identified(store: SQLiteStore, path: Path) -> None:
    """The file and its lock are mode 0600 and carry the application id and schema version."""
    await store.append(make_event("a.b", {}, {}), ["r"])
    assert mode(path) == 0o600
    assert mode(f"{path}.lock") == 0o600
    with raw(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"just some text, not a database\n" * 10)


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _foreign_sqlite(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")


def _foreign_application(path: Path) -> None:
    with raw(path) as conn:
        conn.execute("PRAGMA application_id = 1234")
        conn.execute("CREATE TABLE t (x)")


def _truncated_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20)


@pytest.mark.parametrize(
    "spoil", [_not_sqlite, _random_bytes, _foreign_sqlite, _foreign_application, _truncated_header]
)
@pytest.mark.anyio
async def test_a_foreign_file_is_refused_and_untouched(
    spoil: object, path: Path, anyio_backend: object
) -> None:
    """Whatever is not an aevents journal raises StoreError naming the path, file unchanged."""
    spoil(path)  # type: ignore[operator]
    before = digest(path)
    with pytest.raises(StoreError, match=r"not an aevents journal|corrupt") as caught:
        await SQLiteStore(path).open()
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    assert digest(path) == before
    assert not exists(f"{path}-wal")


@pytest.mark.anyio
async def test_a_newer_schema_is_refused_and_untouched(path: Path, anyio_backend: object) -> None:
    """A journal written by a newer aevents raises StoreError and is left as it was."""
    await make_journal(path)
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = digest(path)
    with pytest.raises(StoreError, match="newer aevents"):
        await SQLiteStore(path).open()
    assert digest(path) == before


@pytest.mark.anyio
async def test_a_corrupt_journal_is_refused_and_untouched(
    path: Path, anyio_backend: object
) -> None:
    """A journal whose schema page is garbage raises StoreError and is left as it was."""
    await make_journal(path, events=50)
    spoil_page_one(path)
    before = digest(path)
    with pytest.raises(StoreError, match="corrupt"):
        await SQLiteStore(path).open()
    assert digest(path) == before


@pytest.mark.anyio
async def test_a_missing_directory_is_a_store_error(tmp_path: Path, anyio_backend: object) -> None:
    """A journal in a directory that does not exist raises StoreError, creating nothing."""
    with pytest.raises(StoreError, match="directory does not exist"):
        await SQLiteStore(tmp_path / "nowhere" / "journal.db").open()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "expected_name"),
    [("user.created", "user.created"), ("not a name!", "aevents.journal.unreadable")],
)
@pytest.mark.anyio
async def test_an_unreadable_row_becomes_a_dead_letter(
    name: str, expected_name: str, path: Path, anyio_backend: object
) -> None:
    """A row whose body is not an event is dead-lettered with the reason; the rest replays."""
    first, broken, last = await make_journal(path, events=3)
    with raw(path) as conn:
        conn.execute(
            "UPDATE events SET body = ?, name = ? WHERE id = ?",
            (b"\xff{not json" * 300, name, broken.id),
        )
    store = SQLiteStore(path)
    await store.open()
    try:
        assert [d.event for d in [d async for d in store.pending()]] == [first, last]
        assert store.unreadable == 1
        (letter,) = await store.dead_letters()
        assert (letter.event.id, letter.event.name, letter.receiver_id) == (
            broken.id,
            expected_name,
            "r",
        )
        assert letter.event.payload["raw"].startswith("\ufffd{not json")
        assert len(letter.event.payload["raw"]) <= 1000
        assert "not valid JSON" in letter.error_message
        assert await store.stats() == StoreStats(events=3, pending=2, done=0, dead=1)
        assert [d async for d in store.pending()] != []  # and a second pass is just as calm
        assert store.unreadable == 1
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_second_store_in_this_process_shares_the_journal(
    store: SQLiteStore, path: Path
) -> None:
    """Two stores on one file see each other's writes; either may close first."""
    second = SQLiteStore(path)
    await second.open()
    try:
        event = make_event("a.b", {}, {})
        await store.append(event, ["r"])
        assert [d.event async for d in second.pending()] == [event]
        await store.close()
        await second.complete([(event.id, "r")])
    finally:
        await second.close()


@pytest.mark.anyio
async def test_a_second_process_shares_the_journal(store: SQLiteStore, path: Path) -> None:
    """Another process opens the journal while this one has it, and writes to it."""
    script = (
        "import sys, anyio\n"
        "from aevents._event import make_event\n"
        "from aevents._store import SQLiteStore\n"
        "async def main():\n"
        "    store = SQLiteStore(sys.argv[1])\n"
        "    await store.open()\n"
        "    await store.append(make_event('a.b', {}, {}), ['r'])\n"
        "    await store.close()\n"
        "anyio.run(main)\n"
    )
    with anyio.fail_after(30):
        result = await anyio.run_process([sys.executable, "-c", script, str(path)], check=False)
    assert result.returncode == 0, result.stderr
    assert await store.stats() == StoreStats(events=1, pending=1, done=0, dead=0)


@pytest.mark.anyio
async def test_a_read_only_store_inspects_a_journal_in_use(store: SQLiteStore, path: Path) -> None:
    """``read_only=True`` reads a journal another store holds, and refuses to write."""
    event = make_event("a.b", {}, {})
    await store.append(event, ["r"])
    reader = SQLiteStore(path, read_only=True)
    await reader.open()
    try:
        assert await reader.stats() == StoreStats(events=1, pending=1, done=0, dead=0)
        assert [d.event async for d in reader.pending()] == [event]
        with pytest.raises(StoreError, match="read-only"):
            await reader.append(make_event("a.b", {}, {}), ["r"])
        with pytest.raises(StoreError, match="read-only"):
            await reader.prune()
    finally:
        await reader.close()


@pytest.mark.anyio
async def test_a_lock_held_too_long_raises_and_the_store_recovers(
    store: SQLiteStore, path: Path
) -> None:
    """A write blocked past busy_timeout raises StoreError; later writes succeed."""
    await store.append(make_event("a.b", {}, {}), ["r"])
    with raw(path) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        with anyio.fail_after(30), pytest.raises(StoreError, match="busy_timeout"):
            await store.append(make_event("a.b", {}, {}), ["r"])
        conn.execute("ROLLBACK")
    await store.append(make_event("a.b", {}, {}), ["r"])
    assert (await store.stats()).pending == 2


@pytest.mark.anyio
async def test_a_full_disk_raises_and_the_store_recovers(store: SQLiteStore) -> None:
    """SQLite's 'database or disk is full' raises StoreError; once space returns, writes work."""
    await store.append(make_event("a.b", {}, {}), ["r"])

    def pragma(statement: str) -> int:
        return int(conn.execute(statement).fetchone()[0])

    conn = await store._thread.call(lambda journal: journal.connection, "test")
    pages = await store._thread.call(lambda _: pragma("PRAGMA page_count"), "test")
    await store._thread.call(lambda _: pragma(f"PRAGMA max_page_count = {pages}"), "test")
    big = make_event("a.b", {"blob": "x" * 200_000}, {})
    with anyio.fail_after(30), pytest.raises(StoreError, match="disk is full"):
        await store.append(big, ["r"])
    await store._thread.call(lambda _: pragma("PRAGMA max_page_count = 1073741823"), "test")
    await store.append(big, ["r"])
    assert (await store.stats()).pending == 2


@pytest.mark.anyio
async def test_redelivery_requests_are_applied_on_open(path: Path, anyio_backend: object) -> None:
    """``request_redelivery`` leaves a 0600 sidecar that the next open applies and deletes."""
    events = await make_journal(path, events=3)
    store = SQLiteStore(path)
    await store.open()
    letters = [
        DeadLetter(new_event_id(), event, "r", 1, "E", "m", datetime.now(UTC)) for event in events
    ]
    await store.dead_letter(letters)
    await store.close()
    requests = f"{path}.requests"
    request_redelivery(path, [letters[0].id])
    append_bytes(requests, b'not json\n{"redeliver": 5}\n')
    request_redelivery(path, [letters[2].id])
    assert mode(requests) == 0o600
    await store.open()
    try:
        assert [d.event async for d in store.pending()] == [events[0], events[2]]
        assert not exists(requests)
    finally:
        await store.close()
    request_redelivery(path, None)
    await store.open()
    try:
        assert (await store.stats()).dead == 0
    finally:
        await store.close()


@pytest.mark.anyio
async def test_retention_prunes_old_done_deliveries_on_open(
    path: Path, anyio_backend: object
) -> None:
    """With ``retention`` set, opening prunes done deliveries older than it."""
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    old = [Event(new_event_id(), "a.b", {}, long_ago, {}) for _ in range(3)]
    fresh = make_event("a.b", {}, {})
    store = SQLiteStore(path)
    await store.open()
    for event in [*old, fresh]:
        await store.append(event, ["r"])
        await store.complete([(event.id, "r")])
    await store.append(Event(new_event_id(), "a.b", {}, long_ago, {}), ["r"])  # still pending
    await store.close()
    kept = SQLiteStore(path, retention=timedelta(days=30))
    await kept.open()
    try:
        assert await kept.stats() == StoreStats(events=2, pending=1, done=1, dead=0)
    finally:
        await kept.close()


@pytest.mark.anyio
async def test_a_store_can_be_reopened(store: SQLiteStore) -> None:
    """The same object opens again after a close and sees its data."""
    await store.append(make_event("a.b", {}, {}), ["r"])
    await store.close()
    await store.open()
    assert (await store.stats()).pending == 1
    with pytest.raises(StoreError, match="already open"):
        await store.open()


def test_importing_aevents_does_not_import_pytest() -> None:
    """The test helpers stay out of ``import aevents``."""
    code = "import sys, aevents, aevents._store; print('pytest' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# -- schema version 2: idempotency keys, and the migration from version 1 ------------------

# Version 1's tables exactly as aevents created them before idempotency keys (commit e1d1392,
# aevents/_store/_sqlite_schema.py): a frozen copy, so editing the live migrations cannot hide
# a break in the upgrade path.
V1_SCHEMA = (
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
    " name TEXT NOT NULL, body BLOB NOT NULL, published_at INTEGER NOT NULL)",
    "CREATE TABLE deliveries (event_seq INTEGER NOT NULL, receiver_id TEXT NOT NULL,"
    " state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (event_seq, receiver_id)) WITHOUT ROWID",
    "CREATE INDEX deliveries_pending ON deliveries (event_seq, receiver_id) WHERE state = 0",
    "CREATE TABLE dead_letters (id TEXT PRIMARY KEY, event_seq INTEGER NOT NULL,"
    " receiver_id TEXT NOT NULL, attempts INTEGER NOT NULL, error_type TEXT NOT NULL,"
    " error_message TEXT NOT NULL, failed_at INTEGER NOT NULL,"
    " UNIQUE (event_seq, receiver_id))",
)
V1_FAILED_AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def make_v1_journal(path: Path, *, extra: str | None = None) -> tuple[list[Event], DeadLetter]:
    """A version-1 journal as a running 0.x runtime leaves it: one done, two pending
    (one with attempts on record), one dead letter. The second event's metadata happens
    to hold an ``idempotency_key``, which version 1 never treated as one."""
    events = [
        make_event("user.created", {"n": 0, "text": "ünïcode ✓"}, {"correlation_id": "c"}),
        make_event("user.created", {"n": 1}, {"idempotency_key": "legacy"}),
        make_event("user:account:deleted", {"n": 2}, {}),
    ]
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
        for statement in V1_SCHEMA:
            conn.execute(statement)
        if extra is not None:
            conn.execute(extra)
        conn.executemany(
            "INSERT INTO events (seq, id, name, body, published_at) VALUES (?, ?, ?, ?, ?)",
            [
                (seq, event.id, event.name, event.to_json(), _us(event.occurred_at))
                for seq, event in enumerate(events, 1)
            ],
        )
        conn.executemany(
            "INSERT INTO deliveries (event_seq, receiver_id, state, attempts) VALUES (?, ?, ?, ?)",
            [(1, "a", 1, 1), (1, "b", 0, 2), (2, "a", 0, 0), (3, "a", 2, 3)],
        )
        conn.execute(
            "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("letter-1", 3, "a", 3, "builtins.ValueError", "boom", _us(V1_FAILED_AT)),
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
    letter = DeadLetter("letter-1", events[2], "a", 3, "builtins.ValueError", "boom", V1_FAILED_AT)
    return events, letter


def schema_of(path: Path) -> tuple[int, set[str]]:
    """The journal's user_version and the names of its tables and indexes."""
    with raw(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    return version, names


def keyed(key: str, occurred_at: datetime | None = None) -> Event:
    if occurred_at is None:
        return make_event("order.paid", {}, {"idempotency_key": key})
    return Event(new_event_id(), "order.paid", {}, occurred_at, {"idempotency_key": key})


def test_schema_version_is_6() -> None:
    """This aevents writes schema version 6: the leased queue's columns, with attempts
    counted when they start, claims that read free deliveries and expired leases through
    indexes of their own, and no index or trigger written per done delivery or event."""
    assert SCHEMA_VERSION == 6


@pytest.mark.anyio
async def test_a_version_1_journal_is_migrated_on_open(path: Path, anyio_backend: object) -> None:
    """Opening a version-1 journal keeps its deliveries and dead letters and adds the keys."""
    events, letter = make_v1_journal(path)
    assert schema_of(path)[0] == 1
    store = SQLiteStore(path)
    await store.open()
    try:
        assert [(d.event, d.receiver_id, d.attempts) async for d in store.pending()] == [
            (events[0], "b", 2),
            (events[1], "a", 0),
        ]
        assert await store.dead_letters() == [letter]
        assert await store.stats() == StoreStats(events=3, pending=2, done=1, dead=1)
        assert await store.recent_idempotency_keys(datetime.min.replace(tzinfo=UTC), 10) == []
        fresh = keyed("legacy")  # version 1 never recorded keys, so this one is the first
        await store.append(fresh, ["a"])
        assert await store.recent_idempotency_keys(events[0].occurred_at, 10) == [fresh]
        assert [d.event async for d in store.pending()][-1] == fresh  # seq carries on
    finally:
        await store.close()
    version, names = schema_of(path)
    assert version == SCHEMA_VERSION
    assert {"idempotency", "idempotency_by_time"} <= names
    again = SQLiteStore(path)
    await again.open()
    try:
        assert await again.recent_idempotency_keys(events[0].occurred_at, 10) == [fresh]
        assert await again.forget_idempotency_keys(datetime.now(UTC) + timedelta(1)) == 1
        assert await again.dead_letters() == [letter]
        assert await again.redeliver() == 1
        assert await again.stats() == StoreStats(events=4, pending=4, done=1, dead=0)
    finally:
        await again.close()


@pytest.mark.anyio
async def test_a_failed_migration_leaves_version_1(path: Path, anyio_backend: object) -> None:
    """A migration that cannot finish raises StoreError and rolls back: still a version-1 file."""
    make_v1_journal(path, extra="CREATE VIEW idempotency_by_time AS SELECT 1")
    with pytest.raises(StoreError, match="could not be prepared"):
        await SQLiteStore(path).open()
    version, names = schema_of(path)
    assert (version, "idempotency" in names) == (1, False)


@pytest.mark.anyio
async def test_a_version_1_journal_reads_read_only_without_migrating(
    path: Path, anyio_backend: object
) -> None:
    """``read_only=True`` reads a version-1 journal (no keys in it) and leaves it at version 1."""
    events, letter = make_v1_journal(path)
    reader = SQLiteStore(path, read_only=True)
    await reader.open()
    try:
        assert await reader.stats() == StoreStats(events=3, pending=2, done=1, dead=1)
        assert [d.event async for d in reader.pending()] == events[:2]
        assert await reader.dead_letters() == [letter]
        assert await reader.recent_idempotency_keys(datetime.min.replace(tzinfo=UTC), 10) == []
        with pytest.raises(StoreError, match="read-only"):
            await reader.forget_idempotency_keys(datetime.now(UTC))
    finally:
        await reader.close()
    assert schema_of(path)[0] == 1


@pytest.mark.parametrize("in_use", [False, True], ids=["free", "in-use"])
def test_the_journal_cli_reads_a_version_1_journal(
    in_use: bool, path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``journal PATH stats`` reads a version-1 journal as it is, held by a 0.x process or not."""
    from aevents._cli import main

    make_v1_journal(path)
    lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if in_use:
            fcntl.flock(lock, fcntl.LOCK_EX)
        code = main(["journal", str(path), "stats", "--json"])
    finally:
        os.close(lock)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert orjson.loads(out) == {
        "events": 3,
        "pending": 2,
        "done": 1,
        "dead": 1,
        "idempotency_keys": 0,
        "consumers": [],
        "leases": [],
    }
    assert schema_of(path)[0] == 1  # a reading command never migrates


@pytest.mark.anyio
async def test_keys_are_written_in_the_events_transaction(store: SQLiteStore, path: Path) -> None:
    """An append that cannot commit records neither its event nor its key."""
    with raw(path) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        with anyio.fail_after(30), pytest.raises(StoreError, match="busy_timeout"):
            await store.append(keyed("k"), ["r"])
        conn.execute("ROLLBACK")
    assert await store.stats() == StoreStats(events=0, pending=0, done=0, dead=0)
    with raw(path) as conn:
        assert conn.execute("SELECT count(*) FROM idempotency").fetchone()[0] == 0


@pytest.mark.anyio
async def test_an_unreadable_key_record_is_skipped_with_a_warning(
    store: SQLiteStore, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key record whose event copy is garbage is left out and named in one warning."""
    first, broken, last = (keyed(f"key-{n}") for n in range(3))
    for event in (first, broken, last):
        await store.append(event, [])
    with raw(path) as conn:
        conn.execute("UPDATE idempotency SET body = x'ff00' WHERE key = 'key-1'")
    with caplog.at_level("WARNING", logger="aevents.store"):
        recent = await store.recent_idempotency_keys(first.occurred_at, 10)
    assert recent == [first, last]
    assert [record.getMessage() for record in caplog.records] == [
        f"journal {str(path)!r}: skipped 1 unreadable idempotency key record, such as 'key-1'"
    ]


@pytest.mark.anyio
async def test_forgetting_many_keys_runs_in_chunks(store: SQLiteStore) -> None:
    """More key records than one forgetting transaction takes are all forgotten and counted."""
    from aevents._store._sqlite_sql import FORGET_CHUNK

    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    count = 2 * FORGET_CHUNK + 7
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for n in range(count):
                group.start_soon(store.append, keyed(f"k{n}", long_ago), [])
    await store.append(keyed("recent"), [])
    assert await store.forget_idempotency_keys(long_ago + timedelta(1)) == count
    assert (await store.stats()).idempotency_keys == 1
