"""LeasedSQL on its own: the leased queue's statements on one real SQLite connection.

No store thread: these tests call the part directly, as the thread would, to pin
what one group-commit transaction does with its requests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from aevents._event import make_event
from aevents._store._protocol import ConsumerId, Route
from aevents._store._sqlite_leased_sql import COMPLETED, PUBLISH, SETTLE, LeasedSQL
from aevents._store._sqlite_schema import JournalSchema
from aevents._store._sqlite_sql import JournalSQL

NOW = 1_900_000_000_000_000  # µs
CONSUMER = ConsumerId("host", 1, "token")


@pytest.fixture
def sql(tmp_path: Path) -> Iterator[LeasedSQL]:
    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    schema = JournalSchema(conn, "q.db")
    schema.check(read_only=False)
    schema.prepare_for_writes()
    journal = JournalSQL(conn, schema, path="q.db", synchronous="NORMAL")
    try:
        yield LeasedSQL(conn, journal, synchronous="NORMAL")
    finally:
        conn.close()


def _row(n: int, key: str | None = None, idempotency_key: str | None = None) -> tuple[object, ...]:
    metadata = {} if idempotency_key is None else {"idempotency_key": idempotency_key}
    event = make_event("sql:event", {"n": n}, metadata, key)
    return (event.id, event.name, event.to_json(), NOW, ["r"], idempotency_key, event.key)


def _count(sql: LeasedSQL, table: str) -> int:
    return int(sql._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_group_of_publishes_and_settlements_is_one_transaction_all_or_none(
    sql: LeasedSQL,
) -> None:
    """One failing request (an event id already stored) undoes the whole group: the
    settlement and the other publish in it too."""
    first = _row(1)
    sql.write([(PUBLISH, [first], [])])
    sql.register(CONSUMER, [Route("**", "r")], NOW, NOW + 10**9)
    claims = sql.claim(CONSUMER, 10, NOW, NOW + 10**7, reclaim_dead_pids=False)
    assert claims is not None
    (claim,) = claims
    settled: list[int] = []
    group = [
        (SETTLE, str(CONSUMER), NOW, [(COMPLETED, first[0], "r", claim[2], None)], settled),
        (PUBLISH, [_row(2)], []),
        (PUBLISH, [first], []),  # the same event again
    ]
    with pytest.raises(sqlite3.IntegrityError):
        sql.write(group)
    assert not sql._conn.in_transaction
    assert (_count(sql, "events"), sql.journal.stats().done) == (1, 0)
    sql.write(group[:2])  # what the store thread does next: the others without the culprit
    assert settled == []
    assert (_count(sql, "events"), sql.journal.stats().done) == (2, 1)


def test_idempotency_keys_in_one_group_answer_with_the_first_body(sql: LeasedSQL) -> None:
    """Within one transaction, a repeat of a key, in the same request or another, gets the
    body of the key's first event and adds nothing."""
    first, again, other = _row(1, idempotency_key="k"), _row(2, idempotency_key="k"), _row(3)
    out_one: list[bytes | None] = []
    out_two: list[bytes | None] = []
    sql.write([(PUBLISH, [first, other, again], out_one), (PUBLISH, [again], out_two)])
    assert out_one == [None, None, first[2]]
    assert out_two == [first[2]]
    assert (_count(sql, "events"), _count(sql, "idempotency")) == (2, 1)


def test_a_settlement_of_a_claim_not_held_reports_its_index(sql: LeasedSQL) -> None:
    """``out`` gets the indexes of outcomes whose claim is not held (wrong attempt here)."""
    row = _row(1)
    sql.write([(PUBLISH, [row], [])])
    sql.register(CONSUMER, [Route("**", "r")], NOW, NOW + 10**9)
    assert sql.claim(CONSUMER, 10, NOW, NOW + 10**7, reclaim_dead_pids=False)
    lost: list[int] = []
    outcomes = [(COMPLETED, row[0], "r", 2, None), (COMPLETED, row[0], "r", 1, None)]
    sql.write([(SETTLE, str(CONSUMER), NOW, outcomes, lost)])
    assert lost == [0]
    assert sql.journal.stats().done == 1


def test_an_event_repeated_in_one_publish_is_named_and_adds_nothing(sql: LeasedSQL) -> None:
    """The error names the repeated event; the rows inserted before it are rolled back."""
    row = _row(1)
    with pytest.raises(sqlite3.IntegrityError, match=f"event {row[0]!r} is already stored"):
        sql.write([(PUBLISH, [_row(0), row, row], [])])
    assert _count(sql, "events") == 0
