"""RedisStore: the shared queue on Redis 7 streams, for the processes of many hosts.

Each change is one Lua script (``_redis_scripts``), atomic on the server:

* An event is one entry of the ``events`` stream at ID ``<position>-0``; each of its
  (event, receiver) deliveries is one entry of that receiver's stream, read by the
  consumer group ``aevents``, so each delivery has its own pending entry,
  acknowledgement (``XACK`` once the receiver returned) and dead letter.
* A claim reads new entries with ``XREADGROUP`` and takes over due ones (a lease
  that ran out, a retry whose time came) with ``XPENDING ... IDLE`` and ``XCLAIM``;
  renewing is ``XCLAIM ... JUSTID``. The store's clock sets every lease (see the
  module docstring of ``_redis_scripts`` for how the PEL's idle time encodes it).
* A key's deliveries wait in a sorted set per (receiver, key): only the first may
  be claimed, so a key has one owner at a time, through a lease that runs out on
  its own; the next owner takes the first one left, which is the old owner's.
* Dead-lettering acknowledges the entry and moves it to the ``dead`` stream in
  one script. Acknowledged entries are trimmed with ``XTRIM MINID`` below the
  oldest entry the group still has pending or unread, never with ``MAXLEN``.
* An idempotency key is ``SET NX PX`` in the same script as the ``XADD``.

Attempts: a claim counts nothing (``claim_and_start`` starts some of its claims in
the same script, as ``start`` would); ``start`` records the attempt as started (a
per-delivery count in ``B:st:<receiver>``), and a claim's attempt is that count
plus one. The PEL's delivery counter is set to the claim's attempt with
``XCLAIM ... RETRYCOUNT``, so ``XPENDING`` shows the attempt that runs, and a
claim is held while its entry is pending for its consumer with that counter.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import orjson

from .._event import Event
from .._exceptions import ConfigurationError, StoreError
from .._idempotency import IDEMPOTENCY_KEY
from .._policy import DeadLetter
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
from ._redis_connection import RedisConnection
from ._redis_keys import RedisKeys, redact
from ._redis_scripts import SCRIPTS

__all__ = ["RedisStore"]

logger = logging.getLogger("aevents.store")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEEP_PUBLISHED = 8192  # events kept for claims of this process
_KEEP_ENTRIES = 65536  # claims whose stream entry is remembered (see RedisStore._entries)
_JOIN_TURNS = 8  # turns of the event loop a settle or start waits at most for others to join
_JOIN_QUIET = 2  # ... and no more once this many turns passed with none joining
_UNKNOWN = ("", "")  # a claim's position and entry id, when not remembered
_PRUNE_SCAN = 512  # events a prune script reads at a time
_PAGE = 512  # stream entries a script reads at a time, for pending()
_RETENTION_EVERY = 60.0  # seconds between retention passes
_RETENTION_CHUNK = _PRUNE_SCAN * 4  # done deliveries a retention chunk prunes at most
_LISTEN_BACKOFF = (0.1, 5.0)  # the wake listener's first and longest wait after an error
_WAKES_KEPT = 16  # entries the wake stream keeps (MAXLEN, in _redis_scripts' wake())
# EVALSHA names a script by its SHA1, as Redis computes it (an identifier, not security)
_SHAS = {
    name: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    for name, source in SCRIPTS.items()
}


def _us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _seconds_us(seconds: float) -> int:
    return max(round(seconds * 1_000_000), 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _consumer_id(text: str) -> ConsumerId:
    host, pid, token = text.rsplit(":", 2)
    return ConsumerId(host, int(pid), token)


def _import_coredis() -> Any:
    try:
        import coredis
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise ConfigurationError(
            "RedisStore", "needs coredis: pip install 'aevents[redis]'"
        ) from None
    return coredis


def _check_seconds(what: str, name: str, value: object) -> None:
    """Refuse ``value`` for the option ``name`` unless it is a finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(what, f"{name} must be a finite number > 0, got {value!r}")


class _Joined:
    """Settles and starts made a few turns of the event loop apart, sent as one SETTLE script."""

    def __init__(self, consumer: ConsumerId, outcomes: list[Outcome], claims: list[Claim]) -> None:
        self.consumer = consumer
        self.outcomes = outcomes
        self.claims = claims
        self.done = anyio.Event()
        self.lost: tuple[list[Outcome | None], list[Claim | None]] = ([], [])
        self.error: str | None = None  # the problem, for a StoreError of each caller


class RedisStore:
    """A shared store on Redis 7 (streams and Lua scripts), through coredis.

    Pass it to ``EventRuntime(store=...)``; every process of the deployment opens
    its own ``RedisStore`` on the same server and prefix. It runs on asyncio,
    uvloop and trio alike. Open, use and close a store on one event loop (from any of
    its tasks): its coredis client lives in a task of its own on that loop.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS,
            or ``unix://``, as coredis reads it. The password is never shown:
            ``repr``, logs and errors print ``***`` in its place.
        prefix: Every key starts with ``{prefix}`` (a hash tag: one cluster slot).
            Stores on one server with different prefixes never see each other.
        clock: Where leases, retries and registrations read the time.
        retention: Prune done deliveries of events older than this, about once a
            minute while a runtime consumes, in bounded chunks, one after another
            while each finds a full one, so the server's memory stays bounded at any
            sustained rate. ``None`` keeps them (``prune`` removes them). Default one
            hour.
        idempotency_ttl: How long Redis keeps an idempotency key record at most (its
            ``PX``), even if nobody calls ``forget_idempotency_keys``. Default 7 days.
        connect_timeout: Seconds to wait for a connection. Default 5.
        poll_interval: Seconds a consuming runtime waits between claims when
            nothing woke it. Publishes (and redeliveries, released claims, a key's
            next delivery) wake the consuming runtimes at once through the stream
            ``{prefix}:wake``; this is the fallback for a wake that did not come,
            and how a runtime sees other processes' retries come due. Default 2.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "aevents",
        clock: Clock = system_clock,
        retention: timedelta | None = timedelta(hours=1),
        idempotency_ttl: timedelta = timedelta(days=7),
        connect_timeout: float = 5.0,
        poll_interval: float = 2.0,
    ) -> None:
        what = "RedisStore"
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            shown = redact(url) if isinstance(url, str) else repr(url)
            raise ConfigurationError(
                what, f"url must be a redis://, rediss:// or unix:// URL, got {shown!r}"
            )
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                what, f"prefix must be a non-empty str without braces, got {prefix!r}"
            )
        if retention is not None and (
            not isinstance(retention, timedelta) or retention < timedelta(0)
        ):
            raise ConfigurationError(
                what, f"retention must be None or a timedelta >= 0, got {retention!r}"
            )
        if not isinstance(idempotency_ttl, timedelta) or idempotency_ttl <= timedelta(0):
            raise ConfigurationError(
                what, f"idempotency_ttl must be a timedelta > 0, got {idempotency_ttl!r}"
            )
        _check_seconds(what, "connect_timeout", connect_timeout)
        _check_seconds(what, "poll_interval", poll_interval)
        self._url = url
        self.path = redact(url)
        """The URL with its password hidden: what messages and the CLI show."""
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self.retention = retention
        self._idempotency_ms = max(int(idempotency_ttl.total_seconds() * 1000), 1)
        self._connect_timeout = float(connect_timeout)
        self.poll_interval = float(poll_interval)
        self._clock = clock
        self._connection = RedisConnection()
        self._scripts: dict[str, str] = {}  # name -> SHA1 (EVALSHA), set at open
        self._no_script: type[Exception] = Exception
        self._published: OrderedDict[int, Event] = OrderedDict()  # position -> event published here
        # (event id, receiver id) -> (position, entry id) of the claims made here, sent along
        # with their starts, renewals and settles: their scripts need not look them up
        self._entries: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()
        self._retention_at = 0.0  # time.monotonic() of the next retention pass
        self._retaining = False  # a retention pass runs
        self._wakes: list[Callable[[], object]] = []  # what the wake listener calls
        self._receivers: set[str] = set()  # of the consumers registered here: their wakes
        self._token = os.urandom(8).hex().encode()  # names this store's publishes' wakes
        # Per consumer, the settles and starts waiting to be sent together in one script.
        self._joining: dict[ConsumerId, _Joined] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.path!r}, prefix={self.prefix!r})"

    def _now(self) -> int:
        return _us(self._clock())

    # -- open and close --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the server, and load the scripts.

        Raises ``StoreError`` (naming the URL without its password) when the server
        cannot be reached, refuses the credentials or is older than Redis 7. Logs a
        warning when the server runs with ``appendonly no``: an acknowledged publish
        is then lost if Redis restarts. Cancelling it leaves nothing open.
        """
        if self._connection.is_open:
            return
        coredis = _import_coredis()
        from coredis.retry import NoRetryPolicy

        self._no_script = coredis.exceptions.NoScriptError

        def make() -> Any:
            return coredis.Redis.from_url(
                self._url,
                decode_responses=False,
                connect_timeout=self._connect_timeout,
                retry_policy=NoRetryPolicy(),
                verify_version=False,
            )

        connection = self._connection
        try:
            await connection.open(make)
            info = await connection.call(lambda client: client.info("server"))
            version = _text(info.get("redis_version", "0"))
            if int(version.split(".")[0]) < 7:
                raise StoreError(self.path, f"needs Redis 7 or later, the server runs {version}")  # noqa: TRY301
            await self._check_persistence()
            self._scripts = _SHAS  # loaded by the first call of each that the server lacks
        except BaseException as error:
            await connection.close()
            if isinstance(error, StoreError):
                raise
            if _is_redis_error(error):
                raise StoreError(self.path, f"cannot be opened: {_describe(error)}") from None
            raise

    async def _check_persistence(self) -> None:
        try:
            config = await self._connection.call(lambda client: client.config_get(["appendonly"]))
        except Exception:  # CONFIG may be renamed or refused by an ACL: nothing to say
            return
        value = _text(config.get(b"appendonly", config.get("appendonly", b"")))
        if value == "no":
            logger.warning(
                "Redis at %s runs with appendonly no: an acknowledged publish is lost if "
                "Redis restarts before its next snapshot; set appendonly yes (and "
                "appendfsync everysec or always) to keep it",
                self.path,
            )

    async def close(self) -> None:
        """Disconnect (the wake listener and a retention pass stop). Idempotent."""
        self._wakes = []
        await self._connection.close()

    async def _run(self, name: str, args: Sequence[Any], doing: str) -> Any:
        if not self._connection.is_open:
            raise StoreError(self.path, "is not open; call `await store.open()` first")
        client = self._connection.client
        try:
            try:
                return await self._evalsha(client, self._scripts[name], args)
            except self._no_script:  # the server lost its scripts (a restart, SCRIPT FLUSH)
                await client.script_load(SCRIPTS[name])
                return await self._evalsha(client, self._scripts[name], args)
        except Exception as error:
            if isinstance(error, StoreError):
                raise
            if _is_redis_error(error):
                raise StoreError(self.path, f"{doing}: {_describe(error)}") from None
            raise

    async def _evalsha(self, client: Any, sha: str, args: Sequence[Any]) -> Any:
        """``EVALSHA`` on a connection of the pool, which it leaves before the reply comes,
        as coredis' ``acquire`` allows (the connection carries other calls meanwhile).

        The arguments are str, bytes and int already: this skips the command object
        coredis builds around each call, which checks every argument three times over
        (a third of the client's time for a batch of 256 events).
        """
        async with client.connection_pool.acquire() as connection:
            request = connection.create_request(b"EVALSHA", sha, 1, self.keys.base, *args)
        return await request

    # -- publishing and reading events -----------------------------------------------------

    async def publish(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Event]:
        """Add each event with one delivery per distinct receiver id, all in one script.

        A repeated idempotency key adds nothing and answers with the key's first
        event. A cancellation may leave the whole batch added or none of it.
        """
        if not events:
            return []
        result = await self._publish_script("PUBLISH", self._publish_args(events))
        return self._standing(events, result, {})

    async def publish_and_claim(
        self,
        events: Sequence[tuple[Event, Sequence[str]]],
        consumer: ConsumerId,
        *,
        limit: int,
        lease: float,
        start: int,
    ) -> tuple[list[Event], list[Claim], list[Claim]]:
        """``publish``, and in the same script lease to ``consumer`` at most ``limit`` of the
        deliveries it adds to the receivers ``consumer`` registered, those a claim would
        take (not behind an unfinished delivery of their key), in publish order, the first
        ``start`` of them started as ``start`` would. Nothing is leased when ``consumer``
        is not live, or for an idempotent repeat. Returns ``(the events that stand, the
        claims, the claims started)``: one round trip where publishing and claiming take
        two, and the claims carry no bodies back (the events are here). Entries of those
        receivers that no consumer had read yet, before the new ones, become ready, as
        those beyond a claim's limit do. Other processes are woken only for the deliveries
        left unclaimed.
        """
        if not events:
            return [], [], []
        self._maybe_retain()
        args = self._publish_args(events)
        args += [str(consumer), max(limit, 0), self._now(), _seconds_us(lease), max(start, 0)]
        result, flat = await self._publish_script("PUBLISH_CLAIM", args)
        added: dict[int, Event] = {}
        standing = self._standing(events, result, added)
        claims, started = self._claims(flat, added)
        return standing, claims, started

    def _publish_args(self, events: Sequence[tuple[Event, Sequence[str]]]) -> list[Any]:
        args: list[Any] = [self._token, self._idempotency_ms, len(events)]
        for event, receiver_ids in events:
            idempotency = event.metadata.get(IDEMPOTENCY_KEY)
            args += [
                event.id,
                event.to_json(),
                event.name,
                "0" if event.key is None else "1",
                event.key or "",
                _us(event.occurred_at),
                "0" if idempotency is None else "1",
                idempotency or "",
                len(receiver_ids),
                *receiver_ids,
            ]
        return args

    async def _publish_script(self, name: str, args: list[Any]) -> Any:
        try:
            return await self._run(name, args, "could not publish")
        except StoreError as error:
            if "duplicate event" in error.problem:
                raise StoreError(
                    self.path,
                    "could not publish: an event of the batch is already in the store "
                    "(nothing of the batch was added)",
                ) from None
            raise

    def _standing(
        self,
        events: Sequence[tuple[Event, Sequence[str]]],
        result: Sequence[Any],
        added: dict[int, Event],
    ) -> list[Event]:
        """The events that stand, from PUBLISH's answer; ``added`` gets position -> event
        of those it added."""
        standing: list[Event] = []
        for (event, _), (kind, value) in zip(events, result, strict=True):
            if kind == 1:
                standing.append(event)
                position = int(value)
                added[position] = event
                self._remember(position, event)
            elif kind == 2:
                standing.append(Event.from_json(value))
            else:
                standing.append(standing[int(value) - 1])
        return standing

    def _remember(self, position: int, event: Event) -> None:
        published = self._published
        published[position] = event
        if len(published) > _KEEP_PUBLISHED:
            published.popitem(last=False)  # O(1), where del of next(iter(dict)) scans

    async def event_position(self) -> int:
        """The position of the newest event added (0 before any)."""
        value = await self._call(lambda c: c.get(self.keys.seq), "could not read")
        return int(value or 0)

    async def events_after(self, position: int, limit: int) -> EventPage:
        """At most ``limit`` events after ``position``; the pruned ones skipped, counted."""
        if limit <= 0:
            return EventPage((), position, 0)
        end, *bodies = await self._run("EVENTS_AFTER", [position, limit], "could not read")
        events = tuple(Event.from_json(body) for body in bodies)
        end = int(end)
        return EventPage(events, end, end - position - len(events))

    async def _call(self, call: Any, doing: str) -> Any:
        if not self._connection.is_open:
            raise StoreError(self.path, "is not open; call `await store.open()` first")
        try:
            return await self._connection.call(call)
        except Exception as error:
            if _is_redis_error(error):
                raise StoreError(self.path, f"{doing}: {_describe(error)}") from None
            raise

    # -- consumers -------------------------------------------------------------------------

    async def register(self, consumer: ConsumerId, routes: Sequence[Route], *, ttl: float) -> None:
        """Record ``consumer`` and its routes, live for ``ttl`` seconds from now."""
        registration = {
            "routes": [[route.pattern, route.receiver_id] for route in routes],
            "receivers": sorted({route.receiver_id for route in routes}),
        }
        self._receivers.update(route.receiver_id for route in routes)
        await self._run(
            "REGISTER",
            [str(consumer), orjson.dumps(registration), self._now(), _seconds_us(ttl)],
            "could not register",
        )

    async def heartbeat(self, consumer: ConsumerId, *, ttl: float) -> bool:
        """Keep a live ``consumer`` live ``ttl`` seconds from now; False if it is not live."""
        alive = await self._run(
            "HEARTBEAT", [str(consumer), self._now(), _seconds_us(ttl)], "could not heartbeat"
        )
        return bool(alive)

    async def unregister(self, consumer: ConsumerId) -> int:
        """Forget ``consumer``; what it holds is ready again, uncounted."""
        released = await self._run(
            "UNREGISTER", [str(consumer), self._now()], "could not unregister"
        )
        return int(released)

    async def consumers(self) -> list[Consumer]:
        """Live consumers in registration order, with how many deliveries each holds."""
        flat = await self._run("CONSUMERS", [self._now()], "could not list consumers")
        found = []
        for index in range(0, len(flat), 3):
            raw = orjson.loads(flat[index + 1])
            found.append(
                Consumer(
                    id=_consumer_id(_text(flat[index])),
                    routes=tuple(Route(pattern, receiver) for pattern, receiver in raw["routes"]),
                    registered_at=_from_us(int(raw["registered"])),
                    last_seen=_from_us(int(raw["seen"])),
                    expires_at=_from_us(int(raw["expires"])),
                    leases=int(flat[index + 2]),
                )
            )
        return found

    # -- claims ----------------------------------------------------------------------------

    async def claim(self, consumer: ConsumerId, limit: int, *, lease: float) -> list[Claim]:
        """Lease up to ``limit`` claimable deliveries of ``consumer``'s receivers, oldest first.

        Raises ``StoreError`` when ``consumer`` is not live. A cancellation may leave
        deliveries leased that nobody runs; they are claimed again once the lease ends.
        """
        claims, _ = await self._claim(consumer, limit, lease, 0)
        return claims

    async def claim_and_start(
        self, consumer: ConsumerId, limit: int, *, lease: float, start: int
    ) -> tuple[list[Claim], list[Claim]]:
        """``claim``, and ``start`` in the same script for the first ``start`` claims
        (in publish order) whose last attempt's lease did not run out: ``(claims, the
        claims started)``. One round trip where a runtime that runs its claims at once
        would make two; a claim started here counts its attempt as ``start`` counts it.
        """
        return await self._claim(consumer, limit, lease, max(start, 0))

    async def _claim(
        self, consumer: ConsumerId, limit: int, lease: float, start: int
    ) -> tuple[list[Claim], list[Claim]]:
        self._maybe_retain()
        try:
            flat = await self._run(
                "CLAIM",
                [str(consumer), limit, self._now(), _seconds_us(lease), start],
                "could not claim",
            )
        except StoreError as error:
            if "not live" in error.problem:
                raise StoreError(
                    self.path,
                    f"consumer {str(consumer)!r} is not registered, or its registration "
                    "expired; register it again before claiming",
                ) from None
            raise
        return self._claims(flat, {})

    def _maybe_retain(self) -> None:
        """Start a retention pass when one is due (claims call it: a runtime consumes)."""
        if (
            self.retention is not None
            and not self._retaining
            and time.monotonic() >= self._retention_at
        ):
            self._retain()

    def _claims(
        self, flat: Sequence[Any], added: dict[int, Event]
    ) -> tuple[list[Claim], list[Claim]]:
        """The claims, and those started, from CLAIM's answer; ``added`` holds the events
        (by position) whose bodies it left out."""
        claims: list[Claim] = []
        started: list[Claim] = []
        event: Event | None = None
        published = self._published
        entries = self._entries
        for index in range(0, len(flat), 7):
            receiver, attempt, expired, position, body, begun, entry = flat[index : index + 7]
            if body:
                known = published.get(int(position))
                event = known if known is not None else Event.from_json(body)
            elif added:
                event = added.get(int(position), event)
            assert event is not None, "a claim's first delivery of an event carries its body"
            claim = Claim(event, _text(receiver), int(attempt), bool(expired))
            claims.append(claim)
            entries[event.id, claim.receiver_id] = (position, entry)
            if len(entries) > _KEEP_ENTRIES:
                entries.popitem(last=False)
            if begun:
                started.append(claim)
        return claims, started

    # -- waking consumers, and the retention pass: background tasks of an open store -------

    def wake_on_work(self, wake: Callable[[], object]) -> float:
        """Call ``wake`` (on this event loop) when another process may have left work to
        claim; return the seconds between polls still needed besides (``poll_interval``).

        The runtime calls it when it consumes. A task of the store reads the stream
        ``{prefix}:wake``, which every publish (and redelivery, released claim, key
        let go) adds to, with ``XREAD BLOCK``: a wake that came while it was away
        (reconnecting, say) is read when it is back, since it reads on from the last
        entry it saw. Once a consumer registered here, the wakes that name only receivers
        none of its consumers registered are skipped (their work is not for this process),
        and so are those of this store's own publishes (the runtime that published claims
        at once, without a wake).
        """
        tasks = self._connection.tasks
        if tasks is not None:
            if not self._wakes:
                tasks.start_soon(self._listen)
            self._wakes.append(wake)
        return self.poll_interval

    async def _listen(self) -> None:
        client = self._connection.client
        key = self.keys.base + ":wake"
        last = "0-0"  # the newest entry wakes at once: a harmless extra claim
        block = max(int(self.poll_interval * 1000), 100)
        backoff = _LISTEN_BACKOFF[0]
        failing = False
        while self._wakes:
            try:
                found = await client.xread({key: last}, count=_WAKES_KEPT, block=block)
            except Exception as error:  # a Redis error, a refused command: poll meanwhile
                if not failing:
                    logger.warning(
                        "%s: cannot read the wakes of other processes (%s); polling every "
                        "%gs until it can",
                        self.path,
                        _describe(error),
                        self.poll_interval,
                    )
                failing = True
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _LISTEN_BACKOFF[1])
                continue
            if failing:
                logger.info("%s: reading the wakes of other processes again", self.path)
                failing, backoff = False, _LISTEN_BACKOFF[0]
            if found:
                entries = next(iter(found.values()))
                if entries:
                    last = _text(entries[-1].identifier)
                if self._for_us(entries):
                    for wake in self._wakes:
                        wake()

    def _for_us(self, entries: Sequence[Any]) -> bool:
        """Whether the wakes read may bring work for this process's consumers.

        The stream keeps its ``_WAKES_KEPT`` newest entries, so fewer read than that are
        every wake since the last read, and those naming only receivers registered by no
        consumer here can be skipped, as can this store's own publishes (the runtime that
        published claims without a wake); as many may have missed some, and wake.
        """
        mine = self._receivers
        if not mine or not entries or len(entries) >= _WAKES_KEPT:
            return True
        for entry in entries:
            fields = entry.field_values
            if fields.get(b"c") == self._token:
                continue
            named = fields.get(b"r")
            if named is None or not mine.isdisjoint(orjson.loads(named)):
                return True
        return False

    def _retain(self) -> None:
        """Start a retention pass in the background, unless the store is closing."""
        tasks = self._connection.tasks
        if tasks is not None:
            self._retaining = True
            tasks.start_soon(self._retention_pass)

    async def _retention_pass(self) -> None:
        """Prune done deliveries older than ``retention``, a chunk per call.

        While a chunk finds as many as it may prune, more are waiting: the next one
        follows after a pause as long as the chunk took (pruning takes at most about
        half of this connection's time, and other clients run in between), so pruning
        keeps up with any sustained rate. Each chunk stops at the first event newer
        than the cutoff. The next pass comes ``_RETENTION_EVERY`` seconds after the end.
        """
        assert self.retention is not None
        try:
            while True:
                began = time.monotonic()
                removed = await self._prune(
                    self._clock() - self.retention, _RETENTION_CHUNK, stop_at_newer=True
                )
                if removed < _RETENTION_CHUNK:
                    break
                await anyio.sleep(time.monotonic() - began)
        except StoreError as error:
            logger.warning("%s: the retention pass stopped (%s)", self.path, error.problem)
        except Exception:  # a bug: the store goes on, the next pass tries again
            logger.exception("%s: the retention pass failed", self.path)
        finally:
            self._retention_at = time.monotonic() + _RETENTION_EVERY
            self._retaining = False

    def _claim_args(self, claims: Sequence[Claim]) -> list[Any]:
        args: list[Any] = []
        entries = self._entries
        for claim in claims:
            position, entry = entries.get((claim.event.id, claim.receiver_id), _UNKNOWN)
            args += [claim.receiver_id, claim.event.id, claim.attempt, position, entry]
        return args

    async def start(self, consumer: ConsumerId, claims: Sequence[Claim]) -> list[Claim]:
        """Count these claims' attempts as started; return the ones no longer held."""
        if not claims:
            return []
        _, lost = await self.settle_and_start(consumer, (), claims)
        return lost

    async def renew(
        self, consumer: ConsumerId, claims: Sequence[Claim], *, lease: float
    ) -> list[Claim]:
        """Extend the leases ``consumer`` still holds; return the others."""
        if not claims:
            return []
        args = [str(consumer), self._now(), _seconds_us(lease), *self._claim_args(claims)]
        lost = await self._run("RENEW", args, "could not renew leases")
        return [claims[int(index) - 1] for index in lost]

    async def settle(self, consumer: ConsumerId, outcomes: Sequence[Outcome]) -> list[Claim]:
        """Complete, reschedule, dead-letter or release what ``consumer`` still holds."""
        if not outcomes:
            return []
        lost, _ = await self.settle_and_start(consumer, outcomes, ())
        return lost

    async def settle_and_start(
        self, consumer: ConsumerId, outcomes: Sequence[Outcome], claims: Sequence[Claim]
    ) -> tuple[list[Claim], list[Claim]]:
        """``settle`` the outcomes, then ``start`` the claims, in one script: the claims of
        the outcomes not settled, and the claims not started (those no longer held). One
        round trip where a runtime whose workers settle and start at once would make two.
        """
        if not outcomes and not claims:
            return [], []
        joined = self._joining.get(consumer)
        if joined is not None:
            # a script that waits for others to join, not sent yet: go along with it
            first_outcome, first_claim = len(joined.outcomes), len(joined.claims)
            joined.outcomes += outcomes
            joined.claims += claims
            await joined.done.wait()
            if joined.error is not None:
                raise StoreError(self.path, joined.error)
            lost, lost_starts = joined.lost
            mine = lost[first_outcome : first_outcome + len(outcomes)]
            mine_starts = lost_starts[first_claim : first_claim + len(claims)]
            return (
                [outcome.claim for outcome in mine if outcome is not None],
                [claim for claim in mine_starts if claim is not None],
            )
        joined = _Joined(consumer, list(outcomes), list(claims))
        self._joining[consumer] = joined
        try:
            # The settles and starts that other tasks make in the next few turns of the
            # loop (the runtime's settle task and its start writer, woken by the same
            # workers) join this script: one round trip, where they would make one each.
            # It waits while they come, a few turns at most (tens of microseconds).
            quiet = 0
            try:
                for _ in range(_JOIN_TURNS):
                    size = len(joined.outcomes) + len(joined.claims)
                    await anyio.lowlevel.checkpoint()
                    quiet = 0 if len(joined.outcomes) + len(joined.claims) > size else quiet + 1
                    if quiet >= _JOIN_QUIET:
                        break
            finally:
                if self._joining.get(consumer) is joined:
                    del self._joining[consumer]
            lost, lost_starts = await self._settle_script(consumer, joined.outcomes, joined.claims)
        except StoreError as error:
            joined.error = error.problem
            raise
        except BaseException:
            joined.error = "could not settle: the call it went along with was cancelled"
            raise
        else:
            joined.lost = (lost, lost_starts)
        finally:
            joined.done.set()
        count, starts = len(outcomes), len(claims)
        return (
            [outcome.claim for outcome in lost[:count] if outcome is not None],
            [claim for claim in lost_starts[:starts] if claim is not None],
        )

    async def _settle_script(
        self, consumer: ConsumerId, outcomes: Sequence[Outcome], claims: Sequence[Claim]
    ) -> tuple[list[Outcome | None], list[Claim | None]]:
        """SETTLE: per outcome, itself if not settled (else None); per claim, itself if not
        started (else None)."""
        args: list[Any] = [str(consumer), self._now(), len(outcomes)]
        entries = self._entries
        for outcome in outcomes:
            claim = outcome.claim
            head = [claim.receiver_id, claim.event.id, claim.attempt]
            key = "" if claim.event.key is None else "=" + claim.event.key
            position, entry = entries.get((claim.event.id, claim.receiver_id), _UNKNOWN)
            if isinstance(outcome, Completed):
                args += ["C", *head, "", "", "0", key, position, entry]
            elif isinstance(outcome, Rescheduled):
                args += ["S", *head, _seconds_us(outcome.delay), "", "0", key, position, entry]
            elif isinstance(outcome, Released):
                args += ["R", *head, "", "", "0", key, position, entry]
            elif isinstance(outcome, DeadLettered):
                letter = outcome.letter
                body = orjson.dumps(
                    {
                        "attempts": letter.attempts,
                        "error_type": letter.error_type,
                        "error_message": letter.error_message,
                        "failed_at": _us(letter.failed_at),
                    }
                )
                holds = "1" if outcome.holds_key else "0"
                args += ["D", *head, letter.id, body, holds, key, position, entry]
            else:  # pragma: no cover - Outcome is a closed union
                raise TypeError(f"not an outcome: {outcome!r}")
        args += self._claim_args(claims)
        for outcome in outcomes:  # settled, or not held: a later claim remembers its own
            entries.pop((outcome.claim.event.id, outcome.claim.receiver_id), None)
        lost, lost_starts = await self._run("SETTLE", args, "could not settle")
        not_settled: list[Outcome | None] = [None] * len(outcomes)
        for index in lost:
            not_settled[int(index) - 1] = outcomes[int(index) - 1]
        not_started: list[Claim | None] = [None] * len(claims)
        for index in lost_starts:
            not_started[int(index) - 1] = claims[int(index) - 1]
        return not_settled, not_started

    # -- what the store holds --------------------------------------------------------------

    async def leases(self) -> list[Lease]:
        """Held deliveries by expiry (then publish order), expired ones not yet taken too."""
        flat = await self._run("LEASES", [], "could not list leases")
        found = []
        for index in range(0, len(flat), 8):
            receiver, event_id, holder, attempt, expires, position, name, key = flat[
                index : index + 8
            ]
            lease = Lease(
                _text(event_id),
                _text(name),
                _text(receiver),
                None if not key else _text(key),
                int(attempt),
                _consumer_id(_text(holder)),
                _from_us(int(expires)),
            )
            found.append((lease.expires_at, int(position), lease))
        found.sort(key=lambda row: (row[0], row[1]))
        return [row[2] for row in found]

    async def backlog(self) -> list[Backlog]:
        """Per receiver id: ready, scheduled, leased and dead deliveries, and the oldest.

        ``oldest`` is the earliest ``occurred_at`` among its deliveries not done and
        not dead (kept in a sorted set per receiver).
        """
        flat = await self._run("BACKLOG", [self._now()], "could not read the backlog")
        rows = []
        for index in range(0, len(flat), 6):
            receiver, pending, scheduled, leased, dead, oldest = flat[index : index + 6]
            pending, scheduled, leased = int(pending), int(scheduled), int(leased)
            rows.append(
                Backlog(
                    _text(receiver),
                    ready=pending - scheduled - leased,
                    scheduled=scheduled,
                    leased=leased,
                    dead=int(dead),
                    oldest=_from_us(int(oldest)) if oldest else None,
                )
            )
        rows.sort(key=lambda row: row.receiver_id)
        return rows

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters ordered by ``failed_at``, then by when they were recorded."""

        async def read(client: Any) -> list[DeadLetter]:
            letters = []
            for entry in await client.xrange(self.keys.dead):
                fields = entry.field_values
                raw = orjson.loads(fields[b"l"])
                position = _text(fields[b"p"])
                found = await client.xrange(
                    self.keys.events, f"{position}-0", f"{position}-0", count=1
                )
                if not found:
                    continue
                event = Event.from_json(found[0].field_values[b"b"])
                letters.append(
                    DeadLetter(
                        id=_text(fields[b"id"]),
                        event=event,
                        receiver_id=_text(fields[b"r"]),
                        attempts=int(raw["attempts"]),
                        error_type=raw["error_type"],
                        error_message=raw["error_message"],
                        failed_at=_from_us(int(raw["failed_at"])),
                    )
                )
            return letters

        letters: list[DeadLetter] = await self._call(read, "could not read dead letters")
        letters.sort(key=lambda letter: letter.failed_at)
        return letters if limit is None else letters[: max(limit, 0)]

    async def pending(self) -> AsyncIterator[PendingDelivery]:
        """Deliveries not finished (ready, scheduled, leased, parked behind their key) in
        publish order, then receiver id, with the attempts started; a snapshot of the
        events added when iteration begins. Their list is read first, a page per script;
        the events are read a page at a time as they are yielded."""
        upto = await self.event_position()
        receivers = await self._call(
            lambda c: c.smembers(self.keys.base + ":receivers"), "could not read receivers"
        )
        rows: list[tuple[int, str, int]] = []
        for receiver in sorted(_text(name) for name in receivers):
            after = "-"
            while True:
                found = await self._run(
                    "PENDING",
                    [receiver, after, _PAGE, upto],
                    "could not read pending deliveries",
                )
                rows += [
                    (int(found[i]), receiver, int(found[i + 1])) for i in range(1, len(found), 2)
                ]
                if not found[0]:
                    break
                after = _text(found[0])
        rows.sort()
        for start in range(0, len(rows), _PAGE):
            page = rows[start : start + _PAGE]
            bodies = await self._run(
                "EVENTS_AT", [position for position, _, _ in page], "could not read events"
            )
            for (_, receiver, attempts), body in zip(page, bodies, strict=True):
                if body:
                    yield PendingDelivery(Event.from_json(body), receiver, attempts)

    async def redeliver(self, letter_ids: Sequence[str] | None = None) -> int:
        """Make dead letters ready again with no attempts (all when ``None``)."""
        if letter_ids is not None and not letter_ids:
            return 0
        args = ["1"] if letter_ids is None else ["0", *dict.fromkeys(letter_ids)]
        return int(await self._run("REDELIVER", args, "could not redeliver"))

    async def discard(self, letter_ids: Sequence[str]) -> int:
        """Delete dead letters for good, their deliveries done and never run; return how many."""
        ids = list(dict.fromkeys(letter_ids))
        if not ids:
            return 0
        return int(await self._run("DISCARD", [self._now(), *ids], "could not discard"))

    async def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}``."""
        raw = await self._call(lambda c: c.hgetall(self.keys.base + ":held"), "could not read")
        held = {}
        for field, value in raw.items():
            receiver, key = orjson.loads(field)
            held[(receiver, key)] = _text(value).partition(" ")[0]
        return held

    async def release_key(self, receiver_id: str, key: str) -> bool:
        """Let the next delivery of a held key go; the letter stays."""
        released = await self._run(
            "RELEASE_KEY", [receiver_id, key, self._now()], "could not release the key"
        )
        return bool(released)

    async def prune(self, *, older_than: datetime | None = None, limit: int | None = None) -> int:
        """Delete at most ``limit`` done deliveries of events published before ``older_than``
        (and events with nothing left), oldest first, a chunk per script."""
        return await self._prune(older_than, limit, stop_at_newer=False)

    async def _prune(
        self, older_than: datetime | None, limit: int | None, *, stop_at_newer: bool
    ) -> int:
        cutoff = "" if older_than is None else _us(older_than)
        room = math.inf if limit is None else max(limit, 0)
        stop = "1" if stop_at_newer else "0"
        removed = 0
        cursor: Any = "-"
        while removed < room:
            chunk = int(min(room - removed, 10_000))
            went, cursor = await self._run(
                "PRUNE", [cutoff, chunk, cursor, _PRUNE_SCAN, stop], "could not prune"
            )
            removed += int(went)
            if not cursor:
                break
        return removed

    async def stats(self) -> StoreStats:
        """Counts of events, of deliveries by state, and of idempotency key records."""

        async def read(client: Any) -> StoreStats:
            counts = await client.hgetall(self.keys.counts)
            keys = await client.zcard(self.keys.idempotency_times)
            return StoreStats(
                events=int(counts.get(b"events", 0)),
                pending=int(counts.get(b"pending", 0)),
                done=int(counts.get(b"done", 0)),
                dead=int(counts.get(b"dead", 0)),
                idempotency_keys=int(keys),
            )

        stats: StoreStats = await self._call(read, "could not read stats")
        return stats

    async def forget_idempotency_keys(self, before: datetime) -> int:
        """Delete the key records of events that occurred before ``before``."""
        total = 0
        while True:
            went = int(await self._run("FORGET", [_us(before), 1000], "could not forget keys"))
            total += went
            if went < 1000:
                return total

    async def delete_all(self) -> int:
        """Delete every key of this store's prefix: its events, deliveries, dead letters,
        consumers and idempotency keys. Return how many keys went. For tests and for
        retiring a prefix; the processes using it must be stopped first."""

        async def drop(client: Any) -> int:
            keys = [key async for key in client.scan_iter(match=self.keys.pattern, count=1000)]
            for start in range(0, len(keys), 500):
                await client.delete(keys[start : start + 500])
            return len(keys)

        removed: int = await self._call(drop, "could not delete its keys")
        return removed


def _is_redis_error(error: BaseException) -> bool:
    coredis = _import_coredis()
    return isinstance(error, coredis.exceptions.RedisError | OSError | TimeoutError)


def _describe(error: BaseException) -> str:
    """What went wrong, from the error's type and message (which never hold the URL)."""
    text = str(error).split(" script: ")[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
