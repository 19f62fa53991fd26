"""PostgresStore: the shared store of a fleet on several hosts, in a PostgreSQL schema.

It implements the ``LeasedStore`` the runtime uses (publish, consumers,
claims with leases, starts, renewals, settlements; see ``_protocol`` and
docs/postgres.md), and the journal's ``Store`` on the same tables, as
``SQLiteStore`` does, so the runtime seeds its idempotency window from it and
the journal CLI reads it.

* Claims lock rows with ``FOR UPDATE SKIP LOCKED``: concurrent claimers on any
  host never wait for each other and never take one delivery twice.
* Idempotency keys are claimed through a UNIQUE index (``ON CONFLICT DO
  NOTHING``): the first transaction to insert a key owns it.
* Positions and publish order follow commit order (``_postgres_sql``).
* Publishing NOTIFYs the schema's channel in the publishing transaction; a
  runtime that consumes listens (``wake_on_work``) and claims at once, and
  polls every ``poll_interval`` seconds besides.
* ``publish_in`` writes events through the caller's own connection, inside
  its transaction (the outbox).

The parts it is made of:

* ``StoreThread`` (``_sqlite_thread``, shared with ``SQLiteStore``): the thread
  that owns the connection, its queue and group commit.
* ``PostgresSession`` and ``Listener`` (``_postgres_session``): the connection,
  reconnecting and retrying, and the LISTEN connection.
* ``_postgres_schema``: the tables, migrations and version check, naming without
  the password, and errors. ``_postgres_sql``: publishing, claims, starts,
  renewals and settlements. ``_postgres_queries``: everything else.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg

from .._event import Event, make_event
from .._exceptions import ConfigurationError, StoreError
from .._idempotency import IDEMPOTENCY_KEY
from .._lowlevel import loop_caller
from .._names import validate_name
from .._payload import encode_metadata, encode_payload
from .._policy import DeadLetter
from .._registry import Registry, default_registry
from ._postgres_queries import decode_pending
from ._postgres_schema import (
    Statements,
    check_schema_name,
    database_of,
    display_name,
    password_of,
    postgres_error,
)
from ._postgres_session import Listener, PostgresSession
from ._postgres_sql import (
    APPEND,
    COMPLETED,
    DEAD_LETTERED,
    PUBLISH,
    RELEASED,
    RESCHEDULED,
    SETTLE,
    START,
    EventRow,
    HeldDelivery,
    complete_in,
    complete_in_async,
    event_row,
    write_events,
    write_events_async,
)
from ._protocol import (
    Backlog,
    Claim,
    Clock,
    Completed,
    Consumer,
    ConsumerId,
    DeadLettered,
    EventPage,
    Lease,
    Outcome,
    PendingDelivery,
    Released,
    Rescheduled,
    Route,
    StoreStats,
    system_clock,
)
from ._sqlite_thread import StoreThread, ThreadErrors

__all__ = ["PostgresStore"]

logger = logging.getLogger("aevents.store")

_T = TypeVar("_T")
_KEEP_PUBLISHED = 8192  # events kept for claims of this process
_PRUNE_CHUNK = 2000
_FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


def _convert(name: str, exc: BaseException, doing: str, _: float) -> StoreError:
    return postgres_error(name, exc, doing)


_ERRORS = ThreadErrors(
    per_request=(
        psycopg.errors.IntegrityError,
        psycopg.errors.DataError,
        OverflowError,
        TypeError,
        ValueError,
    ),
    whole=(psycopg.Error,),
    convert=_convert,
)


def _number(what: str, value: object, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < math.inf:
        raise ConfigurationError(
            "PostgresStore", f"{what} must be a finite number of seconds > {low:g}, got {value!r}"
        )
    return float(value)


class PostgresStore:
    """A store in a PostgreSQL schema that the processes of every host share.

    Pass it to ``EventRuntime(store=...)``, which opens and closes it; each
    process makes its own with the same connection string and schema. Open,
    use and close it from one event loop (asyncio, uvloop or trio): it talks to
    the server from a thread of its own with a sync psycopg connection.

    Args:
        conninfo: A libpq connection string, as a URL
            (``postgresql://user:password@host:5432/db``) or ``key=value`` pairs.
            Its password never appears in an error, a log line or ``repr``.
        schema: The schema that holds the store's tables; created (with its
            tables) on the first open, migrated by later versions. Default
            ``"aevents"``.
        clock: Where leases, retries and registrations read the time.
        max_batch: The most publish calls committed in one transaction. Default 256.
        poll_interval: Seconds a consuming runtime waits between claims when
            nothing woke it. Notifications wake it at once; this is the fallback
            for a lost one, and how it sees other processes' retries come due.
            Default 2.
        listen: LISTEN for notifications when a runtime consumes. Default True.
        connect_timeout: Seconds a connection attempt may take. Default 5.
        read_only: For inspection: every transaction is ``READ ONLY``, and the
            schema is neither created nor migrated. Default False.

    Raises:
        ConfigurationError: An option has a wrong type or value.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "aevents",
        clock: Clock = system_clock,
        max_batch: int = 256,
        poll_interval: float = 2.0,
        listen: bool = True,
        connect_timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        if not isinstance(conninfo, str):
            raise ConfigurationError(
                "PostgresStore", f"conninfo must be a str, got {type(conninfo).__name__}"
            )
        if type(max_batch) is not int or max_batch < 1:
            raise ConfigurationError(
                "PostgresStore", f"max_batch must be an int >= 1, got {max_batch!r}"
            )
        self.schema = check_schema_name(schema)
        self.path = display_name(conninfo, self.schema)
        """How the store names itself: the connection string without its password."""
        self.max_batch = max_batch
        self.poll_interval = _number("poll_interval", poll_interval)
        self.connect_timeout = _number("connect_timeout", connect_timeout)
        self.listen = bool(listen)
        self.read_only = bool(read_only)
        self._conninfo = conninfo
        self._secret = password_of(conninfo)
        self._clock = clock
        self._statements = Statements(self.schema)
        self._published: OrderedDict[str, Event] = OrderedDict()
        self._thread: StoreThread[PostgresSession] = StoreThread(self.path, errors=_ERRORS)
        self._listener: Listener | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.path!r})"

    # -- open and close --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the store's thread.

        Raises ``StoreError`` if the server cannot be reached, or the schema was
        written by a newer aevents (left untouched). Not interruptible midway: a
        cancellation takes effect once the store is open, and closes it again.
        """
        conninfo, statements, name = self._conninfo, self._statements, self.path
        secret, timeout, read_only = self._secret, self.connect_timeout, self.read_only
        await self._thread.start(
            lambda: PostgresSession.open(
                conninfo,
                statements,
                name=name,
                secret=secret,
                connect_timeout=timeout,
                read_only=read_only,
            ),
            writable=not read_only,
            max_batch=self.max_batch,
            busy_timeout=0.0,
        )

    def prepare(self) -> None:
        """Create or migrate the schema now, from the calling thread, without opening the
        store: for a process that only publishes through its own connections
        (``publish_in``) before any runtime opened the store. Safe to call from many
        processes at once. Blocks for one connection's round trips.

        Raises:
            StoreError: The server cannot be reached, or a newer aevents wrote the schema.
        """
        try:
            session = PostgresSession.open(
                self._conninfo,
                self._statements,
                name=self.path,
                secret=self._secret,
                connect_timeout=self.connect_timeout,
                read_only=self.read_only,
            )
        except psycopg.Error as error:
            raise postgres_error(
                self.path, error, "could not prepare the schema", self._secret
            ) from error
        session.close()

    async def close(self) -> None:
        """Commit what was queued, close the connections. Idempotent; shielded."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        await self._thread.stop()

    def wake_on_work(self, wake: Callable[[], object]) -> float:
        """Call ``wake`` (on this event loop) when another process may have left work to
        claim; return the seconds between polls still needed besides (``poll_interval``).

        The runtime calls it when it consumes. Without ``listen``, nothing is called
        and the runtime polls at that interval alone.
        """
        if self.listen and self._listener is None:
            call_soon, _ = loop_caller()
            pending = False

            def on_loop() -> None:
                nonlocal pending
                pending = False
                wake()

            def from_listener() -> None:
                nonlocal pending
                if pending:
                    return
                pending = True
                try:
                    call_soon(on_loop)
                except Exception:  # the event loop is gone
                    pending = False

            self._listener = Listener(
                self._conninfo,
                self.schema,
                self._statements.channel,
                name=self.path,
                wake=from_listener,
            )
            self._listener.start()
        return self.poll_interval

    # -- the outbox ------------------------------------------------------------------------

    def publish_in(
        self,
        connection: Any,
        name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        registry: Registry | None = None,
    ) -> Event:
        """Publish through ``connection``, inside its open transaction: the outbox.

        The event and one delivery per receiver subscribed to ``name`` in
        ``registry`` (``aevents.default_registry`` by default) with
        ``scope="fleet"`` are written with the caller's connection and commit
        with the caller's transaction: a rollback leaves no trace, and consumers
        see the event only after the commit. ``connection`` is a psycopg 3
        ``Connection`` or ``Cursor`` (for an ``AsyncConnection``, use
        ``publish_in_async``); Django's ``connection.cursor()`` on PostgreSQL
        works too. The store need not be open. ``metadata["idempotency_key"]``
        works as in ``publish``: a key recorded before returns its first event.

        Publishing takes its turn in the store's publish order when it writes and
        keeps it until the caller's transaction ends: call it late in the
        transaction, so other publishers do not wait for the rest of it.

        Raises:
            InvalidEventNameError, PayloadError: Bad input; nothing was written.
            psycopg.Error: From the caller's connection, which the caller rolls back.
        """
        event, row = self._outbox_row(name, payload, key, metadata, registry)
        if _has_cursors(connection):
            with connection.cursor() as cursor:
                first = write_events(cursor, self._statements, [row])[0]
        else:
            first = write_events(connection, self._statements, [row])[0]
        return event if first is None else Event.from_json(first)

    async def publish_in_async(
        self,
        connection: Any,
        name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        registry: Registry | None = None,
    ) -> Event:
        """``publish_in`` through a psycopg ``AsyncConnection`` or ``AsyncCursor`` (asyncio).

        Cancelling it midway leaves the caller's transaction with part of the
        writes; roll it back.
        """
        event, row = self._outbox_row(name, payload, key, metadata, registry)
        if _has_cursors(connection):
            async with connection.cursor() as cursor:
                first = (await write_events_async(cursor, self._statements, [row]))[0]
        else:
            first = (await write_events_async(connection, self._statements, [row]))[0]
        return event if first is None else Event.from_json(first)

    # -- the inbox -------------------------------------------------------------------------

    def complete_in(self, connection: Any, delivery: HeldDelivery) -> None:
        """Mark ``delivery`` done through ``connection``, inside its open transaction.

        Call it from a receiver, with ``aevents.current_delivery()``, as the last
        statement of the transaction that holds the receiver's writes: the writes
        and the completion then commit together, or neither does and the delivery
        runs again. The runtime's own settle of that attempt afterwards only lets
        go of it. ``connection`` is what ``publish_in`` takes, on the store's
        database (see docs/postgres.md).

        Raises:
            StoreError: The attempt no longer holds the delivery (its lease passed to
                another consumer, which runs it): roll the transaction back.
            psycopg.Error: From the caller's connection, which the caller rolls back.
        """
        if _has_cursors(connection):
            with connection.cursor() as cursor:
                held = complete_in(cursor, self._statements, delivery)
        else:
            held = complete_in(connection, self._statements, delivery)
        if not held:
            raise self._not_held(delivery)

    async def complete_in_async(self, connection: Any, delivery: HeldDelivery) -> None:
        """``complete_in`` through a psycopg ``AsyncConnection`` or ``AsyncCursor`` (asyncio).

        Cancelling it midway leaves the caller's transaction open; roll it back.
        """
        if _has_cursors(connection):
            async with connection.cursor() as cursor:
                held = await complete_in_async(cursor, self._statements, delivery)
        else:
            held = await complete_in_async(connection, self._statements, delivery)
        if not held:
            raise self._not_held(delivery)

    def _not_held(self, delivery: HeldDelivery) -> StoreError:
        return StoreError(
            self.path,
            f"event {delivery.event.id} ({delivery.event.name!r}) for receiver "
            f"{delivery.receiver_id!r}, attempt {delivery.attempt}, is no longer held by "
            "this attempt (its lease passed to another consumer, or it is done); roll the "
            "transaction back: the delivery runs elsewhere",
        )

    @property
    def database(self) -> tuple[str, str, str]:
        """``(host, port, dbname)`` the store connects to, libpq's defaults filled in."""
        return database_of(self._conninfo)

    def _outbox_row(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        key: str | None,
        metadata: Mapping[str, str] | None,
        registry: Registry | None,
    ) -> tuple[Event, EventRow]:
        name = validate_name(name)
        body = encode_payload(name, {} if payload is None else payload, 1 << 30)
        meta = {} if metadata is None else encode_metadata(name, metadata)
        event = make_event(name, body, meta, key)
        routes = (registry or default_registry).route(name)
        receivers = [route.receiver_id for route in routes if route.scope == "fleet"]
        return event, event_row(event, receivers, meta.get(IDEMPOTENCY_KEY))

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        """Add each event and a ready delivery per distinct receiver id, all or none; a
        repeated idempotency key adds nothing and returns the key's first event.

        Joins the publishes of other tasks in one transaction. Raises ``StoreError``
        if an event id is already stored (the whole call adds nothing), or if the
        connection was lost while committing (whether it was added is unknown).
        Cancelling the wait does not withdraw the request.
        """
        rows = [
            event_row(event, receiver_ids, event.metadata.get(IDEMPOTENCY_KEY))
            for event, receiver_ids in events
        ]
        if not rows:
            return await self._call(lambda session: [], "could not publish")
        out: list[bytes | None] = []
        batch, index = self._thread.submit_append((PUBLISH, rows, out))
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)
        published = self._published
        for (event, _), first in zip(events, out, strict=True):
            if first is None:
                published[event.id] = event
        while len(published) > _KEEP_PUBLISHED:
            published.popitem(last=False)  # O(1): a dict's first key is not, after deletes
        return [
            event if first is None else Event.from_json(first)
            for (event, _), first in zip(events, out, strict=True)
        ]

    async def event_position(self) -> int:
        """The position of the newest event added (0 before any)."""
        return await self._read(lambda s, c: s.queries.event_position(c), "could not read")

    async def events_after(self, position: int, limit: int) -> EventPage:
        """At most ``limit`` events after ``position``; the pruned ones skipped, counted."""
        if limit <= 0:
            return EventPage((), position, 0)
        events, end, missed = await self._read(
            lambda s, c: s.queries.events_after(c, position, limit), "could not read events"
        )
        return EventPage(tuple(events), end, missed)

    # -- consumers -------------------------------------------------------------------------

    async def register(self, consumer: ConsumerId, routes: Sequence[Route], *, ttl: float) -> None:
        """Record ``consumer`` as live for ``ttl`` seconds, running ``routes`` (replacing any)."""
        now = self._clock()
        routes = list(routes)
        until = now + timedelta(seconds=ttl)
        await self._write(
            lambda s, c: s.queries.register(c, consumer, routes, now, until),
            "could not register a consumer",
        )

    async def heartbeat(self, consumer: ConsumerId, *, ttl: float) -> bool:
        """Keep ``consumer`` live ``ttl`` seconds more; False if it is not live."""
        now = self._clock()
        until = now + timedelta(seconds=ttl)
        return await self._write(
            lambda s, c: s.queries.heartbeat(c, consumer, now, until),
            "could not record a heartbeat",
        )

    async def unregister(self, consumer: ConsumerId) -> int:
        """Forget ``consumer`` and release what it holds, uncounted; return how many."""
        return await self._write(
            lambda s, c: s.queries.unregister(c, consumer), "could not unregister"
        )

    async def consumers(self) -> list[Consumer]:
        """Live consumers in registration order, with how many deliveries each holds."""
        now = self._clock()
        return await self._read(lambda s, c: s.queries.consumers(c, now), "could not list")

    # -- claims ----------------------------------------------------------------------------

    async def claim(self, consumer: ConsumerId, limit: int, *, lease: float) -> list[Claim]:
        """Lease at most ``limit`` claimable deliveries for ``lease`` seconds, in publish
        order, in one transaction. Raises ``StoreError`` if ``consumer`` is not live."""
        now = self._clock()
        until = now + timedelta(seconds=lease)
        known = self._published
        found = await self._thread.call(
            lambda session: session.transact(
                lambda cursor: session.writes.claim(cursor, consumer, limit, now, until, known),
                alone=True,
            ),
            "could not claim",
            writes=True,
        )
        if found is None:
            raise StoreError(
                self.path,
                f"consumer {str(consumer)!r} is not registered, or its registration "
                "expired; register it again before claiming",
            )
        return [Claim(*claim) for claim in found]

    async def start(self, consumer: ConsumerId, claims: Sequence[Claim]) -> list[Claim]:
        """Count these claims' attempts as started, durably; return the ones not held.

        Joins other tasks' writes in one transaction. Cancelling the wait does not
        withdraw the request."""
        claims = list(claims)
        if not claims:
            return []
        rows = [(c.event.id, c.receiver_id, c.attempt) for c in claims]
        out: list[int] = []
        batch, index = self._thread.submit((START, str(consumer), rows, out))
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)
        return [claims[lost] for lost in out]

    async def renew(
        self, consumer: ConsumerId, claims: Sequence[Claim], *, lease: float
    ) -> list[Claim]:
        """Extend these leases to ``lease`` seconds from now; return the ones not held."""
        claims = list(claims)
        if not claims:
            return []
        until = self._clock() + timedelta(seconds=lease)
        rows = [(c.event.id, c.receiver_id, c.attempt) for c in claims]
        holder = str(consumer)
        lost = await self._write(
            lambda s, c: s.writes.renew(c, holder, rows, until), "could not renew"
        )
        return [claims[index] for index in lost]

    async def settle(self, consumer: ConsumerId, outcomes: Sequence[Outcome]) -> list[Claim]:
        """Apply each outcome to its claim in one transaction (shared with other tasks'
        writes); return the claims not held. Cancelling the wait does not withdraw it."""
        outcomes = list(outcomes)
        if not outcomes:
            return []
        rows = [_outcome_row(outcome) for outcome in outcomes]
        out: list[int] = []
        batch, index = self._thread.submit((SETTLE, str(consumer), self._clock(), rows, out))
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)
        return [outcomes[lost].claim for lost in out]

    # -- listings and maintenance ----------------------------------------------------------

    async def leases(self) -> list[Lease]:
        """Deliveries held, by expiry, including leases that ran out and were not taken yet."""
        return await self._read(lambda s, c: s.queries.leases(c), "could not list leases")

    async def backlog(self) -> list[Backlog]:
        """Per receiver id with deliveries not done: counts by state, and the oldest event."""
        now = self._clock()
        return await self._read(lambda s, c: s.queries.backlog(c, now), "could not read")

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        count = None if limit is None else max(limit, 0)
        return await self._read(
            lambda s, c: s.queries.dead_letters(c, count), "could not list dead letters"
        )

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters ready again with no attempts (all when ``None``); return how many."""
        ids = None if letter_ids is None else list(dict.fromkeys(letter_ids))
        return await self._write(lambda s, c: s.queries.redeliver(c, ids), "could not redeliver")

    async def discard(self, letter_ids: Sequence[str]) -> int:
        """Delete dead letters for good, their deliveries done and never run; return how many."""
        ids = list(dict.fromkeys(letter_ids))
        if not ids:
            return 0
        return await self._write(lambda s, c: s.queries.discard(c, ids), "could not discard")

    async def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}``."""
        return await self._read(lambda s, c: s.queries.held_keys(c), "could not list held keys")

    async def release_key(self, receiver_id: str, key: str) -> bool:
        """Let the next delivery of a held key go; the letter stays. False if it was not held."""
        return await self._write(
            lambda s, c: s.queries.release_key(c, receiver_id, key), "could not release a key"
        )

    async def prune(self, *, older_than: datetime | None = None, limit: int | None = None) -> int:
        """Delete at most ``limit`` (all when ``None``) done deliveries of events published
        before ``older_than`` (and events left with nothing), a bounded batch per
        transaction; return how many deliveries went."""
        before = older_than if older_than is not None else _FOREVER
        return await self._call(
            lambda session: _prune(session, before, limit), "could not prune", writes=True
        )

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""
        return await self._read(lambda s, c: s.queries.stats(c), "could not count")

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``; return how many."""
        return await self._write(
            lambda s, c: s.queries.forget_keys(c, before), "could not forget idempotency keys"
        )

    # -- the journal (``Store``), on the same tables ----------------------------------------

    async def append(self, event: Event, receiver_ids: Sequence[str]) -> None:
        """Record ``event`` and one ready delivery per distinct receiver id, and its
        idempotency key unless already recorded. ``StoreError`` if the id is stored."""
        row = event_row(event, receiver_ids, event.metadata.get(IDEMPOTENCY_KEY))
        batch, index = self._thread.submit_append((APPEND, [row], []))
        await batch.done.wait()
        if batch.failure is not None or batch.errors:
            batch.raise_for(index)

    async def start_attempts(self, attempts: Sequence[tuple[str, str, int]]) -> None:
        """Raise pending deliveries' attempt counts to the attempts given."""
        if attempts:
            rows = list(attempts)
            await self._write(
                lambda s, c: s.queries.start_attempts(c, rows), "could not start attempts"
            )

    async def complete(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Mark pending deliveries done (ending any lease on them); unknown ones are ignored."""
        if deliveries:
            rows = list(deliveries)
            await self._write(lambda s, c: s.queries.complete(c, rows), "could not complete")

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Mark deliveries dead (recording unknown events) and keep one letter per delivery."""
        if letters:
            rows = list(letters)
            await self._write(
                lambda s, c: s.queries.dead_letter(c, rows), "could not record dead letters"
            )

    async def pending(self) -> AsyncIterator[PendingDelivery]:
        """Pending deliveries (ready, scheduled and leased) in publish order, then receiver
        id, a page at a time; a snapshot of the events added when iteration begins."""
        upto = await self.event_position()
        after = (0, "")
        while True:
            rows = await self._read(
                functools.partial(_pending_page, after=after, upto=upto),
                "could not read pending deliveries",
            )
            for delivery in decode_pending(rows):
                yield delivery
            if len(rows) < 512:
                return
            after = (rows[-1][0], rows[-1][1])

    async def recent_idempotency_keys(self, since: datetime, limit: int) -> list[Event]:
        """The newest ``limit`` key records at or after ``since``, oldest first."""
        count = max(limit, 0)
        if not count:
            return await self._read(lambda s, c: [], "could not read idempotency keys")
        return await self._read(
            lambda s, c: s.queries.recent_keys(c, since, count), "could not read idempotency keys"
        )

    # -- running work on the thread --------------------------------------------------------

    async def _call(
        self, function: Callable[[PostgresSession], _T], doing: str, *, writes: bool = False
    ) -> _T:
        return await self._thread.call(function, doing, writes=writes)

    async def _read(self, work: Callable[[PostgresSession, Any], _T], doing: str) -> _T:
        return await self._thread.call(
            lambda session: session.transact(
                lambda cursor: work(session, cursor), read_only=session.read_only
            ),
            doing,
        )

    async def _write(self, work: Callable[[PostgresSession, Any], _T], doing: str) -> _T:
        return await self._thread.call(
            lambda session: session.transact(lambda cursor: work(session, cursor)),
            doing,
            writes=True,
        )


def _has_cursors(connection: object) -> bool:
    """A connection (it makes cursors), not a cursor: Django's cursor wrapper has a
    ``cursor`` attribute too, which is its driver's cursor and not callable."""
    return callable(getattr(connection, "cursor", None))


def _pending_page(
    session: PostgresSession, cursor: Any, *, after: tuple[int, str], upto: int
) -> list[tuple[int, str, int, bytes]]:
    return session.queries.pending_page(cursor, after, upto)


def _prune(session: PostgresSession, before: datetime, limit: int | None) -> int:
    removed = 0
    while limit is None or removed < limit:
        batch = _PRUNE_CHUNK if limit is None else min(_PRUNE_CHUNK, limit - removed)
        gone = session.transact(
            functools.partial(session.queries.prune_done, before=before, batch=batch)
        )
        removed += gone
        if gone < batch:
            break
    while (
        session.transact(lambda cursor: session.queries.prune_bare(cursor, before, _PRUNE_CHUNK))
        >= _PRUNE_CHUNK
    ):
        pass
    return removed


def _outcome_row(outcome: Outcome) -> tuple[int, str, str, int, object]:
    claim = outcome.claim
    head = (claim.event.id, claim.receiver_id, claim.attempt)
    if isinstance(outcome, Completed):
        return (COMPLETED, *head, None)
    if isinstance(outcome, Rescheduled):
        return (RESCHEDULED, *head, timedelta(seconds=outcome.delay))
    if isinstance(outcome, Released):
        return (RELEASED, *head, None)
    assert isinstance(outcome, DeadLettered)
    letter = outcome.letter
    details = (
        letter.id,
        letter.attempts,
        letter.error_type,
        letter.error_message,
        letter.failed_at,
    )
    return (DEAD_LETTERED, *head, (outcome.holds_key, details))
