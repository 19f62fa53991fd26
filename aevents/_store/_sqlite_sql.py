"""The journal's SQL: every statement and query the store runs, on one connection.

``JournalSQL`` is given an open connection whose schema ``JournalSchema`` has
checked (and, read-write, migrated). It writes a group-commit batch in one
``BEGIN IMMEDIATE`` transaction (``write``), runs the reads and the
maintenance the store offers, and keeps the two things that belong to the
connection: the next event ``seq`` and the ``synchronous`` level in force. It
knows nothing of threads: the store thread is its only caller.

A write request is a plain tuple, the cheapest thing to build per call:

* ``(APPEND, event_id, name, body, occurred_at, receiver_ids, idempotency_key, key)``
* ``(START, [(attempt, event_id, receiver_id), ...])``
* ``(COMPLETE, [(event_id, receiver_id), ...])``
* ``(DEAD, [(letter_id, event_id, name, body, published_us, receiver_id, attempts,
  error_type, error_message, failed_us), ...])``
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import chain, islice
from typing import Any, Final

from .._event import Event, new_event_id
from .._exceptions import InvalidEventNameError
from .._names import validate_name
from .._policy import DeadLetter, describe_error
from .._text import counted
from ._protocol import PendingDelivery, StoreStats
from ._sqlite_schema import (
    EPOCH,
    MICROSECOND,
    SYNCHRONOUS,
    JournalSchema,
    from_us,
    rollback_transaction,
    to_us,
)

logger = logging.getLogger("aevents.store")

APPEND, START, COMPLETE, DEAD = 0, 1, 2, 3  # the kinds of write request
UNREADABLE_EVENT: Final = "aevents.journal.unreadable"

INSERT_EVENT: Final = (
    "INSERT INTO events (seq, id, name, body, published_at) VALUES (?, ?, ?, ?, ?)"
)
INSERT_DELIVERY: Final = "INSERT INTO deliveries (event_seq, receiver_id, key) VALUES (?, ?, ?)"
# The first event appended with a key keeps it; a later one is journaled without its key.
_INSERT_KEY: Final = (
    "INSERT INTO idempotency (key, occurred_at, body) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING"
)
# Multi-row forms: sqlite3 releases and retakes the GIL around every step, so 64 rows
# per step instead of one keeps the store thread from queueing for the GIL per row.
CHUNKS: Final = (64, 16, 4)
INSERT_EVENTS: Final = {
    size: INSERT_EVENT.replace("(?, ?, ?, ?, ?)", ", ".join(["(?, ?, ?, ?, ?)"] * size))
    for size in CHUNKS
}
INSERT_DELIVERIES: Final = {
    size: INSERT_DELIVERY.replace("(?, ?, ?)", ", ".join(["(?, ?, ?)"] * size)) for size in CHUNKS
}
_START_ATTEMPT: Final = (
    "UPDATE deliveries SET attempts = max(attempts, ?) WHERE state = 0"
    " AND event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
)
_COMPLETE: Final = (
    "UPDATE deliveries SET state = 1, holder = NULL WHERE state = 0"
    " AND event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
)
BY_ID: Final = "(SELECT seq FROM events WHERE id = ?)"
"""How a statement finds an event's seq from its id; ``by_seq`` swaps it for the seq."""


def by_seq(statement: str) -> str:
    """``statement`` given the event's seq where it was given its id (see ``SeqCache``)."""
    assert BY_ID in statement
    return statement.replace(BY_ID, "?")


UPDATE_CHUNKS: Final = (64, 16, 4, 1)


def many(template: str, columns: int) -> dict[int, str]:
    """``template`` (an ``UPDATE … FROM {values} AS v …``) for each size of
    ``UPDATE_CHUNKS``: a VALUES list of that many rows of ``columns`` parameters,
    named ``v.column1`` and on by SQLite."""
    row = "(" + ", ".join(["?"] * columns) + ")"
    return {
        size: template.format(values="(VALUES " + ", ".join([row] * size) + ")")
        for size in UPDATE_CHUNKS
    }


def update_rows(
    conn: sqlite3.Connection,
    statements: dict[int, str],
    rows: Sequence[tuple[Any, ...]],
    fixed: tuple[Any, ...] = (),
    *,
    before: tuple[Any, ...] = (),
) -> int:
    """Run an ``UPDATE … FROM (VALUES …)`` of ``many`` over ``rows``, a chunk per
    statement (``before`` and ``fixed``: the parameters before and after the VALUES);
    the rows it changed.

    One statement step updates a whole chunk, where ``executemany`` steps once per
    row, and each step gives up the GIL and waits to take it back from the event
    loop's thread: a batch's settles would wait that many turns."""
    changed = start = 0
    for size in UPDATE_CHUNKS:
        end = start + (len(rows) - start) // size * size
        statement = statements[size]
        for at in range(start, end, size):
            flat = [*before, *chain.from_iterable(rows[at : at + size]), *fixed]
            changed += conn.execute(statement, flat).rowcount
        start = end
    return changed


_START_ATTEMPTS: Final = many(
    "UPDATE deliveries SET attempts = max(attempts, v.column1) FROM {values} AS v"
    " WHERE deliveries.state = 0 AND deliveries.event_seq = v.column2"
    " AND deliveries.receiver_id = v.column3",
    3,
)
_COMPLETES: Final = many(
    "UPDATE deliveries SET state = 1, holder = NULL FROM {values} AS v"
    " WHERE deliveries.state = 0 AND deliveries.event_seq = v.column1"
    " AND deliveries.receiver_id = v.column2",
    2,
)
SEQS_KEPT: Final = 16384


class SeqCache:
    """The seqs of the events this store added or claimed lately, by event id (at most
    ``SEQS_KEPT``): a start or a settle of one finds its delivery by primary key, without
    first looking its seq up by id (a third of such a write's cost). A seq never changes
    once committed, so an entry is never wrong; one that is missing, evicted or never
    known only sends the write through the lookup by id. The seqs a transaction gives
    are kept once it commits (``committed``): a rolled-back seq is given again. Used on
    the store thread alone."""

    __slots__ = ("adding", "seqs")

    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}
        self.adding: list[tuple[str, int]] = []
        """Given by the open transaction."""

    def keep(self, event_id: str, seq: int) -> None:
        """Keep the seq of an event that is stored (committed)."""
        seqs = self.seqs
        seqs[event_id] = seq
        if len(seqs) > SEQS_KEPT:  # forget the oldest quarter (a dict keeps insertion order)
            for old in list(islice(seqs, SEQS_KEPT // 4)):
                del seqs[old]

    def committed(self) -> None:
        """The open transaction committed: keep the seqs it gave."""
        adding, self.adding = self.adding, []
        for event_id, seq in adding:
            self.keep(event_id, seq)

    def split(
        self, rows: Sequence[tuple[Any, ...]], at: int
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """``rows`` whose item ``at`` is an event id: (those whose seq is known, with the
        seq in its place; the rest as they are)."""
        seqs = self.seqs
        known: list[tuple[Any, ...]] = []
        unknown: list[tuple[Any, ...]] = []
        for row in rows:
            seq = seqs.get(row[at])
            if seq is None:
                unknown.append(row)
            else:
                known.append((*row[:at], seq, *row[at + 1 :]))
        return known, unknown


_FIND_EVENT: Final = "SELECT seq FROM events WHERE id = ?"
_KILL_DELIVERY: Final = (
    "INSERT INTO deliveries (event_seq, receiver_id, state, attempts) VALUES (?, ?, 2, ?)"
    " ON CONFLICT (event_seq, receiver_id) DO UPDATE SET state = 2, attempts = excluded.attempts,"
    " holder = NULL"
)
_INSERT_LETTER: Final = (
    "INSERT OR REPLACE INTO dead_letters"
    " (id, event_seq, receiver_id, attempts, error_type, error_message, failed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_EVENT_TIMES: Final = "SELECT seq, published_at FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_DELETE_DONE: Final = "DELETE FROM deliveries WHERE event_seq = ? AND state = 1"
_DELETE_EMPTY_EVENT: Final = (
    "DELETE FROM events WHERE seq = ?1"
    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)"
)
NEXT_SEQ: Final = (  # never a seq given before, even to an event pruned since
    "SELECT max(coalesce((SELECT max(seq) FROM events), 0), (SELECT head FROM event_head)) + 1"
)
RAISE_HEAD: Final = (  # before deleting events: their seqs stay given (event_head, schema v6)
    "UPDATE event_head SET head = (SELECT max(seq) FROM events)"
    " WHERE head < (SELECT coalesce(max(seq), 0) FROM events)"
)
_PENDING_PAGE: Final = (
    "SELECT d.event_seq, d.receiver_id, d.attempts, e.id, e.name, e.body, e.published_at"
    " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
    " WHERE d.state = 0 AND (d.event_seq, d.receiver_id) > (?, ?) AND d.event_seq <= ?"
    " ORDER BY d.event_seq, d.receiver_id LIMIT ?"
)
_DEAD_LETTERS: Final = (
    "SELECT l.id, l.receiver_id, l.attempts, l.error_type, l.error_message, l.failed_at,"
    " e.id, e.name, e.body, e.published_at"
    " FROM dead_letters AS l JOIN events AS e ON e.seq = l.event_seq"
    " ORDER BY l.failed_at, l.rowid LIMIT ?"
)
# A redelivered letter is ready at once, leased to nobody, and holds no key.
_REVIVE_ALL: Final = (
    "UPDATE deliveries SET state = 0, attempts = 0, due = 0, holder = NULL, lease_until = 0,"
    " holds_key = 0, started = 0"
    " WHERE (event_seq, receiver_id) IN (SELECT event_seq, receiver_id FROM dead_letters)"
)
_REVIVE_ONE: Final = (
    "UPDATE deliveries SET state = 0, attempts = 0, due = 0, holder = NULL, lease_until = 0,"
    " holds_key = 0, started = 0"
    " WHERE (event_seq, receiver_id) IN (SELECT event_seq, receiver_id FROM dead_letters"
    " WHERE id = ?)"
)
_FINISH_ONE: Final = (  # a discarded letter's delivery: done, holding no key, never run
    "UPDATE deliveries SET state = 1, due = 0, holder = NULL, lease_until = 0, holds_key = 0"
    " WHERE (event_seq, receiver_id) IN (SELECT event_seq, receiver_id FROM dead_letters"
    " WHERE id = ?)"
)
RECENT_KEYS: Final = (
    "SELECT key, body FROM (SELECT id, key, occurred_at, body FROM idempotency"
    " WHERE occurred_at >= ? ORDER BY occurred_at DESC, id DESC LIMIT ?)"
    " ORDER BY occurred_at, id"
)
FORGET_KEYS: Final = (
    "DELETE FROM idempotency WHERE id IN"
    " (SELECT id FROM idempotency WHERE occurred_at < ? ORDER BY occurred_at LIMIT ?)"
)
_DELETE_ALL_LETTERS: Final = "DELETE FROM dead_letters"
_DELETE_LETTER: Final = "DELETE FROM dead_letters WHERE id = ?"

PAGE: Final = 512  # pending deliveries read per page
PRUNE_CHUNK: Final = 2000  # events examined per prune transaction
FORGET_CHUNK: Final = 2000  # key records deleted per transaction
_RAW_CHARS: Final = 1000  # how much of an unreadable body a dead letter keeps


class JournalSQL:
    """The statements and queries of one journal connection.

    Args:
        conn: The connection, opened with no implicit transactions; it stays
            its opener's to close.
        schema: What the connection's journal holds; reads of tables it lacks
            return nothing.
        path: The journal, for log lines and errors.
        synchronous: The durability of appends and dead letters (see ``write``).
    """

    def __init__(
        self, conn: sqlite3.Connection, schema: JournalSchema, *, path: str, synchronous: str
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self._conn = conn
        self._schema = schema
        self.next_seq = 1
        """The seq the next event added gets, as last read or written by this connection:
        exact while no other process writes the file."""
        self._synchronous_now = ""
        self.seqs = SeqCache()

    def prepare_for_writes(self) -> None:
        """Apply ``synchronous`` and find the next event ``seq``: once the tables exist."""
        self._set_synchronous(self.synchronous)
        self.next_seq = self._conn.execute(NEXT_SEQ).fetchone()[0]

    def rollback(self) -> None:
        """Roll back the transaction left open by a failed statement, if any; never raises."""
        self.seqs.adding.clear()
        rollback_transaction(self._conn, self.path)

    def checkpoint(self) -> bool:
        """Move the whole -wal into the file and truncate it; False if it could not."""
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            logger.debug("journal %r: checkpoint failed", self.path, exc_info=True)
            return False
        return not busy

    # -- writes -----------------------------------------------------------------------------

    def write(self, requests: Sequence[tuple[Any, ...]]) -> bool:
        """Write ``requests`` in one transaction: all or, on an exception, none of them.

        Appends and dead letters commit with the configured ``synchronous``; a
        batch of only attempts and completions commits with ``NORMAL`` (no
        fsync). Returns whether the batch held appends or dead letters.
        """
        durable = any(request[0] == APPEND or request[0] == DEAD for request in requests)
        conn = self._conn
        self._set_synchronous(self.synchronous if durable else "NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq = self.stage(requests, self.next_seq)
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self.seqs.committed()
        self.next_seq = seq
        return durable

    def stage(self, requests: Sequence[tuple[Any, ...]], seq: int) -> int:
        """Run the statements of ``requests`` in the transaction the caller has open,
        numbering new events from ``seq``; return the next free seq."""
        events: list[tuple[Any, ...]] = []
        deliveries: list[tuple[int, str, str | None]] = []
        keys: list[tuple[str, int, bytes]] = []
        adding = self.seqs.adding.append
        starts: list[tuple[int, str, str]] = []
        completes: list[tuple[str, str]] = []
        letters: list[tuple[Any, ...]] = []
        for request in requests:
            kind = request[0]
            if kind == APPEND:
                _, event_id, name, body, occurred_at, receiver_ids, key, lane = request
                occurred = (occurred_at - EPOCH) // MICROSECOND
                events.append((seq, event_id, name, body, occurred))
                if key is not None:
                    keys.append((key, occurred, body))
                adding((event_id, seq))
                if len(receiver_ids) == 1:
                    deliveries.append((seq, receiver_ids[0], lane))
                else:
                    deliveries += [
                        (seq, receiver, lane) for receiver in dict.fromkeys(receiver_ids)
                    ]
                seq += 1
            elif kind == START:
                starts += request[1]
            elif kind == COMPLETE:
                completes += request[1]
            else:
                letters += request[1]
        conn = self._conn
        if events:
            insert_rows(conn, INSERT_EVENT, INSERT_EVENTS, events)
        if deliveries:
            insert_rows(conn, INSERT_DELIVERY, INSERT_DELIVERIES, deliveries)
        if keys:
            conn.executemany(_INSERT_KEY, keys)
        if starts:
            known, unknown = self.seqs.split(starts, 1)
            update_rows(conn, _START_ATTEMPTS, known)
            if unknown:
                conn.executemany(_START_ATTEMPT, unknown)
        if completes:
            known, unknown = self.seqs.split(completes, 0)
            update_rows(conn, _COMPLETES, known)
            if unknown:
                conn.executemany(_COMPLETE, unknown)
        for letter in letters:
            seq = self._insert_letter(letter, seq)
        return seq

    def _insert_letter(self, letter: tuple[Any, ...], seq: int) -> int:
        conn = self._conn
        letter_id, event_id, name, body, published, receiver_id, attempts, *details = letter
        row = conn.execute(_FIND_EVENT, (event_id,)).fetchone()
        if row is None:  # a letter for an event this journal never saw: keep it whole
            conn.execute(INSERT_EVENT, (seq, event_id, name, body, published))
            self.seqs.adding.append((event_id, seq))  # over any seq it had before a prune
            event_seq, seq = seq, seq + 1
        else:
            event_seq = row[0]
        conn.execute(_KILL_DELIVERY, (event_seq, receiver_id, attempts))
        conn.execute(_INSERT_LETTER, (letter_id, event_seq, receiver_id, attempts, *details))
        return seq

    def redeliver(self, letter_ids: list[str] | None) -> int:
        """Make dead letters (all when ``None``) pending with no attempts; return how many."""
        conn = self._conn
        self._set_synchronous(self.synchronous)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if letter_ids is None:
                conn.execute(_REVIVE_ALL)
                count = conn.execute(_DELETE_ALL_LETTERS).rowcount
            else:
                count = 0
                for letter_id in dict.fromkeys(letter_ids):
                    conn.execute(_REVIVE_ONE, (letter_id,))
                    count += conn.execute(_DELETE_LETTER, (letter_id,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        return count

    def discard(self, letter_ids: list[str]) -> int:
        """Delete dead letters, marking their deliveries done; return how many went."""
        conn = self._conn
        self._set_synchronous(self.synchronous)
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = 0
            for letter_id in dict.fromkeys(letter_ids):
                conn.execute(_FINISH_ONE, (letter_id,))
                count += conn.execute(_DELETE_LETTER, (letter_id,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        return count

    def forget_keys(self, before: int) -> int:
        """Delete key records older than ``before`` (µs), a chunk per transaction; count them."""
        conn = self._conn
        self._set_synchronous(self.synchronous)
        removed = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                count = conn.execute(FORGET_KEYS, (before, FORGET_CHUNK)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise
            removed += count
            if count < FORGET_CHUNK:
                return removed

    def prune(self, cutoff: int | None) -> int:
        """Prune every event older than ``cutoff`` (µs; all when ``None``), a chunk at a time."""
        removed, after = 0, 0
        while True:
            count, resume = self.prune_chunk(after, cutoff, stop_at_newer=False)
            removed += count
            if resume is None:
                return removed
            after = resume

    def prune_chunk(
        self, after: int, cutoff: int | None, *, stop_at_newer: bool
    ) -> tuple[int, int | None]:
        """Among the next events after seq ``after``, delete the done deliveries of those
        older than ``cutoff`` and the events left with none; return (deliveries removed,
        where to resume or ``None`` when finished)."""
        conn = self._conn
        rows = conn.execute(_EVENT_TIMES, (after, PRUNE_CHUNK)).fetchall()
        finished = len(rows) < PRUNE_CHUNK
        old: list[tuple[int]] = []
        for seq, published in rows:
            if cutoff is not None and published >= cutoff:
                if stop_at_newer:  # retention assumes publish times grow with seq
                    finished = True
                    break
            else:
                old.append((seq,))
            after = seq
        removed = 0
        if old:
            self._set_synchronous(self.synchronous)
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.executemany(_DELETE_DONE, old).rowcount
                conn.execute(RAISE_HEAD)
                conn.executemany(_DELETE_EMPTY_EVENT, old)
                conn.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise
        return removed, None if finished else after

    def set_synchronous(self, level: str) -> None:
        """Commit the next transactions with ``level`` (``"FULL"`` or ``"NORMAL"``)."""
        self._set_synchronous(level)

    def _set_synchronous(self, level: str) -> None:
        if level != self._synchronous_now:
            self._conn.execute(SYNCHRONOUS[level])
            self._synchronous_now = level

    # -- reads ------------------------------------------------------------------------------

    def pending_page(
        self, after: tuple[int, str], upto: int | None
    ) -> tuple[list[PendingDelivery], list[tuple[Any, ...]], tuple[int, str] | None, int]:
        """One page of pending deliveries after ``after`` (event seq, receiver id).

        The first page (``upto`` is ``None``) fixes the snapshot: events appended
        later are not read. Returns the readable deliveries, a ``DEAD`` row for
        each unreadable one (for the caller to write), where the next page
        starts (``None`` at the end) and the snapshot's last seq.
        """
        conn = self._conn
        if not self._schema.has_tables:
            return [], [], None, 0
        if upto is None:
            upto = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        rows = conn.execute(_PENDING_PAGE, (*after, upto, PAGE)).fetchall()
        page: list[PendingDelivery] = []
        unreadable: list[tuple[Any, ...]] = []
        last_seq, event, reason = None, None, ""
        for seq, receiver_id, attempts, event_id, name, body, published in rows:
            if seq != last_seq:
                (event, reason), last_seq = decode_event(event_id, name, body, published), seq
            assert event is not None
            if not reason:
                page.append(PendingDelivery(event, receiver_id, attempts))
                continue
            unreadable.append(
                (
                    new_event_id(),
                    event_id,
                    name,
                    body,
                    published,
                    receiver_id,
                    attempts,
                    "aevents.journal.UnreadableEvent",
                    f"the journal row could not be read: {reason}",
                    to_us(datetime.now(UTC)),
                )
            )
        last = rows[-1] if len(rows) == PAGE else None
        return page, unreadable, None if last is None else (last[0], last[1]), upto

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        """Dead letters ordered by ``failed_at``, at most ``limit`` (-1: all)."""
        if not self._schema.has_tables:
            return []
        letters = []
        for row in self._conn.execute(_DEAD_LETTERS, (limit,)).fetchall():
            letter_id, receiver_id, attempts, error_type, message, failed, *stored = row
            event, _ = decode_event(*stored)
            failed_at = from_us(failed)
            letters.append(
                DeadLetter(letter_id, event, receiver_id, attempts, error_type, message, failed_at)
            )
        return letters

    def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""
        conn = self._conn
        if not self._schema.has_tables:
            return StoreStats(events=0, pending=0, done=0, dead=0)
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        counts = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
        keys = 0
        if self._schema.has_keys:
            keys = conn.execute("SELECT count(*) FROM idempotency").fetchone()[0]
        return StoreStats(
            events=events,
            pending=counts.get(0, 0),
            done=counts.get(1, 0),
            dead=counts.get(2, 0),
            idempotency_keys=keys,
        )

    def recent_keys(self, since: int, limit: int) -> list[Event]:
        """The events of the newest ``limit`` key records at or after ``since`` (µs), oldest
        first; a record whose event cannot be read is skipped with a warning."""
        if not self._schema.has_keys:  # an old journal opened read-only: it has no keys
            return []
        events, unreadable = [], []
        for key, body in self._conn.execute(RECENT_KEYS, (since, limit)).fetchall():
            try:
                events.append(Event.from_json(body))
            except Exception:
                unreadable.append(key)
        if unreadable:  # the runtime can still start; a retry with one of these publishes again
            logger.warning(
                "journal %r: skipped %s, such as %r",
                self.path,
                counted(len(unreadable), "unreadable idempotency key record"),
                unreadable[0],
            )
        return events


def dead_rows(letters: Sequence[DeadLetter]) -> list[tuple[Any, ...]]:
    """The rows of a ``DEAD`` request for ``letters``."""
    return [
        (
            letter.id,
            letter.event.id,
            letter.event.name,
            letter.event.to_json(),
            to_us(letter.event.occurred_at),
            letter.receiver_id,
            letter.attempts,
            letter.error_type,
            letter.error_message,
            to_us(letter.failed_at),
        )
        for letter in letters
    ]


def decode_event(event_id: Any, name: Any, body: Any, published: Any) -> tuple[Event, str]:
    """The stored event, or a placeholder and the reason it could not be read."""
    try:
        return Event.from_json(body), ""
    except Exception as exc:
        _, reason = describe_error(exc)
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    try:
        label = validate_name(name)
    except InvalidEventNameError:
        label = UNREADABLE_EVENT
    occurred_at = from_us(published) if isinstance(published, int) else EPOCH
    payload = {"raw": raw.decode("utf-8", "replace")[:_RAW_CHARS]}
    return Event(str(event_id), label, payload, occurred_at, {}), reason


def insert_rows(
    conn: sqlite3.Connection, single: str, multi: dict[int, str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` with as few statement steps as the multi-row forms allow."""
    start = 0
    for size in CHUNKS:
        end = start + (len(rows) - start) // size * size
        if end > start:
            flat = [tuple(chain(*rows[at : at + size])) for at in range(start, end, size)]
            conn.executemany(multi[size], flat)
            start = end
    if start < len(rows):
        conn.executemany(single, rows[start:])
