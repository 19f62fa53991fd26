"""The leased queue's SQL: what ``SQLiteStore`` runs on its one connection.

``LeasedSQL`` is given a connection whose schema is at version 4 or later (the
columns of schema versions 3 and 4 are described in ``_sqlite_schema``). It holds a
``JournalSQL`` for what the two stores share (dead letters, redelivery, counts,
idempotency key records, checkpoints, the ``synchronous`` level) and adds the
queue: publishing, consumers, claims, renewals, settlements, listings and
pruning in bounded batches. Every write is one ``BEGIN IMMEDIATE`` transaction,
so several processes on one file take turns through SQLite's write lock (and
its busy timeout), and nothing is read outside the transaction that acts on it.

Group commit: ``write`` takes the requests of many calls and commits them in
one transaction. A write request is a plain tuple ending in ``out``, a list
the transaction fills with the request's answer (it is refilled if the batch
is retried request by request):

* ``(PUBLISH, rows, out)``: ``rows`` are ``(event_id, name, body, occurred_us,
  receiver_ids, idempotency_key, key)``; ``out`` gets, per row, ``None`` (added)
  or the body of the key's first event (added nothing).
* ``(SETTLE, holder, now_us, outcomes, out)``: ``outcomes`` are ``(kind, event_id,
  receiver_id, attempt, argument)``; ``out`` gets the indexes of the ones not held.
* ``(STARTED, holder, claims, out)``: ``claims`` are ``(event_id, receiver_id,
  attempt)`` whose attempts count from now; ``out`` gets the indexes of the ones not held.

and the journal's requests (``APPEND``, ``START``, ``COMPLETE``, ``DEAD``, see
``_sqlite_sql``), staged by ``JournalSQL.stage`` in the same transaction.

Claims and renewals run alone (``claim``, ``renew``): a claim is one
transaction that checks the consumer, reads up to ``limit`` claimable rows of
each of its receivers (those nobody holds through ``deliveries_free``, those
whose lease ran out through ``deliveries_leased``; a key's order through
``deliveries_lane``), keeps the first ``limit`` in publish order and leases
them. ``CLAIM_PLAN`` and ``CLAIM_EXPIRED_PLAN`` pin the plans they get.

Times are integer microseconds since the epoch, as in the journal.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from .._event import Event
from .._policy import DeadLetter
from ._procs import identity_of, is_gone
from ._protocol import Backlog, Consumer, ConsumerId, Lease, Route
from ._sqlite_schema import from_us
from ._sqlite_sql import (
    APPEND,
    CHUNKS,
    DEAD,
    INSERT_DELIVERIES,
    INSERT_DELIVERY,
    INSERT_EVENT,
    INSERT_EVENTS,
    NEXT_SEQ,
    PRUNE_CHUNK,
    RAISE_HEAD,
    JournalSQL,
    by_seq,
    decode_event,
    insert_rows,
    many,
    update_rows,
)

__all__ = [
    "CLAIM",
    "CLAIM_EXPIRED",
    "CLAIM_EXPIRED_PLAN",
    "COMPLETED",
    "DEAD_LETTERED",
    "PUBLISH",
    "RELEASED",
    "RESCHEDULED",
    "SETTLE",
    "STARTED",
    "LeasedSQL",
    "parse_consumer_id",
]

PUBLISH, SETTLE, STARTED = 10, 11, 12  # the kinds of write request (besides the journal's)
COMPLETED, RESCHEDULED, RELEASED, DEAD_LETTERED = range(4)  # the kinds of outcome

# The first event of a key records it; the UNIQUE index on key settles races between
# processes: the loser's INSERT changes nothing, and it reads the winner's copy.
_CLAIM_KEY: Final = (
    "INSERT INTO idempotency (key, occurred_at, body) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING"
)
_KEY_BODY: Final = "SELECT body FROM idempotency WHERE key = ?"
_STORED_BEFORE: Final = "SELECT 1 FROM events WHERE id = ? AND seq < ?"
# A publish that also leases to its publisher (``PUBLISH`` with a claim) inserts its rows
# with their lease set; a key's new delivery is claimable only when no earlier delivery of
# its (receiver, key) is unfinished: pending, or dead and holding the key. Every row already
# stored is earlier than the ones the publish adds.
_INSERT_LEASED: Final = (
    "INSERT INTO deliveries (event_seq, receiver_id, key, holder, lease_until, attempts, started)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_LEASED_MANY: Final = {
    size: _INSERT_LEASED.replace(
        "(?, ?, ?, ?, ?, ?, ?)", ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * size)
    )
    for size in CHUNKS
}
_LANE_BUSY: Final = (
    "SELECT 1 FROM deliveries WHERE receiver_id = ? AND key = ?"
    " AND key IS NOT NULL AND (state = 0 OR holds_key = 1) LIMIT 1"
)

# -- consumers
_FORGET_EXPIRED: Final = "DELETE FROM consumers WHERE expires_at <= ?"
_REGISTER: Final = (
    "INSERT INTO consumers"
    " (id, host, pid, routes, registered_at, last_seen, expires_at, pid_ns, started)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET"
    " routes = excluded.routes, last_seen = excluded.last_seen, expires_at = excluded.expires_at"
)
_HEARTBEAT: Final = (
    "UPDATE consumers SET last_seen = ?2, expires_at = ?3 WHERE id = ?1 AND expires_at > ?2"
)
_UNREGISTER: Final = "DELETE FROM consumers WHERE id = ?"
_ROUTES_OF_LIVE: Final = "SELECT routes FROM consumers WHERE id = ? AND expires_at > ?"
_LIVE: Final = (
    "SELECT id, routes, registered_at, last_seen, expires_at FROM consumers"
    " WHERE expires_at > ? ORDER BY seq"
)
_OTHERS_ON_HOST: Final = (
    "SELECT id, pid, pid_ns, started FROM consumers"
    " WHERE host = ? AND pid != ? AND expires_at > ? AND pid_ns IS NOT NULL"
)
_LEASE_COUNTS: Final = (
    "SELECT holder, count(*) FROM deliveries WHERE holder IS NOT NULL AND state = 0 GROUP BY holder"
)

# -- claims. A pending delivery is claimable when it is due, not leased (or its lease ran
# out), and first of its (receiver, key) among the deliveries not finished: pending, or
# dead and holding the key. CLAIM reads one receiver's that nobody holds, CLAIM_EXPIRED
# those whose lease ran out (the claim merges them, and its receivers', in publish order).
CLAIM: Final = (
    "SELECT d.event_seq, d.receiver_id, d.attempts, 0, e.id, e.name, e.body, e.published_at"
    " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
    " WHERE d.state = 0 AND d.holder IS NULL AND d.receiver_id = ?1 AND d.due <= ?2"
    " AND (d.key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries AS p"
    " WHERE p.receiver_id = d.receiver_id AND p.key = d.key AND p.event_seq < d.event_seq"
    " AND p.key IS NOT NULL AND (p.state = 0 OR p.holds_key = 1)))"
    " ORDER BY d.event_seq LIMIT ?3"
)
CLAIM_EXPIRED: Final = (
    "SELECT d.event_seq, d.receiver_id, d.attempts, d.started,"
    " e.id, e.name, e.body, e.published_at"
    " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
    " WHERE d.state = 0 AND d.holder IS NOT NULL AND d.receiver_id = ?1"
    " AND d.lease_until <= ?2 AND d.due <= ?2"
    " AND (d.key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries AS p"
    " WHERE p.receiver_id = d.receiver_id AND p.key = d.key AND p.event_seq < d.event_seq"
    " AND p.key IS NOT NULL AND (p.state = 0 OR p.holds_key = 1)))"
    " ORDER BY d.event_seq LIMIT ?3"
)
# What EXPLAIN QUERY PLAN says of them on SQLite 3.40 (tests/test_store_leases_sqlite.py
# checks it). CLAIM reads the receiver's free deliveries in publish order through
# deliveries_free: it steps over none of the leased ones, however many are in flight
# (a claim used to, which made a busy fleet's claims cost in proportion to its leases).
# CLAIM_EXPIRED reads only the leases that ran out, through deliveries_leased, and
# sorts those few. A key's earlier unfinished deliveries are one search of
# deliveries_lane, and each event is found by its primary key. No table is scanned.
CLAIM_PLAN: Final = (
    "SEARCH d USING INDEX deliveries_free (receiver_id=?)",
    "CORRELATED SCALAR SUBQUERY 1",
    "SEARCH p USING INDEX deliveries_lane (receiver_id=? AND key=? AND event_seq<?)",
    "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)",
)
CLAIM_EXPIRED_PLAN: Final = (
    "SEARCH d USING INDEX deliveries_leased (receiver_id=? AND lease_until<?)",
    "CORRELATED SCALAR SUBQUERY 1",
    "SEARCH p USING INDEX deliveries_lane (receiver_id=? AND key=? AND event_seq<?)",
    "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)",
    "USE TEMP B-TREE FOR ORDER BY",
)
# Each of these changes a delivery only while the claim is held: same holder, same attempt
# (the claim's attempt is the started ones, plus one if it is not started yet).
_RENEW: Final = (
    "UPDATE deliveries SET lease_until = ?"
    " WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
    " AND state = 0 AND holder = ? AND attempts + 1 - started = ?"
)
_START: Final = (
    "UPDATE deliveries SET attempts = attempts + 1 - started, started = 1"
    " WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
    " AND state = 0 AND holder = ? AND attempts + 1 - started = ?"
)
_START_SEQ: Final = by_seq(_START)
_RENEW_SEQ: Final = by_seq(_RENEW)
_SETTLE: Final = {
    COMPLETED: (
        "UPDATE deliveries SET state = 1, holder = NULL, started = 0"
        " WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
        " AND state = 0 AND holder = ? AND attempts + 1 - started = ?"
    ),
    RESCHEDULED: (
        "UPDATE deliveries SET holder = NULL, due = ?, started = 0"
        " WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
        " AND state = 0 AND holder = ? AND attempts + 1 - started = ?"
    ),
    RELEASED: (
        "UPDATE deliveries SET holder = NULL, attempts = attempts - started, started = 0"
        " WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
        " AND state = 0 AND holder = ? AND attempts + 1 - started = ?"
    ),
    DEAD_LETTERED: (
        "UPDATE deliveries SET state = 2, holder = NULL, started = 0,"
        " holds_key = (? AND key IS NOT NULL)"
        " WHERE event_seq = (SELECT seq FROM events WHERE id = ?) AND receiver_id = ?"
        " AND state = 0 AND holder = ? AND attempts + 1 - started = ?"
        " RETURNING event_seq"
    ),
}
_SETTLE_SEQ: Final = {kind: by_seq(statement) for kind, statement in _SETTLE.items()}
# The same, a chunk of claims per statement: (seq, receiver id, attempt[, due]) rows,
# then the holder (see ``update_rows``). A claim matches as in the forms above.
# The same, a chunk of claims per statement: (seq, receiver id, attempt[, due]) rows,
# then the holder (see ``update_rows``); a claim matches as in the forms above.
STARTS: Final = many(
    "UPDATE deliveries SET attempts = attempts + 1 - started, started = 1"
    " FROM {values} AS v WHERE deliveries.event_seq = v.column1"
    " AND deliveries.receiver_id = v.column2 AND deliveries.state = 0 AND deliveries.holder = ?"
    " AND deliveries.attempts + 1 - deliveries.started = v.column3",
    3,
)
SETTLES: Final = {
    COMPLETED: many(
        "UPDATE deliveries SET state = 1, holder = NULL, started = 0"
        " FROM {values} AS v WHERE deliveries.event_seq = v.column1"
        " AND deliveries.receiver_id = v.column2 AND deliveries.state = 0"
        " AND deliveries.holder = ? AND deliveries.attempts + 1 - deliveries.started = v.column3",
        3,
    ),
    RELEASED: many(
        "UPDATE deliveries SET holder = NULL, attempts = attempts - started, started = 0"
        " FROM {values} AS v WHERE deliveries.event_seq = v.column1"
        " AND deliveries.receiver_id = v.column2 AND deliveries.state = 0"
        " AND deliveries.holder = ? AND deliveries.attempts + 1 - deliveries.started = v.column3",
        3,
    ),
    RESCHEDULED: many(
        "UPDATE deliveries SET holder = NULL, due = v.column4, started = 0"
        " FROM {values} AS v WHERE deliveries.event_seq = v.column1"
        " AND deliveries.receiver_id = v.column2 AND deliveries.state = 0"
        " AND deliveries.holder = ? AND deliveries.attempts + 1 - deliveries.started = v.column3",
        4,
    ),
}
TAKE_LEASES: Final = many(
    "UPDATE deliveries SET holder = ?, lease_until = ?, started = 0 FROM {values} AS v"
    " WHERE deliveries.event_seq = v.column1 AND deliveries.receiver_id = v.column2",
    2,
)
_TAKE_LEASES_STARTED: Final = many(
    "UPDATE deliveries SET holder = ?, lease_until = ?, attempts = attempts + 1, started = 1"
    " FROM {values} AS v"
    " WHERE deliveries.event_seq = v.column1 AND deliveries.receiver_id = v.column2",
    2,
)
_INSERT_LETTER: Final = (  # one letter per delivery: REPLACE drops an older one on either key
    "INSERT OR REPLACE INTO dead_letters"
    " (id, event_seq, receiver_id, attempts, error_type, error_message, failed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_RELEASE_ALL: Final = (
    "UPDATE deliveries SET holder = NULL, attempts = attempts - started, started = 0"
    " WHERE holder = ? AND state = 0"
)
_EXPIRE_LEASES_OF: Final = (
    "UPDATE deliveries SET lease_until = min(lease_until, ?) WHERE holder = ? AND state = 0"
)

# -- listings
_LEASES: Final = (
    "SELECT e.id, e.name, d.receiver_id, d.key, d.attempts + 1 - d.started, d.holder,"
    " d.lease_until"
    " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
    " WHERE d.holder IS NOT NULL AND d.state = 0 ORDER BY d.lease_until, d.event_seq"
)
_BACKLOG: Final = (
    "SELECT d.receiver_id, CASE WHEN d.state = 2 THEN 3 WHEN d.holder IS NOT NULL THEN 2"
    " WHEN d.due > ? THEN 1 ELSE 0 END AS kind, count(*), min(e.published_at)"
    " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
    " WHERE d.state != 1 GROUP BY d.receiver_id, kind"
)
_HELD_KEYS: Final = (
    "SELECT d.receiver_id, d.key, e.id FROM deliveries AS d JOIN events AS e"
    " ON e.seq = d.event_seq WHERE d.state = 2 AND d.holds_key = 1 ORDER BY d.event_seq"
)
_RELEASE_KEY: Final = (
    "UPDATE deliveries SET holds_key = 0 WHERE receiver_id = ? AND key = ? AND holds_key = 1"
)

# -- pruning: the done deliveries of old events, oldest first, by walking events in seq order
_OLD_EVENTS: Final = (
    "SELECT seq FROM events WHERE seq > ? AND published_at < ? ORDER BY seq LIMIT ?"
)
_PRUNE_DONE_OF: Final = (  # at most ?2 (all for -1) of one event's done deliveries
    "DELETE FROM deliveries WHERE event_seq = ?1 AND state = 1 AND receiver_id IN"
    " (SELECT receiver_id FROM deliveries WHERE event_seq = ?1 AND state = 1"
    " ORDER BY receiver_id LIMIT ?2)"
)
_DELETE_PRUNED_EVENT: Final = (  # left with no delivery and no dead letter
    "DELETE FROM events WHERE seq = ?1"
    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)"
    " AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE event_seq = ?1)"
)
_EVENT_POSITION: Final = (  # the newest seq ever given (see RAISE_HEAD)
    "SELECT max(coalesce((SELECT max(seq) FROM events), 0), (SELECT head FROM event_head))"
)
_EVENTS_AFTER: Final = "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
_FOREVER: Final = 2**63 - 1


def _durable(request: tuple[Any, ...]) -> bool:
    """Whether ``request`` commits with the configured ``synchronous``: it adds events or
    dead letters (the rest commit with ``NORMAL``)."""
    kind = request[0]
    if kind == SETTLE:
        return any(outcome[0] == DEAD_LETTERED for outcome in request[3])
    return kind in (PUBLISH, APPEND, DEAD)


def parse_consumer_id(text: str) -> ConsumerId:
    """The ``ConsumerId`` that ``str(consumer)`` printed: ``host:pid:token``."""
    host, pid, token = text.rsplit(":", 2)
    return ConsumerId(host, int(pid), token)


def _routes_json(routes: Sequence[Route]) -> bytes:
    return orjson.dumps([[route.pattern, route.receiver_id] for route in routes])


def _receivers(routes: bytes) -> list[str]:
    return sorted({receiver for _, receiver in orjson.loads(routes)})


def _publish_order(row: tuple[Any, ...]) -> tuple[int, str]:
    return row[0], row[1]  # event seq, then receiver id


def _already_stored(conn: sqlite3.Connection, events: list[tuple[Any, ...]]) -> str:
    """Which event of a failed insert was stored before it (or is repeated in it); the
    rows the insert made before it failed are still there, with seqs from its first."""
    seen: set[str] = set()
    first = events[0][0]
    for _, event_id, *_ in events:
        if event_id in seen or conn.execute(_STORED_BEFORE, (event_id, first)).fetchone():
            return f"event {event_id!r} is already stored; nothing of this publish was added"
        seen.add(event_id)
    return "an event is already stored; nothing of this publish was added"


class LeasedSQL:
    """The statements and queries of one leased-queue connection.

    Args:
        conn: The connection, opened with no implicit transactions; it stays its
            opener's to close.
        journal: The journal's SQL on the same connection, for what both share.
        synchronous: The durability of publishing and dead-lettering; claims,
            renewals and other settlements commit with ``NORMAL`` (no fsync: a
            power loss may forget the last of them, which costs a delivery run
            again or an attempt uncounted, never an event).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        journal: JournalSQL,
        *,
        synchronous: str,
        alone: bool = False,
    ) -> None:
        self.journal = journal
        self.synchronous = synchronous
        self.alone = alone
        """No other process writes the file (an exclusive store): the next event seq is
        kept here instead of read at each write."""
        self._conn = conn
        self._last_routes = b""
        self._last_receivers: frozenset[str] = frozenset()

    # -- group-committed writes ------------------------------------------------------------

    def write(self, requests: Sequence[tuple[Any, ...]]) -> bool:
        """Write ``requests`` in one transaction; fill their ``out``. Besides ``PUBLISH`` and
        ``SETTLE``, the journal's requests (``APPEND``, ``START``, ``COMPLETE``, ``DEAD``).
        Returns whether it committed with the configured ``synchronous`` (it held events
        or dead letters)."""
        # One pass: the journal's requests (which ``stage`` writes), the others in order,
        # whether the commit is durable, whether events are added (each takes a seq).
        journal: list[tuple[Any, ...]] = []
        others: list[tuple[Any, ...]] = []
        durable = adds = False
        for request in requests:
            kind = request[0]
            if kind < PUBLISH:
                journal.append(request)
                if kind in (APPEND, DEAD):
                    durable = adds = True
            else:
                others.append(request)
                if kind == PUBLISH:
                    durable = adds = True
                elif kind == SETTLE and not durable:
                    durable = _durable(request)
        conn = self._conn
        journal_sql = self.journal
        journal_sql.set_synchronous(self.synchronous if durable else "NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not adds:
                seq = 0
            elif self.alone:  # no other process writes: the next seq is the one after ours
                seq = journal_sql.next_seq
            else:
                seq = conn.execute(NEXT_SEQ).fetchone()[0]
            if journal:
                seq = journal_sql.stage(journal, seq)
            for request in others:
                if request[0] == PUBLISH:
                    claim = request[3] if len(request) > 3 else None
                    seq = self._publish(request[1], request[2], seq, claim)
                elif request[0] == SETTLE:
                    self._settle(*request[1:])
                elif request[0] == STARTED:
                    self._start(*request[1:])
            conn.execute("COMMIT")
        except BaseException:
            journal_sql.rollback()
            raise
        journal_sql.seqs.committed()
        if adds:
            journal_sql.next_seq = seq
        return durable

    def _publish(
        self,
        rows: Sequence[tuple[Any, ...]],
        out: list[bytes | None],
        seq: int,
        claim: tuple[str, int, int, int, int, list[tuple[int, str, bool]]] | None = None,
    ) -> int:
        conn = self._conn
        out.clear()
        adding = self.journal.seqs.adding.append
        events: list[tuple[Any, ...]] = []
        deliveries: list[tuple[Any, ...]] = []
        mine: frozenset[str] = frozenset()
        if claim is not None:
            holder, now, until, limit, start, claimed = claim
            claimed.clear()
            live = conn.execute(_ROUTES_OF_LIVE, (holder, now)).fetchone()
            if live is not None and limit > 0:
                mine = self._receivers_of(live[0])
        if not mine:
            for event_id, name, body, occurred, receiver_ids, idempotency_key, key in rows:
                if not self._stands(idempotency_key, occurred, body, out):
                    continue
                events.append((seq, event_id, name, body, occurred))
                adding((event_id, seq))
                deliveries += [(seq, receiver, key) for receiver in dict.fromkeys(receiver_ids)]
                seq += 1
            self._insert(events, deliveries, INSERT_DELIVERY, INSERT_DELIVERIES)
            return seq
        # Lease to ``holder`` what it runs, in publish order, up to ``limit``: claimable
        # unless an earlier delivery of its (receiver, key) is unfinished, stored or in this
        # publish; the first ``start`` of them with their first attempt started.
        lanes: set[tuple[str, str]] = set()
        for index, (
            event_id,
            name,
            body,
            occurred,
            receiver_ids,
            idempotency_key,
            key,
        ) in enumerate(rows):
            if not self._stands(idempotency_key, occurred, body, out):
                continue
            events.append((seq, event_id, name, body, occurred))
            adding((event_id, seq))
            for receiver in sorted(set(receiver_ids)):  # in a claim's order
                if receiver in mine and len(claimed) < limit:
                    if key is not None:
                        lane = (receiver, key)
                        free = lane not in lanes and not conn.execute(_LANE_BUSY, lane).fetchone()
                        lanes.add(lane)
                    else:
                        free = True
                    if free:
                        begun = len(claimed) < start
                        claimed.append((index, receiver, begun))
                        deliveries.append((seq, receiver, key, holder, until, begun, begun))
                        continue
                elif key is not None:
                    lanes.add((receiver, key))
                deliveries.append((seq, receiver, key, None, 0, 0, 0))
            seq += 1
        self._insert(events, deliveries, _INSERT_LEASED, _INSERT_LEASED_MANY)
        return seq

    def _stands(
        self, idempotency_key: str | None, occurred: Any, body: Any, out: list[bytes | None]
    ) -> bool:
        """Whether an event of the publish is added: a repeat of a recorded idempotency key
        is not, and ``out`` gets the key's first event (``None`` for one that is added)."""
        if idempotency_key is not None:
            conn = self._conn
            if not conn.execute(_CLAIM_KEY, (idempotency_key, occurred, body)).rowcount:
                out.append(conn.execute(_KEY_BODY, (idempotency_key,)).fetchone()[0])
                return False
        out.append(None)
        return True

    def _insert(
        self,
        events: list[tuple[Any, ...]],
        deliveries: list[tuple[Any, ...]],
        single: str,
        multi: dict[int, str],
    ) -> None:
        conn = self._conn
        if events:  # a repeated event id raises IntegrityError: the whole request goes
            try:
                insert_rows(conn, INSERT_EVENT, INSERT_EVENTS, events)
            except sqlite3.IntegrityError as exc:
                raise sqlite3.IntegrityError(_already_stored(conn, events)) from exc
        if deliveries:
            insert_rows(conn, single, multi, deliveries)

    def _receivers_of(self, routes: bytes) -> frozenset[str]:
        """The receiver ids of a registration's routes (the last one's, cached)."""
        if routes != self._last_routes:
            self._last_routes = routes
            self._last_receivers = frozenset(_receivers(routes))
        return self._last_receivers

    def _settle(
        self,
        holder: str,
        now: int,
        outcomes: Sequence[tuple[int, str, str, int, Any]],
        out: list[int],
    ) -> None:
        """Apply ``outcomes``; ``out`` gets the indexes of those whose claim is not held.

        Outcomes of events whose seq is known go a chunk per statement, by kind; when a
        chunk changes fewer rows than it holds (a lease was lost), its kind is undone
        and applied one by one, to tell which. Dead letters, and the rest, one by one."""
        seqs = self.journal.seqs.seqs
        out.clear()
        batches: dict[int, tuple[list[int], list[tuple[Any, ...]]]] = {}
        one_by_one: list[int] = []
        for index, (kind, event_id, receiver_id, attempt, argument) in enumerate(outcomes):
            seq = seqs.get(event_id)
            if seq is None or kind == DEAD_LETTERED:
                one_by_one.append(index)
                continue
            indexes, rows = batches.setdefault(kind, ([], []))
            indexes.append(index)
            if kind == RESCHEDULED:
                rows.append((seq, receiver_id, attempt, now + argument))
            else:
                rows.append((seq, receiver_id, attempt))
        for kind, (indexes, rows) in batches.items():
            if not self._all_held(SETTLES[kind], rows, holder):
                one_by_one += indexes
        for index in sorted(one_by_one):
            if not self._settle_one(holder, now, outcomes[index]):
                out.append(index)

    def _settle_one(self, holder: str, now: int, outcome: tuple[int, str, str, int, Any]) -> bool:
        """Apply one outcome; whether its claim was held."""
        conn = self._conn
        kind, event_id, receiver_id, attempt, argument = outcome
        seq = self.journal.seqs.seqs.get(event_id)
        held: tuple[object, ...]
        if seq is None:
            statement, held = _SETTLE[kind], (event_id, receiver_id, holder, attempt)
        else:  # by primary key, without the lookup by id
            statement, held = _SETTLE_SEQ[kind], (seq, receiver_id, holder, attempt)
        if kind in (COMPLETED, RELEASED):
            return bool(conn.execute(statement, held).rowcount)
        if kind == RESCHEDULED:
            return bool(conn.execute(statement, (now + argument, *held)).rowcount)
        holds_key, letter = argument
        row = conn.execute(statement, (holds_key, *held)).fetchone()
        if row is None:
            return False
        conn.execute(_INSERT_LETTER, (letter[0], row[0], receiver_id, *letter[1:]))
        return True

    def _all_held(
        self, statements: dict[int, str], rows: list[tuple[Any, ...]], holder: str
    ) -> bool:
        """Run ``statements`` (a ``many``) over claims' ``rows`` in a savepoint: keep it and
        return True if it changed every row (each claim held), else undo it."""
        conn = self._conn
        conn.execute("SAVEPOINT claims")
        try:
            held = update_rows(conn, statements, rows, (holder,)) == len(rows)
        except BaseException:
            conn.execute("ROLLBACK TO claims")
            conn.execute("RELEASE claims")
            raise
        if not held:
            conn.execute("ROLLBACK TO claims")
        conn.execute("RELEASE claims")
        return held

    def _start(self, holder: str, claims: Sequence[tuple[str, str, int]], out: list[int]) -> None:
        """Count claims' attempts as started; ``out`` gets the indexes of those not held
        (as ``_settle`` goes: a chunk per statement, one by one to tell a lost one)."""
        conn = self._conn
        seqs = self.journal.seqs.seqs
        out.clear()
        indexes: list[int] = []
        rows: list[tuple[Any, ...]] = []
        one_by_one: list[int] = []
        for index, (event_id, receiver_id, attempt) in enumerate(claims):
            seq = seqs.get(event_id)
            if seq is None:
                one_by_one.append(index)
            else:
                indexes.append(index)
                rows.append((seq, receiver_id, attempt))
        if rows and not self._all_held(STARTS, rows, holder):
            one_by_one += indexes
        for index in sorted(one_by_one):
            event_id, receiver_id, attempt = claims[index]
            seq = seqs.get(event_id)
            if seq is None:
                changed = conn.execute(_START, (event_id, receiver_id, holder, attempt)).rowcount
            else:
                changed = conn.execute(_START_SEQ, (seq, receiver_id, holder, attempt)).rowcount
            if not changed:
                out.append(index)

    # -- consumers -------------------------------------------------------------------------

    def register(
        self, consumer: ConsumerId, routes: Sequence[Route], now: int, expires: int
    ) -> None:
        """Record ``consumer`` live until ``expires``, running ``routes``; forget expired ones.

        Records, when it can tell (``_procs``), the pid namespace and start time of
        the consumer's process, so that another process of this host can see it die."""
        with self._transaction():
            self._conn.execute(_FORGET_EXPIRED, (now,))
            pid_ns, started = identity_of(consumer.pid) or (None, None)
            self._conn.execute(
                _REGISTER,
                (
                    str(consumer),
                    consumer.host,
                    consumer.pid,
                    _routes_json(routes),
                    now,
                    expires,
                    pid_ns,
                    started,
                ),
            )

    def heartbeat(self, consumer: ConsumerId, now: int, expires: int) -> bool:
        """Keep a live ``consumer`` live until ``expires``; False if it is not live."""
        with self._transaction():
            return bool(self._conn.execute(_HEARTBEAT, (str(consumer), now, expires)).rowcount)

    def unregister(self, consumer: ConsumerId) -> int:
        """Forget ``consumer``; release what it holds, uncounted; return how many."""
        holder = str(consumer)
        with self._transaction():
            self._conn.execute(_UNREGISTER, (holder,))
            return int(self._conn.execute(_RELEASE_ALL, (holder,)).rowcount)

    def consumers(self, now: int) -> list[Consumer]:
        """Live consumers in registration order, with how many deliveries each holds."""
        conn = self._conn
        conn.execute("BEGIN")  # one snapshot for both reads
        try:
            rows = conn.execute(_LIVE, (now,)).fetchall()
            held = dict(conn.execute(_LEASE_COUNTS).fetchall())
        finally:
            conn.execute("COMMIT")
        return [
            Consumer(
                id=parse_consumer_id(text),
                routes=tuple(Route(pattern, receiver) for pattern, receiver in orjson.loads(table)),
                registered_at=from_us(registered),
                last_seen=from_us(seen),
                expires_at=from_us(expires),
                leases=held.get(text, 0),
            )
            for text, table, registered, seen, expires in rows
        ]

    # -- claims and renewals ---------------------------------------------------------------

    def claim(
        self,
        consumer: ConsumerId,
        limit: int,
        now: int,
        until: int,
        *,
        reclaim_dead_pids: bool,
        known: Mapping[str, Event] | None = None,
        start: int = 0,
    ) -> list[tuple[Event, str, int, bool, bool]] | None:
        """Lease up to ``limit`` claimable deliveries until ``until``, in publish order.

        Returns ``(event, receiver id, attempt, lease expired, started)`` per claim, or
        ``None`` when ``consumer`` is not live. ``start``: count as started, in the same
        transaction, the attempts of the first ``start`` claims whose lease did not run
        out (``started`` says which). ``reclaim_dead_pids``: first end
        the leases of consumers on this host whose process is gone. ``known``: events
        by id that this process published, used as they are instead of decoding their
        stored copy (equal to it, and a third of a claim's cost).
        """
        conn = self._conn
        holder = str(consumer)
        self.journal.set_synchronous("NORMAL")
        with self._transaction():
            row = conn.execute(_ROUTES_OF_LIVE, (holder, now)).fetchone()
            if row is None:
                return None
            if limit <= 0:
                return []
            if reclaim_dead_pids:
                self._reclaim_dead_pids(consumer, now)
            rows: list[Any] = []
            parts = 0
            for receiver in _receivers(row[0]):
                for query in (CLAIM, CLAIM_EXPIRED):
                    found = conn.execute(query, (receiver, now, limit)).fetchall()
                    if found:
                        rows += found
                        parts += 1
            if parts > 1:  # merge: the first ``limit`` of them all, in publish order
                rows.sort(key=_publish_order)
                del rows[limit:]
            begun = [False] * len(rows)
            if start > 0:
                for index, found_row in enumerate(rows):
                    if not found_row[3]:
                        begun[index] = True
                        start -= 1
                        if not start:
                            break
            leases = [(r[0], r[1]) for r in rows]
            if True in begun:
                pairs = list(zip(leases, begun, strict=True))
                started_leases = [lease for lease, b in pairs if b]
                update_rows(conn, _TAKE_LEASES_STARTED, started_leases, before=(holder, until))
                leases = [lease for lease, b in pairs if not b]
            update_rows(conn, TAKE_LEASES, leases, before=(holder, until))
        claims = []
        event: Event | None = None
        last_seq = None
        keep = self.journal.seqs.keep
        for (seq, receiver_id, attempts, expired, event_id, name, body, published), b in zip(
            rows, begun, strict=True
        ):
            if seq != last_seq:
                last_seq = seq
                keep(event_id, seq)
                event = known.get(event_id) if known is not None else None
                if event is None:
                    event, _ = decode_event(event_id, name, body, published)
            assert event is not None
            claims.append((event, receiver_id, attempts + 1, bool(expired), b))
        return claims

    def _reclaim_dead_pids(self, consumer: ConsumerId, now: int) -> None:
        """End the leases and registrations of this host's consumers whose process is gone."""
        conn = self._conn
        others = conn.execute(_OTHERS_ON_HOST, (consumer.host, os.getpid(), now)).fetchall()
        for text, pid, pid_ns, started in others:
            if is_gone(pid, pid_ns, started):
                conn.execute(_EXPIRE_LEASES_OF, (now, text))
                conn.execute(_UNREGISTER, (text,))

    def renew(
        self, consumer: ConsumerId, claims: Sequence[tuple[str, str, int]], until: int
    ) -> list[int]:
        """Extend the leases held of ``(event id, receiver id, attempt)``; indexes of the rest."""
        conn = self._conn
        holder = str(consumer)
        self.journal.set_synchronous("NORMAL")
        lost = []
        seqs = self.journal.seqs.seqs
        with self._transaction():
            for index, (event_id, receiver_id, attempt) in enumerate(claims):
                seq = seqs.get(event_id)
                if seq is None:
                    held = (until, event_id, receiver_id, holder, attempt)
                    changed = conn.execute(_RENEW, held).rowcount
                else:
                    changed = conn.execute(
                        _RENEW_SEQ, (until, seq, receiver_id, holder, attempt)
                    ).rowcount
                if not changed:
                    lost.append(index)
        return lost

    # -- listings --------------------------------------------------------------------------

    def leases(self) -> list[Lease]:
        """Held deliveries by expiry, then publish order."""
        return [
            Lease(event_id, name, receiver_id, key, attempt, parse_consumer_id(holder), from_us(at))
            for event_id, name, receiver_id, key, attempt, holder, at in self._conn.execute(
                _LEASES
            ).fetchall()
        ]

    def backlog(self, now: int) -> list[Backlog]:
        """Per receiver: ready, scheduled, leased and dead deliveries, and the oldest event."""
        counts: dict[str, list[int]] = {}
        oldest: dict[str, int] = {}
        for receiver_id, kind, count, first in self._conn.execute(_BACKLOG, (now,)).fetchall():
            counts.setdefault(receiver_id, [0, 0, 0, 0])[kind] += count
            if kind != 3 and (receiver_id not in oldest or first < oldest[receiver_id]):
                oldest[receiver_id] = first
        return [
            Backlog(
                receiver_id,
                ready,
                scheduled,
                leased,
                dead,
                from_us(oldest[receiver_id]) if receiver_id in oldest else None,
            )
            for receiver_id, (ready, scheduled, leased, dead) in sorted(counts.items())
        ]

    def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the earliest dead event holding it}``."""
        held: dict[tuple[str, str], str] = {}
        for receiver_id, key, event_id in self._conn.execute(_HELD_KEYS).fetchall():
            held.setdefault((receiver_id, key), event_id)
        return held

    def release_key(self, receiver_id: str, key: str) -> bool:
        """Stop the dead letters of ``(receiver_id, key)`` from holding it."""
        self.journal.set_synchronous(self.synchronous)
        with self._transaction():
            return bool(self._conn.execute(_RELEASE_KEY, (receiver_id, key)).rowcount)

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        """Dead letters ordered by ``failed_at``, at most ``limit`` (-1: all)."""
        return self.journal.dead_letters(limit)

    # -- pruning ---------------------------------------------------------------------------

    def prune(self, cutoff: int | None, limit: int | None) -> int:
        """Delete at most ``limit`` (all when ``None``) done deliveries of events older than
        ``cutoff`` (µs), oldest first, and the events left with no delivery and no dead
        letter; the events of at most ``PRUNE_CHUNK`` per transaction."""
        conn = self._conn
        before = _FOREVER if cutoff is None else cutoff
        removed, after = 0, 0
        self.journal.set_synchronous(self.synchronous)
        while limit is None or removed < limit:
            seqs = [row[0] for row in conn.execute(_OLD_EVENTS, (after, before, PRUNE_CHUNK))]
            if not seqs:
                break
            with self._transaction():
                conn.execute(RAISE_HEAD)  # the seqs of the events deleted are never given again
                for seq in seqs:
                    room = -1 if limit is None else limit - removed
                    if room == 0:
                        break
                    removed += conn.execute(_PRUNE_DONE_OF, (seq, room)).rowcount
                    conn.execute(_DELETE_PRUNED_EVENT, (seq,))
                    after = seq
            if len(seqs) < PRUNE_CHUNK:
                break
        return removed

    # -- the tail of events ----------------------------------------------------------------

    def event_position(self) -> int:
        """The seq of the newest event ever added (0 before any): seqs are never reused."""
        return int(self._conn.execute(_EVENT_POSITION).fetchone()[0])

    def events_after(self, position: int, limit: int) -> tuple[list[Event], int, int]:
        """At most ``limit`` events after ``position``, the position after them, and how
        many after ``position`` were pruned before this read; in one read transaction."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            rows = conn.execute(_EVENTS_AFTER, (position, limit)).fetchall()
            head = int(conn.execute(_EVENT_POSITION).fetchone()[0])
        finally:
            conn.execute("COMMIT")
        end = max(head, position) if len(rows) < limit else int(rows[-1][0])
        return [Event.from_json(body) for _, body in rows], end, end - position - len(rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn, self.journal)


class _Transaction:
    """``BEGIN IMMEDIATE`` on entry; COMMIT on a clean exit, else roll back and re-raise."""

    __slots__ = ("_conn", "_journal")

    def __init__(self, conn: sqlite3.Connection, journal: JournalSQL) -> None:
        self._conn = conn
        self._journal = journal

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            self._journal.rollback()
            return
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            self._journal.rollback()
            raise
