"""PostgresStore's writes: publishing (also through a caller's connection), claims,
starts, renewals and settlements.

``write_events`` is the one piece of SQL that adds events and their deliveries.
It takes any DB-API cursor whose driver adapts Python lists to arrays (psycopg
3, and Django's cursor on it) and never commits: the store runs it in its own
transactions, and ``PostgresStore.publish_in`` runs it in the caller's, so the
events commit (or roll back) with the caller's data: the outbox.

How positions stay in commit order: an event's ``seq`` (its position for
``events_after``, and the publish order claims follow) is taken from the one
row of ``event_head``, updated by the publishing transaction just before it
inserts its events. The row lock it holds until it commits makes the
transactions that publish take turns from there to their commit, so a larger
seq always commits later: a reader that saw seq 12 can never later see a seq
11 appear. A sequence would let two publishers commit out of order, and a tail
(or a key's next delivery) would skip the one that committed last. The turn is
short for the store's own transactions (the inserts and the commit, with the
publishes of many tasks grouped in one); an outbox publish holds it until the
caller's transaction ends, which is why ``publish_in`` is best called late in
it. Idempotency keys are claimed before the turn, through the UNIQUE index
(``INSERT ... ON CONFLICT DO NOTHING``), in key order, so concurrent publishers
of the same keys never deadlock.

A claim is held by ``(holder, attempt)``: ``attempts`` counts the attempts
started, and ``started`` says whether the holder started its own, so the held
claim's attempt is ``attempts + 1`` until it starts and ``attempts`` after.
"""

from __future__ import annotations

import base64
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import orjson

from .._event import Event
from ._postgres_schema import Statements
from ._protocol import ConsumerId, Route

__all__ = [
    "APPEND",
    "COMPLETED",
    "DEAD_LETTERED",
    "PUBLISH",
    "RELEASED",
    "RESCHEDULED",
    "SETTLE",
    "START",
    "Cursor",
    "EventRow",
    "HeldDelivery",
    "QueueWrites",
    "complete_in",
    "complete_in_async",
    "publish_steps",
    "write_events",
    "write_events_async",
]

PUBLISH, APPEND, SETTLE, START = range(4)  # the kinds of write request
COMPLETED, RESCHEDULED, RELEASED, DEAD_LETTERED = range(4)  # the kinds of outcome

EventRow = tuple[str, str, bytes, datetime, Sequence[str], str | None, str | None]
"""``(event id, name, body, occurred_at, receiver ids, idempotency key, ordering key)``."""


class Cursor(Protocol):
    """What ``write_events`` needs of a cursor: DB-API ``execute`` and ``fetchall``."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...


def event_row(event: Event, receiver_ids: Sequence[str], idempotency_key: str | None) -> EventRow:
    return (
        event.id,
        event.name,
        event.to_json(),
        event.occurred_at,
        receiver_ids,
        idempotency_key,
        event.key,
    )


Step = tuple[str, Sequence[Any]]
"""A statement and its parameters; the answer sent back is its rows (a list)."""


def publish_steps(
    statements: Statements, rows: Sequence[EventRow], *, always: bool = False
) -> Generator[Step, list[Any], list[bytes | None]]:
    """The statements that add ``rows``, as a generator (no I/O of its own): each step
    is sent the rows its statement returned. ``write_events`` and
    ``write_events_async`` drive it on a sync or an async cursor."""
    out: list[bytes | None] = [None] * len(rows)
    first: dict[str, int] = {}  # idempotency key -> index of its first row
    for index, row in enumerate(rows):
        key = row[5]
        if key is not None and key not in first:
            first[key] = index
    won: set[str] = set()
    bodies: dict[str, bytes] = {}
    if first:
        keys = sorted(first)
        found = yield (
            statements.claim_keys,
            (keys, [rows[first[k]][3] for k in keys], [rows[first[k]][2] for k in keys]),
        )
        won = {each[0] for each in found}
        lost = [key for key in keys if key not in won]
        if lost and not always:
            found = yield (statements.key_bodies, (lost,))
            bodies = {key: bytes(body) for key, body in found}
    adding: list[EventRow] = []
    for index, row in enumerate(rows):
        key = row[5]
        if always or key is None or (key in won and first[key] == index):
            adding.append(row)
        elif key in bodies:
            out[index] = bodies[key]
        else:  # repeated within ``rows`` after its first, which this call added
            out[index] = rows[first[key]][2]
    if not adding:
        return out
    events: list[tuple[str, str, str, datetime, str | None]] = []
    deliveries: list[tuple[int, str, str | None]] = []
    for index, row in enumerate(adding, 1):
        events.append((row[0], row[1], base64.b64encode(row[2]).decode(), row[3], row[6]))
        deliveries.extend((index, receiver_id, row[6]) for receiver_id in dict.fromkeys(row[4]))
    yield (
        statements.publish,
        (
            len(adding),
            len(adding),
            orjson.dumps(events).decode(),
            orjson.dumps(deliveries).decode(),
            bool(deliveries),
            statements.channel,
        ),
    )
    return out


def write_events(
    cursor: Cursor, statements: Statements, rows: Sequence[EventRow], *, always: bool = False
) -> list[bytes | None]:
    """Add each event of ``rows`` with one ready delivery per distinct receiver id.

    Returns, per row, ``None`` when it was added, or the body of its idempotency
    key's first event (recorded before, or earlier in ``rows``) when it was not.
    ``always`` (the journal's ``append``): add every event, recording a key only
    if it is new. Raises the driver's error on a duplicate event id; the
    transaction is then the caller's to roll back. Notifies the schema's channel
    when deliveries were added (delivered at commit, and not at all on rollback).
    """
    steps = publish_steps(statements, rows, always=always)
    try:
        query, params = next(steps)
        while True:
            cursor.execute(query, params)
            answer = cursor.fetchall() if _returns_rows(cursor) else []
            query, params = steps.send(list(answer))
    except StopIteration as done:
        result: list[bytes | None] = done.value
        return result


async def write_events_async(
    cursor: Any, statements: Statements, rows: Sequence[EventRow]
) -> list[bytes | None]:
    """``write_events`` on an async cursor (psycopg's ``AsyncCursor``)."""
    steps = publish_steps(statements, rows)
    try:
        query, params = next(steps)
        while True:
            await cursor.execute(query, params)
            answer = await cursor.fetchall() if _returns_rows(cursor) else []
            query, params = steps.send(list(answer))
    except StopIteration as done:
        result: list[bytes | None] = done.value
        return result


class HeldDelivery(Protocol):
    """What ``complete_in`` needs to know of the delivery a receiver runs
    (``aevents.current_delivery()`` gives it)."""

    @property
    def event(self) -> Event: ...

    @property
    def receiver_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...


def complete_in(cursor: Cursor, statements: Statements, delivery: HeldDelivery) -> bool:
    """Mark ``delivery`` done on ``cursor``, in the caller's transaction, if the attempt
    running it still holds it; whether it did. Nothing is committed here."""
    cursor.execute(
        statements.complete_in, (delivery.event.id, delivery.receiver_id, delivery.attempt)
    )
    return bool(cursor.fetchall())


async def complete_in_async(cursor: Any, statements: Statements, delivery: HeldDelivery) -> bool:
    """``complete_in`` on an async cursor (psycopg's ``AsyncCursor``)."""
    await cursor.execute(
        statements.complete_in, (delivery.event.id, delivery.receiver_id, delivery.attempt)
    )
    return bool(await cursor.fetchall())


def _returns_rows(cursor: Any) -> bool:
    return getattr(cursor, "description", None) is not None


# -- claims, starts, renewals, settlements --------------------------------------------------

# The claim held: this holder, this attempt (``attempts + 1`` until it is started).
_HELD: Final = (
    " WHERE d.event_seq = c.seq AND d.receiver_id = c.receiver_id AND d.state = 0"
    " AND d.holder = %s AND d.attempts + (NOT d.started)::int = c.attempt"
)
# The same, or done by this holder's attempt in the receiver's own transaction
# (``PostgresStore.complete_in``, which keeps the holder): renewing it changes nothing
# that matters, and settling it only lets go of it, whatever the outcome, as the
# receiver's transaction committed its effects and the completion together.
_HELD_OR_DONE_HERE: Final = _HELD.replace("d.state = 0", "d.state IN (0, 1)")
# The claims, each with its event's seq, looked up first in a materialized CTE: joined to
# the deliveries by their key, the work grows with the batch. Written as one join, the
# planner hash-joined every claim with every held delivery of the same receiver and
# attempt and then looked up an event per pair: quadratic (64 claims: 4,096 lookups,
# about 6 ms a statement, most of a fleet's time on PostgreSQL). Each seq is a subquery
# on the events' unique index, one probe per claim: joined, a table whose statistics are
# stale (a fresh store, or one that grew fast since autovacuum last analysed it) was
# hash-joined whole, a scan of every event per statement (8 ms at 8,000 events). An id
# with no event gives a NULL seq, which matches no delivery.
_CLAIMS: Final = (
    "WITH c AS MATERIALIZED (SELECT c.v ->> 0 AS event_id, c.v ->> 1 AS receiver_id,"
    " (c.v ->> 2)::int AS attempt, c.i, (SELECT e.seq FROM {s}.events AS e"
    " WHERE e.id = c.v ->> 0) AS seq FROM jsonb_array_elements(%s::jsonb)"
    " WITH ORDINALITY AS c(v, i)) "
)
_QUEUE: Final = {
    # (constants only are joined here: the values are all parameters)
    "start": (
        _CLAIMS  # noqa: S608
        + "UPDATE {s}.deliveries AS d SET attempts = d.attempts + (NOT d.started)::int,"
        + " started = true FROM c"
        + _HELD
        + " RETURNING c.i"
    ),
    "renew": _CLAIMS  # noqa: S608
    + "UPDATE {s}.deliveries AS d SET lease_until = %s FROM c"
    + _HELD_OR_DONE_HERE
    + " RETURNING c.i",
    # One statement settles every outcome of a request: kinds 0 completed, 1
    # rescheduled (to ``due``), 2 released (uncounted if started), 3 dead-lettered.
    # A delivery done in the receiver's transaction (state 1) stays done: its holder
    # is let go of, nothing else changes. ``d.state`` in SET is the value before.
    "settle": (
        "WITH c AS MATERIALIZED (SELECT c.v ->> 0 AS event_id, c.v ->> 1 AS receiver_id,"  # noqa: S608
        " (c.v ->> 2)::int AS attempt, (c.v ->> 3)::smallint AS kind,"
        " (c.v ->> 4)::timestamptz AS due, (c.v ->> 5)::boolean AS holds, c.i,"
        " (SELECT e.seq FROM {s}.events AS e WHERE e.id = c.v ->> 0) AS seq"
        " FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS c(v, i)) "
        "UPDATE {s}.deliveries AS d SET"
        " state = CASE WHEN d.state = 1 THEN 1 WHEN c.kind = 0 THEN 1 WHEN c.kind = 3 THEN 2"
        " ELSE 0 END, holder = NULL,"
        " due = CASE WHEN c.kind = 1 AND d.state = 0 THEN c.due ELSE d.due END,"
        " attempts = CASE WHEN c.kind = 2 AND d.state = 0 THEN d.attempts - d.started::int"
        " ELSE d.attempts END,"
        " started = false,"
        " holds_key = CASE WHEN c.kind = 3 AND d.state = 0 THEN c.holds AND d.key IS NOT NULL"
        " ELSE d.holds_key END FROM c"
        + _HELD_OR_DONE_HERE
        + " RETURNING c.i, d.event_seq, d.key IS NOT NULL, d.state"
    ),
    "drop_letters_of": (
        "DELETE FROM {s}.dead_letters AS l USING unnest(%s::bigint[], %s::text[])"
        " AS g(event_seq, receiver_id)"
        " WHERE (l.event_seq = g.event_seq AND l.receiver_id = g.receiver_id)"
        " OR l.id = ANY(%s::text[])"
    ),
    "insert_letters": (
        "INSERT INTO {s}.dead_letters"
        " (id, event_seq, receiver_id, attempts, error_type, error_message, failed_at)"
        " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::int[], %s::text[],"
        " %s::text[], %s::timestamptz[])"
    ),
}


def _claims_json(claims: Sequence[tuple[str, str, int]]) -> str:
    """``[[event id, receiver id, attempt], ...]``: one string to send (see ``publish``)."""
    return orjson.dumps(claims).decode()


def routes_json(routes: Sequence[Route]) -> bytes:
    return orjson.dumps([[route.pattern, route.receiver_id] for route in routes])


class QueueWrites:
    """The statements that change deliveries, run on a cursor inside a transaction that
    the caller opens and commits (``PostgresSession``)."""

    def __init__(self, statements: Statements) -> None:
        self.statements = statements
        self._sql = {name: statements.render(text) for name, text in _QUEUE.items()}
        self._sql["claim"] = statements.render(_CLAIM)

    def write(self, cursor: Cursor, requests: Sequence[tuple[Any, ...]]) -> bool:
        """Run write ``requests`` on ``cursor`` (in one transaction); fill their ``out``.
        Returns whether anything became claimable for others (worth a notification)."""
        wake = False
        publishes = [r for r in requests if r[0] in (PUBLISH, APPEND)]
        for request in requests:
            kind = request[0]
            if kind == SETTLE:
                wake |= self._settle(cursor, *request[1:])
            elif kind == START:
                self._start(cursor, *request[1:])
        # Publishes last: the turn on ``event_head`` they take lasts until the commit.
        for kind, rows, out in publishes:
            out[:] = write_events(cursor, self.statements, rows, always=kind == APPEND)
        return wake

    def _start(
        self, cursor: Cursor, holder: str, claims: Sequence[tuple[str, str, int]], out: list[int]
    ) -> None:
        cursor.execute(self._sql["start"], (_claims_json(claims), holder))
        held = {row[0] for row in cursor.fetchall()}
        out[:] = [index for index in range(len(claims)) if index + 1 not in held]

    def _settle(
        self,
        cursor: Cursor,
        holder: str,
        now: datetime,
        outcomes: Sequence[tuple[int, str, str, int, Any]],
        out: list[int],
    ) -> bool:
        rows = [
            (
                event_id,
                receiver_id,
                attempt,
                kind,
                now + argument if kind == RESCHEDULED else None,
                bool(argument[0]) if kind == DEAD_LETTERED else False,
            )
            for kind, event_id, receiver_id, attempt, argument in outcomes
        ]
        cursor.execute(self._sql["settle"], (orjson.dumps(rows).decode(), holder))
        found = cursor.fetchall()
        applied = {row[0]: row[1] for row in found}
        keyed = {row[0] for row in found if row[2]}
        done_here = {row[0] for row in found if row[3] == 1}  # completed: no letter
        out[:] = [index for index in range(len(outcomes)) if index + 1 not in applied]
        dead = [
            (index, applied[index + 1])
            for index, outcome in enumerate(outcomes)
            if outcome[0] == DEAD_LETTERED and index + 1 in applied and index + 1 not in done_here
        ]
        if dead:
            letters = [outcomes[index][4][1] for index, _ in dead]
            seqs = [seq for _, seq in dead]
            receivers = [outcomes[index][2] for index, _ in dead]
            cursor.execute(self._sql["drop_letters_of"], (seqs, receivers, [x[0] for x in letters]))
            cursor.execute(
                self._sql["insert_letters"],
                (
                    [x[0] for x in letters],
                    seqs,
                    receivers,
                    [x[1] for x in letters],
                    [x[2] for x in letters],
                    [x[3] for x in letters],
                    [x[4] for x in letters],
                ),
            )
        # Another consumer may claim now: what was released, or a key's next delivery.
        return any(
            outcome[0] == RELEASED or (index + 1 in keyed and outcome[0] != RESCHEDULED)
            for index, outcome in enumerate(outcomes)
            if index + 1 in applied
        )

    def claim(
        self,
        cursor: Cursor,
        consumer: ConsumerId,
        limit: int,
        now: datetime,
        until: datetime,
        known: Mapping[str, Event],
    ) -> list[tuple[Event, str, int, bool]] | None:
        """Lease up to ``limit`` claimable deliveries of the receivers that ``consumer``
        registered, until ``until``, in one statement (run it on its own, in autocommit:
        it is its own transaction). ``None`` when ``consumer`` is not live at ``now``."""
        cursor.execute(
            self._sql["claim"],
            {
                "holder": str(consumer),
                "now": now,
                "limit": max(limit, 0),
                "until": until,
            },
        )
        found = cursor.fetchall()
        rows = sorted((row for row in found if row[0] is not None), key=lambda row: row[:2])
        if len(rows) == len(found):
            return None  # no row of NULLs: not live
        claims = []
        event: Event | None = None
        last = None
        for seq, receiver_id, attempts, expired, event_id, body in rows:
            if seq != last:
                last = seq
                event = known.get(event_id)
                if event is None:
                    event = Event.from_json(bytes(body))
            assert event is not None
            claims.append((event, receiver_id, attempts + 1, bool(expired)))
        return claims

    def renew(
        self,
        cursor: Cursor,
        holder: str,
        claims: Sequence[tuple[str, str, int]],
        until: datetime,
    ) -> list[int]:
        """Extend the leases held; the indexes of the claims not held."""
        cursor.execute(self._sql["renew"], (_claims_json(claims), until, holder))
        held = {row[0] for row in cursor.fetchall()}
        return [index for index in range(len(claims)) if index + 1 not in held]


# One statement, its own transaction: the consumer's routes, read from its live
# registration (none when it is not live, or expired), give the receivers; per receiver,
# the first ``limit`` claimable deliveries in publish order are locked (skipping those
# another transaction holds locked), then the first ``limit`` of them all are leased. A
# keyed delivery is claimable only when no earlier one of its (receiver, key) is
# unfinished: pending (ready, scheduled or leased), or dead and holding the key.
# ``expired`` is read from the row before the update: a started attempt whose lease ran
# out. A row of NULLs says the consumer is live (none: it is not). Each event is looked
# up by its primary key, one claim at a time, and the rows locked are updated by their
# ``ctid`` (a TID scan), so a fresh table whose statistics are stale is never scanned
# whole. (A row that another transaction changed and committed after this statement
# began is locked but not visible to the update: it is left for the next claim.)
# The claim commits without waiting for the server to flush its WAL (``synchronous_commit``
# off for this transaction alone, set where the live registration is found): a server
# crash can forget a claim made just before, which only makes its deliveries claimable
# again. Nothing counts on a claim being durable: its attempt counts at the start, whose
# commit waits for the flush, and so flushes the claim written before it.
_CLAIM: Final = (
    "WITH live AS MATERIALIZED (SELECT routes FROM {s}.consumers"
    " WHERE id = %(holder)s AND expires_at > %(now)s"
    " AND set_config('synchronous_commit', 'off', true) = 'off'),"
    " r AS (SELECT DISTINCT x.route ->> 1 AS receiver_id FROM live,"
    " jsonb_array_elements(convert_from(live.routes, 'UTF8')::jsonb) AS x(route)),"
    " picked AS (SELECT x.row, x.event_seq, x.receiver_id, x.holder IS NOT NULL AND x.started"
    " AS expired FROM r CROSS JOIN LATERAL"
    " (SELECT d.ctid AS row, d.event_seq, d.receiver_id, d.holder, d.started"
    " FROM {s}.deliveries AS d"
    " WHERE d.receiver_id = r.receiver_id AND d.state = 0 AND d.due <= %(now)s"
    " AND (d.holder IS NULL OR d.lease_until <= %(now)s)"
    " AND (d.key IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.deliveries AS p"
    " WHERE p.receiver_id = d.receiver_id AND p.key = d.key"
    " AND p.event_seq < d.event_seq AND p.key IS NOT NULL"
    " AND (p.state = 0 OR p.holds_key)))"
    " ORDER BY d.event_seq LIMIT %(limit)s FOR UPDATE OF d SKIP LOCKED) AS x"
    " ORDER BY x.event_seq, x.receiver_id LIMIT %(limit)s),"
    " claimed AS (UPDATE {s}.deliveries AS d SET holder = %(holder)s, lease_until = %(until)s,"
    " started = false WHERE d.ctid = ANY(ARRAY(SELECT row FROM picked))"
    " RETURNING d.event_seq, d.receiver_id, d.attempts)"
    " SELECT c.event_seq, c.receiver_id, c.attempts, p.expired, e.id, e.body"
    " FROM claimed AS c JOIN picked AS p USING (event_seq, receiver_id) CROSS JOIN LATERAL"
    " (SELECT e.id, e.body FROM {s}.events AS e WHERE e.seq = c.event_seq LIMIT 1) AS e"
    " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL FROM live"
)
