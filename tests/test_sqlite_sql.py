"""JournalSQL: the statements and queries of one journal connection.

The SQL part knows nothing of threads or event loops, so these tests give it a
connection to a real journal file in ``tmp_path`` and call it directly.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aevents._event import Event, make_event, new_event_id
from aevents._policy import DeadLetter
from aevents._store import StoreStats
from aevents._store._sqlite_schema import JournalSchema, to_us
from aevents._store._sqlite_sql import (
    APPEND,
    COMPLETE,
    DEAD,
    FORGET_CHUNK,
    FORGET_KEYS,
    PAGE,
    RECENT_KEYS,
    START,
    UNREADABLE_EVENT,
    JournalSQL,
)

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "j.db"


@pytest.fixture
def conn(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def sql(conn: sqlite3.Connection, path: Path) -> JournalSQL:
    """The SQL of a new journal, prepared for writes as the store prepares it."""
    schema = JournalSchema(conn, str(path))
    schema.check(read_only=False)
    schema.prepare_for_writes()
    sql = JournalSQL(conn, schema, path=str(path), synchronous="FULL")
    sql.prepare_for_writes()
    return sql


def append(event: Event, receiver_ids: list[str] | tuple[str, ...] = ("r",)) -> tuple[Any, ...]:
    """The write request the store builds for ``append``."""
    key = event.metadata.get("idempotency_key")
    return (
        APPEND,
        event.id,
        event.name,
        event.to_json(),
        event.occurred_at,
        receiver_ids,
        key,
        event.key,
    )


def letter_row(letter: DeadLetter) -> tuple[Any, ...]:
    """The row the store builds for ``dead_letter``."""
    event = letter.event
    return (
        letter.id,
        event.id,
        event.name,
        event.to_json(),
        to_us(event.occurred_at),
        letter.receiver_id,
        letter.attempts,
        letter.error_type,
        letter.error_message,
        to_us(letter.failed_at),
    )


def pending(sql: JournalSQL) -> list[tuple[Event, str, int]]:
    """Every pending delivery, page after page, as (event, receiver id, attempts)."""
    found: list[tuple[Event, str, int]] = []
    after: tuple[int, str] | None = (0, "")
    upto = None
    while after is not None:
        page, unreadable, after, upto = sql.pending_page(after, upto)
        assert unreadable == []
        found += [(d.event, d.receiver_id, d.attempts) for d in page]
    return found


def keyed(key: str, occurred_at: datetime = LONG_AGO) -> Event:
    return Event(new_event_id(), "order.paid", {}, occurred_at, {"idempotency_key": key})


def test_appends_become_events_with_one_delivery_per_distinct_receiver(sql: JournalSQL) -> None:
    """A batch of appends is journaled in order; repeated receiver ids count once."""
    first, second = make_event("a.b", {"n": 1}, {}), make_event("a.c", {"n": 2}, {})
    assert sql.write([append(first, ["x", "y", "x"]), append(second, ["z"])]) is True
    assert pending(sql) == [(first, "x", 0), (first, "y", 0), (second, "z", 0)]
    assert sql.stats() == StoreStats(events=2, pending=3, done=0, dead=0)


def test_a_batch_larger_than_the_multi_row_forms_keeps_every_row_in_order(
    sql: JournalSQL,
) -> None:
    """87 appends (64 + 16 + 4 + 3 rows per statement) all land, in publish order."""
    events = [make_event("a.b", {"n": n}, {}) for n in range(87)]
    sql.write([append(event) for event in events])
    assert [event for event, _, _ in pending(sql)] == events


def test_a_failed_batch_writes_none_of_its_requests(
    sql: JournalSQL, conn: sqlite3.Connection
) -> None:
    """An event id already journaled fails the whole transaction; the next batch goes on."""
    kept, fresh = make_event("a.b", {}, {}), make_event("a.b", {}, {})
    sql.write([append(kept)])
    with pytest.raises(sqlite3.IntegrityError):
        sql.write([append(fresh), append(kept)])
    assert not conn.in_transaction
    sql.write([append(fresh)])
    assert [event for event, _, _ in pending(sql)] == [kept, fresh]


def test_attempts_and_completions_commit_without_an_fsync(
    sql: JournalSQL, conn: sqlite3.Connection
) -> None:
    """A batch of only started attempts and completions uses NORMAL and says it held no append."""
    event = make_event("a.b", {}, {})
    sql.write([append(event, ["x", "y"])])
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert sql.write([(START, [(3, event.id, "x"), (1, event.id, "x")])]) is False
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    sql.write([(COMPLETE, [(event.id, "y"), ("unknown", "y")])])
    assert pending(sql) == [(event, "x", 3)]
    assert sql.stats() == StoreStats(events=1, pending=1, done=1, dead=0)


def test_a_dead_letter_keeps_an_event_the_journal_never_saw(sql: JournalSQL) -> None:
    """Dead-lettering a delivery of an unknown event journals the event with the letter."""
    seen, unseen = make_event("a.b", {}, {}), make_event("a.c", {"n": 1}, {})
    sql.write([append(seen)])
    now = datetime.now(UTC)
    letters = [
        DeadLetter(new_event_id(), seen, "r", 3, "builtins.ValueError", "boom", now),
        DeadLetter(new_event_id(), unseen, "r", 1, "builtins.KeyError", "'k'", now),
    ]
    assert sql.write([(DEAD, [letter_row(letter) for letter in letters])]) is True
    assert sql.dead_letters(-1) == letters
    assert sql.dead_letters(1) == letters[:1]
    assert sql.stats() == StoreStats(events=2, pending=0, done=0, dead=2)
    assert sql.redeliver([letters[1].id, letters[1].id, "unknown"]) == 1
    assert pending(sql) == [(unseen, "r", 0)]
    assert sql.redeliver(None) == 1
    assert sql.stats() == StoreStats(events=2, pending=2, done=0, dead=0)


def test_pending_reads_a_snapshot_a_page_at_a_time(sql: JournalSQL) -> None:
    """Pages follow each other; an event appended after the first page is not in the snapshot."""
    events = [make_event("a.b", {"n": n}, {}) for n in range(PAGE + 1)]
    sql.write([append(event) for event in events])
    page, _, after, upto = sql.pending_page((0, ""), None)
    assert [d.event for d in page] == events[:PAGE]
    sql.write([append(make_event("a.b", {}, {}))])
    rest, _, end, _ = sql.pending_page(after or (0, ""), upto)
    assert ([d.event for d in rest], end) == (events[PAGE:], None)


@pytest.mark.parametrize(
    ("name", "expected_name"),
    [("user.created", "user.created"), ("not a name!", UNREADABLE_EVENT)],
)
def test_an_unreadable_row_comes_back_as_a_dead_letter_to_write(
    name: str, expected_name: str, sql: JournalSQL, conn: sqlite3.Connection
) -> None:
    """A body that is not an event is left out of the page and returned as a DEAD row."""
    good, broken = make_event("a.b", {}, {}), make_event("a.b", {}, {})
    sql.write([append(good), append(broken)])
    conn.execute(
        "UPDATE events SET body = ?, name = ? WHERE id = ?", (b"\xff{not json", name, broken.id)
    )
    page, unreadable, _, _ = sql.pending_page((0, ""), None)
    assert [d.event for d in page] == [good]
    (row,) = unreadable
    assert row[1:3] == (broken.id, name)
    assert "not valid JSON" in row[8]
    sql.write([(DEAD, unreadable)])
    (letter,) = sql.dead_letters(-1)
    assert (letter.event.id, letter.event.name) == (broken.id, expected_name)
    assert letter.event.payload == {"raw": "\ufffd{not json"}


def test_the_first_event_with_a_key_keeps_it(sql: JournalSQL) -> None:
    """A later append with the same idempotency key is journaled, but the key stays the first's."""
    first, again = keyed("k", LONG_AGO), keyed("k", LONG_AGO + timedelta(1))
    sql.write([append(first), append(again)])
    assert sql.recent_keys(to_us(LONG_AGO), 10) == [first]
    assert sql.stats().idempotency_keys == 1
    assert sql.stats().events == 2


def test_forgetting_many_keys_runs_in_chunks_and_counts_them(sql: JournalSQL) -> None:
    """More records than one transaction deletes are all forgotten; newer ones stay."""
    recent = keyed("recent", datetime.now(UTC))
    sql.write([append(keyed(f"k{n}"), []) for n in range(FORGET_CHUNK + 5)] + [append(recent)])
    assert sql.forget_keys(to_us(LONG_AGO + timedelta(1))) == FORGET_CHUNK + 5
    assert sql.recent_keys(0, 10) == [recent]


def test_recent_and_forget_use_the_time_index(sql: JournalSQL, conn: sqlite3.Connection) -> None:
    """Reading the newest keys and forgetting the oldest go through the index on time."""

    def plan(query: str) -> str:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {query}", (0, 10)).fetchall()
        return " | ".join(str(row[-1]) for row in rows)

    assert "idempotency_by_time" in plan(RECENT_KEYS)
    assert "idempotency_by_time" in plan(FORGET_KEYS)


def test_prune_removes_old_done_deliveries_and_their_empty_events(sql: JournalSQL) -> None:
    """Done deliveries older than the cutoff go, with events left without deliveries."""
    old_done, old_pending = Event(new_event_id(), "a.b", {}, LONG_AGO, {}), keyed("p")
    fresh_done = make_event("a.b", {}, {})
    sql.write([append(old_done), append(old_pending), append(fresh_done)])
    sql.write([(COMPLETE, [(old_done.id, "r"), (fresh_done.id, "r")])])
    assert sql.prune(to_us(LONG_AGO + timedelta(1))) == 1
    assert sql.stats() == StoreStats(events=2, pending=1, done=1, dead=0, idempotency_keys=1)
    assert sql.prune(None) == 1
    assert sql.stats() == StoreStats(events=1, pending=1, done=0, dead=0, idempotency_keys=1)


def test_a_retention_chunk_stops_at_the_first_newer_event(sql: JournalSQL) -> None:
    """With stop_at_newer, pruning ends at an event newer than the cutoff: nothing to resume."""
    old, fresh, older = (
        Event(new_event_id(), "a.b", {}, moment, {})
        for moment in (LONG_AGO, datetime.now(UTC), LONG_AGO)
    )
    sql.write([append(old), append(fresh), append(older)])
    sql.write([(COMPLETE, [(event.id, "r") for event in (old, fresh, older)])])
    assert sql.prune_chunk(0, to_us(LONG_AGO + timedelta(1)), stop_at_newer=True) == (1, None)
    assert sql.stats().done == 2


def test_an_empty_file_read_only_reads_as_an_empty_journal(path: Path) -> None:
    """Without tables (an empty file opened read-only) every read answers with nothing."""
    path.touch()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        schema = JournalSchema(conn, str(path))
        schema.check(read_only=True)
        sql = JournalSQL(conn, schema, path=str(path), synchronous="FULL")
        assert sql.stats() == StoreStats(events=0, pending=0, done=0, dead=0)
        assert sql.pending_page((0, ""), None) == ([], [], None, 0)
        assert sql.dead_letters(-1) == []
        assert sql.recent_keys(0, 10) == []
    finally:
        conn.close()


def test_a_checkpoint_empties_the_wal(sql: JournalSQL, path: Path) -> None:
    """After a checkpoint the -wal holds nothing, so no commit depends on it."""
    sql.write([append(make_event("a.b", {}, {}))])
    assert os.path.getsize(f"{path}-wal") > 0
    assert sql.checkpoint() is True
    assert os.path.getsize(f"{path}-wal") == 0
