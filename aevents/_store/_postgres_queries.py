"""PostgresStore's other statements: consumers, listings, dead letters, pruning, the
tail of events, and the journal's calls (``append`` aside, which is a publish).

Each method runs on a cursor inside a transaction that ``PostgresSession`` opens
and commits (a read-only one for the reading commands of the CLI).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import orjson

from .._event import Event
from .._policy import DeadLetter
from ._postgres_schema import Statements
from ._postgres_sql import Cursor, EventRow, routes_json, write_events
from ._protocol import Backlog, Consumer, ConsumerId, Lease, PendingDelivery, Route, StoreStats
from ._sqlite_leased_sql import parse_consumer_id

__all__ = ["PAGE", "PRUNE_CHUNK", "Queries"]

PAGE: Final = 512  # pending deliveries read per page
PRUNE_CHUNK: Final = 2000  # deliveries (or bare events) deleted per transaction

_SQL: Final = {
    # -- consumers
    "forget_expired": "DELETE FROM {s}.consumers WHERE expires_at <= %s",
    "register": (
        "INSERT INTO {s}.consumers (id, routes, registered_at, last_seen, expires_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET routes = excluded.routes,"
        " last_seen = excluded.last_seen, expires_at = excluded.expires_at"
    ),
    "heartbeat": (
        "UPDATE {s}.consumers SET last_seen = %s, expires_at = %s WHERE id = %s AND expires_at > %s"
    ),
    "unregister": "DELETE FROM {s}.consumers WHERE id = %s",
    "release_all": (
        "UPDATE {s}.deliveries SET holder = NULL, attempts = attempts - started::int,"
        " started = false WHERE holder = %s AND state = 0"
    ),
    "live": (
        "SELECT c.id, c.routes, c.registered_at, c.last_seen, c.expires_at,"
        " (SELECT count(*) FROM {s}.deliveries AS d WHERE d.holder = c.id AND d.state = 0)"
        " FROM {s}.consumers AS c WHERE c.expires_at > %s ORDER BY c.n"
    ),
    # -- listings
    "leases": (
        "SELECT e.id, e.name, d.receiver_id, d.key, d.attempts + (NOT d.started)::int,"
        " d.holder, d.lease_until FROM {s}.deliveries AS d JOIN {s}.events AS e"
        " ON e.seq = d.event_seq WHERE d.holder IS NOT NULL AND d.state = 0"
        " ORDER BY d.lease_until, d.event_seq, d.receiver_id"
    ),
    "backlog": (
        "SELECT d.receiver_id, CASE WHEN d.state = 2 THEN 3 WHEN d.holder IS NOT NULL THEN 2"
        " WHEN d.due > %s THEN 1 ELSE 0 END AS kind, count(*), min(e.published_at)"
        " FROM {s}.deliveries AS d JOIN {s}.events AS e ON e.seq = d.event_seq"
        " WHERE d.state != 1 GROUP BY d.receiver_id, kind"
    ),
    "held_keys": (
        "SELECT d.receiver_id, d.key, e.id FROM {s}.deliveries AS d JOIN {s}.events AS e"
        " ON e.seq = d.event_seq WHERE d.state = 2 AND d.holds_key ORDER BY d.event_seq"
    ),
    "release_key": (
        "UPDATE {s}.deliveries SET holds_key = false"
        " WHERE receiver_id = %s AND key = %s AND holds_key"
    ),
    "dead_letters": (
        "SELECT l.id, l.receiver_id, l.attempts, l.error_type, l.error_message, l.failed_at,"
        " e.body FROM {s}.dead_letters AS l JOIN {s}.events AS e ON e.seq = l.event_seq"
        " ORDER BY l.failed_at, l.n LIMIT %s"
    ),
    # A redelivered letter is ready at once, leased to nobody, and holds no key.
    "redeliver": (
        "WITH gone AS (DELETE FROM {s}.dead_letters WHERE %s::text[] IS NULL OR id = ANY(%s)"
        " RETURNING event_seq, receiver_id), revived AS (UPDATE {s}.deliveries AS d"
        " SET state = 0, attempts = 0, due = '-infinity', holder = NULL,"
        " lease_until = '-infinity', started = false, holds_key = false FROM gone"
        " WHERE d.event_seq = gone.event_seq AND d.receiver_id = gone.receiver_id RETURNING 1)"
        " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM revived)"
    ),
    # A discarded letter is gone; its delivery is done, never run, and holds no key.
    "discard": (
        "WITH gone AS (DELETE FROM {s}.dead_letters WHERE id = ANY(%s)"
        " RETURNING event_seq, receiver_id), finished AS (UPDATE {s}.deliveries AS d"
        " SET state = 1, holder = NULL, started = false, holds_key = false FROM gone"
        " WHERE d.event_seq = gone.event_seq AND d.receiver_id = gone.receiver_id RETURNING 1)"
        " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM finished)"
    ),
    "stats": (
        "SELECT (SELECT count(*) FROM {s}.events),"
        " (SELECT count(*) FROM {s}.deliveries WHERE state = 0),"
        " (SELECT count(*) FROM {s}.deliveries WHERE state = 1),"
        " (SELECT count(*) FROM {s}.deliveries WHERE state = 2),"
        " (SELECT count(*) FROM {s}.idempotency)"
    ),
    # -- pruning, a bounded batch per transaction
    "prune_done": (
        "DELETE FROM {s}.deliveries WHERE (event_seq, receiver_id) IN"
        " (SELECT d.event_seq, d.receiver_id FROM {s}.deliveries AS d"
        " JOIN {s}.events AS e ON e.seq = d.event_seq"
        " WHERE d.state = 1 AND e.published_at < %s ORDER BY d.event_seq LIMIT %s)"
        " RETURNING event_seq"
    ),
    "drop_empty_events": (
        "DELETE FROM {s}.events AS e WHERE e.seq = ANY(%s::bigint[])"
        " AND NOT EXISTS (SELECT 1 FROM {s}.deliveries AS d WHERE d.event_seq = e.seq)"
        " AND NOT EXISTS (SELECT 1 FROM {s}.dead_letters AS l WHERE l.event_seq = e.seq)"
    ),
    "prune_bare": (
        "DELETE FROM {s}.events WHERE seq IN (SELECT e.seq FROM {s}.events AS e"
        " WHERE e.published_at < %s"
        " AND NOT EXISTS (SELECT 1 FROM {s}.deliveries AS d WHERE d.event_seq = e.seq)"
        " AND NOT EXISTS (SELECT 1 FROM {s}.dead_letters AS l WHERE l.event_seq = e.seq)"
        " ORDER BY e.seq LIMIT %s)"
    ),
    # -- the tail: one statement, one snapshot, for the page and the head
    "event_position": "SELECT head FROM {s}.event_head",
    "events_after": (
        "SELECT (SELECT head FROM {s}.event_head), p.seq, p.body FROM (SELECT seq, body"
        " FROM {s}.events WHERE seq > %s ORDER BY seq LIMIT %s) AS p RIGHT JOIN (VALUES (1))"
        " AS one(x) ON true ORDER BY p.seq"
    ),
    # -- idempotency keys
    "recent_keys": (
        "SELECT body FROM (SELECT n, occurred_at, body FROM {s}.idempotency"
        " WHERE occurred_at >= %s ORDER BY occurred_at DESC, n DESC LIMIT %s) AS k"
        " ORDER BY occurred_at, n"
    ),
    "forget_keys": "DELETE FROM {s}.idempotency WHERE occurred_at < %s",
    # -- the journal's calls
    "pending_page": (
        "SELECT d.event_seq, d.receiver_id, d.attempts, e.body"
        " FROM {s}.deliveries AS d JOIN {s}.events AS e ON e.seq = d.event_seq"
        " WHERE d.state = 0 AND (d.event_seq, d.receiver_id) > (%s, %s) AND d.event_seq <= %s"
        " ORDER BY d.event_seq, d.receiver_id LIMIT %s"
    ),
    "start_attempts": (
        "UPDATE {s}.deliveries AS d SET attempts = greatest(d.attempts, c.attempt)"
        " FROM unnest(%s::text[], %s::text[], %s::int[]) AS c(event_id, receiver_id, attempt)"
        " JOIN {s}.events AS e ON e.id = c.event_id"
        " WHERE d.event_seq = e.seq AND d.receiver_id = c.receiver_id AND d.state = 0"
    ),
    "complete": (
        "UPDATE {s}.deliveries AS d SET state = 1, holder = NULL, started = false"
        " FROM unnest(%s::text[], %s::text[]) AS c(event_id, receiver_id)"
        " JOIN {s}.events AS e ON e.id = c.event_id"
        " WHERE d.event_seq = e.seq AND d.receiver_id = c.receiver_id AND d.state = 0"
    ),
    "seq_of": "SELECT seq FROM {s}.events WHERE id = %s",
    "bury": (
        "INSERT INTO {s}.deliveries (event_seq, receiver_id, key, state, attempts)"
        " VALUES (%s, %s, %s, 2, %s) ON CONFLICT (event_seq, receiver_id) DO UPDATE SET"
        " state = 2, attempts = excluded.attempts, holder = NULL, started = false,"
        " holds_key = false"
    ),
    "drop_letter": (
        "DELETE FROM {s}.dead_letters WHERE id = %s OR (event_seq = %s AND receiver_id = %s)"
    ),
    "insert_letter": (
        "INSERT INTO {s}.dead_letters"
        " (id, event_seq, receiver_id, attempts, error_type, error_message, failed_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
    ),
}


class Queries:
    """Everything but the group-committed writes, as methods over a cursor."""

    def __init__(self, statements: Statements) -> None:
        self.statements = statements
        self._sql = {name: statements.render(text) for name, text in _SQL.items()}

    # -- consumers -------------------------------------------------------------------------

    def register(
        self,
        cursor: Cursor,
        consumer: ConsumerId,
        routes: Sequence[Route],
        now: datetime,
        expires: datetime,
    ) -> None:
        cursor.execute(self._sql["forget_expired"], (now,))
        cursor.execute(
            self._sql["register"], (str(consumer), routes_json(routes), now, now, expires)
        )

    def heartbeat(
        self, cursor: Cursor, consumer: ConsumerId, now: datetime, expires: datetime
    ) -> bool:
        result = cursor.execute(self._sql["heartbeat"], (now, expires, str(consumer), now))
        return bool(result.rowcount)

    def unregister(self, cursor: Cursor, consumer: ConsumerId) -> int:
        cursor.execute(self._sql["unregister"], (str(consumer),))
        released = int(cursor.execute(self._sql["release_all"], (str(consumer),)).rowcount)
        if released:
            self.notify(cursor)
        return released

    def consumers(self, cursor: Cursor, now: datetime) -> list[Consumer]:
        cursor.execute(self._sql["live"], (now,))
        return [
            Consumer(
                id=parse_consumer_id(text),
                routes=tuple(Route(p, r) for p, r in orjson.loads(bytes(routes))),
                registered_at=registered,
                last_seen=seen,
                expires_at=expires,
                leases=int(held),
            )
            for text, routes, registered, seen, expires, held in cursor.fetchall()
        ]

    def notify(self, cursor: Cursor) -> None:
        cursor.execute(self.statements.notify, (self.statements.channel,))

    # -- listings --------------------------------------------------------------------------

    def leases(self, cursor: Cursor) -> list[Lease]:
        cursor.execute(self._sql["leases"])
        return [
            Lease(event_id, name, receiver_id, key, attempt, parse_consumer_id(holder), until)
            for event_id, name, receiver_id, key, attempt, holder, until in cursor.fetchall()
        ]

    def backlog(self, cursor: Cursor, now: datetime) -> list[Backlog]:
        cursor.execute(self._sql["backlog"], (now,))
        counts: dict[str, list[int]] = {}
        oldest: dict[str, datetime] = {}
        for receiver_id, kind, count, first in cursor.fetchall():
            counts.setdefault(receiver_id, [0, 0, 0, 0])[kind] += count
            if kind != 3 and (receiver_id not in oldest or first < oldest[receiver_id]):
                oldest[receiver_id] = first
        return [
            Backlog(receiver_id, ready, scheduled, leased, dead, oldest.get(receiver_id))
            for receiver_id, (ready, scheduled, leased, dead) in sorted(counts.items())
        ]

    def held_keys(self, cursor: Cursor) -> dict[tuple[str, str], str]:
        cursor.execute(self._sql["held_keys"])
        held: dict[tuple[str, str], str] = {}
        for receiver_id, key, event_id in cursor.fetchall():
            held.setdefault((receiver_id, key), event_id)
        return held

    def release_key(self, cursor: Cursor, receiver_id: str, key: str) -> bool:
        released = bool(cursor.execute(self._sql["release_key"], (receiver_id, key)).rowcount)
        if released:
            self.notify(cursor)
        return released

    def dead_letters(self, cursor: Cursor, limit: int | None) -> list[DeadLetter]:
        cursor.execute(self._sql["dead_letters"], (limit,))
        return [
            DeadLetter(
                id=letter_id,
                event=Event.from_json(bytes(body)),
                receiver_id=receiver_id,
                attempts=attempts,
                error_type=error_type,
                error_message=error_message,
                failed_at=failed_at,
            )
            for letter_id, receiver_id, attempts, error_type, error_message, failed_at, body in (
                cursor.fetchall()
            )
        ]

    def redeliver(self, cursor: Cursor, letter_ids: list[str] | None) -> int:
        cursor.execute(self._sql["redeliver"], (letter_ids, letter_ids))
        count = int(cursor.fetchall()[0][0])
        if count:
            self.notify(cursor)
        return count

    def discard(self, cursor: Cursor, letter_ids: list[str]) -> int:
        cursor.execute(self._sql["discard"], (letter_ids,))
        count = int(cursor.fetchall()[0][0])
        if count:
            self.notify(cursor)  # a key a letter held lets its next delivery go
        return count

    def stats(self, cursor: Cursor) -> StoreStats:
        cursor.execute(self._sql["stats"])
        events, pending, done, dead, keys = cursor.fetchall()[0]
        return StoreStats(
            events=events, pending=pending, done=done, dead=dead, idempotency_keys=keys
        )

    # -- pruning ---------------------------------------------------------------------------

    def prune_done(self, cursor: Cursor, before: datetime, batch: int) -> int:
        """Delete a batch of done deliveries of events older than ``before``, oldest
        first, and the events left with nothing; return how many deliveries went."""
        cursor.execute(self._sql["prune_done"], (before, batch))
        gone = cursor.fetchall()
        seqs = sorted({row[0] for row in gone})
        if seqs:
            cursor.execute(self._sql["drop_empty_events"], (seqs,))
        return len(gone)

    def prune_bare(self, cursor: Cursor, before: datetime, batch: int) -> int:
        """Delete a batch of events older than ``before`` that have no delivery left."""
        return int(cursor.execute(self._sql["prune_bare"], (before, batch)).rowcount)

    # -- the tail of events ----------------------------------------------------------------

    def event_position(self, cursor: Cursor) -> int:
        cursor.execute(self._sql["event_position"])
        return int(cursor.fetchall()[0][0])

    def events_after(
        self, cursor: Cursor, position: int, limit: int
    ) -> tuple[list[Event], int, int]:
        cursor.execute(self._sql["events_after"], (position, limit))
        rows = cursor.fetchall()
        head = int(rows[0][0])
        found = [(int(seq), bytes(body)) for _, seq, body in rows if seq is not None]
        end = max(head, position) if len(found) < limit else found[-1][0]
        return [Event.from_json(body) for _, body in found], end, end - position - len(found)

    # -- idempotency keys ------------------------------------------------------------------

    def recent_keys(self, cursor: Cursor, since: datetime, limit: int) -> list[Event]:
        cursor.execute(self._sql["recent_keys"], (since, limit))
        return [Event.from_json(bytes(row[0])) for row in cursor.fetchall()]

    def forget_keys(self, cursor: Cursor, before: datetime) -> int:
        return int(cursor.execute(self._sql["forget_keys"], (before,)).rowcount)

    # -- the journal (``Store``) -----------------------------------------------------------

    def pending_page(
        self, cursor: Cursor, after: tuple[int, str], upto: int
    ) -> list[tuple[int, str, int, bytes]]:
        cursor.execute(self._sql["pending_page"], (*after, upto, PAGE))
        return [(int(s), r, int(a), bytes(b)) for s, r, a, b in cursor.fetchall()]

    def start_attempts(self, cursor: Cursor, attempts: Sequence[tuple[str, str, int]]) -> None:
        cursor.execute(
            self._sql["start_attempts"],
            ([a[0] for a in attempts], [a[1] for a in attempts], [a[2] for a in attempts]),
        )

    def complete(self, cursor: Cursor, deliveries: Sequence[tuple[str, str]]) -> None:
        cursor.execute(
            self._sql["complete"], ([d[0] for d in deliveries], [d[1] for d in deliveries])
        )

    def dead_letter(self, cursor: Cursor, letters: Sequence[DeadLetter]) -> None:
        """Mark deliveries dead, recording the events not stored, one letter per delivery."""
        for letter in letters:
            event = letter.event
            cursor.execute(self._sql["seq_of"], (event.id,))
            found = cursor.fetchall()
            if not found:
                row: EventRow = (
                    event.id,
                    event.name,
                    event.to_json(),
                    event.occurred_at,
                    (),
                    None,
                    event.key,
                )
                write_events(cursor, self.statements, [row], always=True)
                cursor.execute(self._sql["seq_of"], (event.id,))
                found = cursor.fetchall()
            seq = int(found[0][0])
            cursor.execute(self._sql["bury"], (seq, letter.receiver_id, event.key, letter.attempts))
            cursor.execute(self._sql["drop_letter"], (letter.id, seq, letter.receiver_id))
            cursor.execute(
                self._sql["insert_letter"],
                (
                    letter.id,
                    seq,
                    letter.receiver_id,
                    letter.attempts,
                    letter.error_type,
                    letter.error_message,
                    letter.failed_at,
                ),
            )


def decode_pending(rows: list[tuple[int, str, int, bytes]]) -> list[PendingDelivery]:
    page: list[PendingDelivery] = []
    last, event = -1, None
    for seq, receiver_id, attempts, body in rows:
        if seq != last or event is None:
            last, event = seq, Event.from_json(body)
        page.append(PendingDelivery(event, receiver_id, attempts))
    return page
