"""OpenJournal: opening a journal file, the session the store thread drives, and closing it.

An open journal is used by one thread at a time, which need not be a store
thread, so these tests open and close real journal files in ``tmp_path``
directly, from the test's own thread.
"""

from __future__ import annotations

import math
import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from aevents._event import Event, make_event, new_event_id
from aevents._exceptions import StoreError
from aevents._store import StoreStats
from aevents._store._sqlite import request_redelivery
from aevents._store._sqlite_journal import JournalOptions, OpenJournal
from aevents._store._sqlite_lock import JournalLock
from aevents._store._sqlite_schema import SCHEMA_VERSION, to_us
from aevents._store._sqlite_sql import APPEND, COMPLETE, DEAD
from tests.test_store_sqlite import make_v1_journal


def options(path: Path, **changes: Any) -> JournalOptions:
    settings: dict[str, Any] = {
        "path": str(path),
        "synchronous": "FULL",
        "busy_timeout": 0.2,
        "retention": None,
        "read_only": False,
        "immutable": False,
    }
    return JournalOptions(**{**settings, **changes})


def append(event: Event, receiver_id: str = "r") -> tuple[Any, ...]:
    return (
        APPEND,
        event.id,
        event.name,
        event.to_json(),
        event.occurred_at,
        [receiver_id],
        None,
        None,
    )


def record_of(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(Path(f"{path}.lock").read_bytes())
    return record


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "j.db"


@pytest.fixture
def journal(path: Path) -> Iterator[OpenJournal]:
    journal = OpenJournal.open(options(path), JournalLock(str(path)))
    try:
        yield journal
    finally:
        journal.close()


def test_opening_creates_a_private_journal_and_records_the_run(
    journal: OpenJournal, path: Path
) -> None:
    """A new journal is made with mode 0600 at the current schema; the lock says it is open."""
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert journal.schema.version == SCHEMA_VERSION
    assert record_of(path)["state"] == "open"
    assert journal.idle_at == math.inf  # no retention: no background work


def test_closing_empties_the_wal_records_a_clean_close_and_frees_the_lock(
    path: Path,
) -> None:
    """After close the -wal holds nothing, the record says closed, another opener gets in."""
    journal = OpenJournal.open(options(path), JournalLock(str(path)))
    journal.write([append(make_event("a.b", {}, {}))])
    assert record_of(path)["wal"] > 0  # the record follows the -wal as it grows
    journal.close()
    assert record_of(path) == {"state": "closed", "pid": os.getpid(), "wal": 0, "losses": []}
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0
    again = OpenJournal.open(options(path), JournalLock(str(path)))
    assert again.sql.stats().pending == 1
    again.close()


def test_a_second_read_write_open_shares_it_and_read_only_takes_no_lock(
    journal: OpenJournal, path: Path
) -> None:
    """Another process's store opens the same journal beside this one and sees its
    writes; a reader takes no lock and reads what is committed."""
    journal.write([append(make_event("a.b", {}, {}))])
    second = OpenJournal.open(options(path), JournalLock(str(path)))
    try:
        assert second.sql.stats() == StoreStats(events=1, pending=1, done=0, dead=0)
        assert not second.lock.alone
    finally:
        second.close()
    assert record_of(path)["state"] == "open"  # the first one still has it
    reader = OpenJournal.open(options(path, read_only=True), JournalLock(str(path)))
    try:
        assert reader.sql.stats() == StoreStats(events=1, pending=1, done=0, dead=0)
        assert not reader.lock.recorded
    finally:
        reader.close()
    assert record_of(path)["state"] == "open"  # the reader left the writer's record alone


def test_read_only_refuses_a_missing_journal_and_creates_nothing(path: Path) -> None:
    """Opening read-only a file that is not there raises StoreError and makes no file."""
    with pytest.raises(StoreError, match="does not exist"):
        OpenJournal.open(options(path, read_only=True), JournalLock(str(path)))
    assert os.listdir(path.parent) == []


def corrupt(path: Path) -> None:
    """A journal with events whose schema page is garbage (its header still looks right)."""
    journal = OpenJournal.open(options(path), JournalLock(str(path)))
    journal.write([append(make_event("a.b", {"n": n}, {})) for n in range(50)])
    journal.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)
    path.write_bytes(bytes(data))


def unmigratable(path: Path) -> None:
    make_v1_journal(path, extra="CREATE VIEW idempotency_by_time AS SELECT 1")


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [(corrupt, "corrupt"), (unmigratable, "could not be prepared")],
    ids=["corrupt", "failed-migration"],
)
def test_a_failed_open_releases_the_lock_and_leaves_the_file(
    spoil: Any, problem: str, path: Path
) -> None:
    """Whatever step fails, the file keeps its bytes and the lock can be taken again."""
    spoil(path)
    before = path.read_bytes()
    lock = JournalLock(str(path))
    with pytest.raises(StoreError, match=problem):
        OpenJournal.open(options(path), lock)
    assert path.read_bytes() == before
    lock.acquire(str(path))
    lock.release()


def test_redelivery_requests_are_applied_when_it_opens(path: Path) -> None:
    """The requests file left while the journal was closed is applied, then deleted."""
    event = make_event("a.b", {}, {})
    journal = OpenJournal.open(options(path), JournalLock(str(path)))
    journal.write([append(event)])
    now = to_us(datetime.now(UTC))
    row = (new_event_id(), event.id, "a.b", event.to_json(), now, "r", 3, "E", "m", now)
    journal.write([(DEAD, [row])])
    journal.close()
    request_redelivery(path, None)
    journal = OpenJournal.open(options(path), JournalLock(str(path)))
    try:
        assert journal.sql.stats() == StoreStats(events=1, pending=1, done=0, dead=0)
        assert not os.path.exists(f"{path}.requests")
    finally:
        journal.close()


def test_retention_prunes_on_open_and_schedules_the_next_pass(path: Path) -> None:
    """With retention, opening prunes old done deliveries and makes idle work due."""
    old = Event(new_event_id(), "a.b", {}, datetime(2020, 1, 1, tzinfo=UTC), {})
    journal = OpenJournal.open(options(path), JournalLock(str(path)))
    journal.write([append(old)])
    journal.write([(COMPLETE, [(old.id, "r")])])
    journal.close()
    kept = OpenJournal.open(options(path, retention=timedelta(days=30)), JournalLock(str(path)))
    try:
        assert kept.sql.stats() == StoreStats(events=0, pending=0, done=0, dead=0)
        assert kept.idle_at < math.inf
    finally:
        kept.close()


def test_unreadable_pending_rows_are_parked_as_dead_letters(
    journal: OpenJournal, path: Path
) -> None:
    """A page leaves out rows it cannot read, dead-letters them and says how many."""
    good, broken = make_event("a.b", {}, {}), make_event("a.b", {}, {})
    journal.write([append(good), append(broken)])
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("UPDATE events SET body = x'ff' WHERE id = ?", (broken.id,))
    finally:
        raw.close()
    page, after, _, parked = journal.pending_page((0, ""), None)
    assert ([d.event for d in page], after, parked) == ([good], None, 1)
    assert journal.sql.stats() == StoreStats(events=2, pending=1, done=0, dead=1)
    _, _, _, parked = journal.pending_page((0, ""), None)
    assert parked == 0
