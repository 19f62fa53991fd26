"""Fleet: the runtime's use of a store that processes share through leases (``LeasedStore``).

It takes the place of ``Journal`` when the store implements ``LeasedStore``.

Publishing: an event and its deliveries to this process's ``scope="fleet"``
receivers are added with one ``LeasedStore.publish``, durable before
``publish`` returns; publishes that arrive while a write is under way go
together in the next one. The store checks idempotency keys, so a repeat from
any runtime sharing it returns the key's first event. Deliveries to
``scope="process"`` receivers never reach the store: they go through the
buffer as they would without one.

Consuming (unless ``consume=False``): the runtime registers a consumer with
the routes of its fleet receivers and keeps it live with heartbeats. One task
claims as many deliveries as the buffer has room for, never more, and puts
them in the buffer; it claims again when this process publishes what it could
not claim in the publish, when a settle may have let a key move on or left room
for a batch, and otherwise polls with a short backoff. A store that can lease
in the publish's own write (``publish_and_claim``: ``SQLiteStore``,
``MemoryStore``) claims there what this process publishes for its own
receivers, within the buffer's room besides the publishes' own, so that those
run from memory with no claim of their own. The
workers run the claims, each once its attempt is recorded as started
(``LeasedStore.start``, written for all the workers that start at once in one
call): a claim counts as an attempt only then, so the claims a process had
taken into its buffer cost nothing when a receiver kills it. A store that can
start claims in the claim's own call (``claim_and_start``: ``RedisStore``,
``SQLiteStore``) starts there the ones the workers take next, the look-ahead,
saving a call per round, when those claims are next in line.
The outcomes (``Completed``, ``Rescheduled`` for a retry, which the store holds
until it is due, ``DeadLettered``) are settled in batches, and a claim counts
as finished for ``drain()`` once its settle is written. Leases are renewed
while the claims are held. A claim whose lease was lost is not settled here: another
consumer has it. A claim whose attempt is past its receiver's policy (the
processes of its earlier attempts died) is dead-lettered without running. At
the stop, what is running is drained and the rest is handed back
(``Released``), so other consumers take it at once.

Per-key order comes from the store, which hands out only the first unfinished
delivery of a (receiver, key), so keyed claims skip the in-process lanes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from ._broadcast import Broadcast
from ._buffer import DeliveryBuffer
from ._delivery import Delivery
from ._event import Event, new_event_id
from ._exceptions import StoreError
from ._failures import Failures, letter_info
from ._fleet_routes import RouteCheck, fleet_routes
from ._idempotency import IDEMPOTENCY_KEY, IdempotencyWindow
from ._intake import Batch, Dispatch, Waiting
from ._lowlevel import Waitable, loop_caller
from ._middleware import MiddlewareStack, notify
from ._policy import DeadLetter
from ._registry import Registry, Subscription
from ._state import RUNNING, STOPPED, Counters, Epoch, Epochs, RunState
from ._store._protocol import (
    Backlog,
    Claim,
    Consumer,
    ConsumerId,
    DeadLettered,
    LeasedStore,
    Outcome,
    Released,
    Rescheduled,
    Route,
    new_consumer_id,
)
from ._text import counted

__all__ = ["LEASE", "Fleet"]

logger = logging.getLogger("aevents.fleet")

LEASE: Final = 30.0
"""Seconds a claim is leased for; renewed every third of it while it is held."""
CLAIM_BATCH: Final = 256
"""Deliveries claimed at most in one call (fewer when the buffer has less room)."""
POLL_MIN: Final = 0.005
POLL_MAX: Final = 0.5
"""The claim loop's backoff, in seconds, when nothing woke it and nothing was claimable."""
POLL_WOKEN: Final = 0.05
"""The backoff's first step when the store wakes the claim loop (``wake_on_work``): its
polls then only find what no wake announces (a lease that ran out, another process's
retry come due), so it need not claim every few milliseconds between wakes."""
_TURNS_FOR_WORKERS: Final = 8
"""Turns of the event loop a publish that claims gives a woken worker to take the claims
started ahead before it (trio runs the tasks of one turn in no set order)."""

Held = tuple[str, str]  # (event id, receiver id)


class SettleAndStart(Protocol):
    """``RedisStore.settle_and_start``: settle outcomes and start claims in one call; the
    claims of the outcomes not settled, and the claims not started (no longer held)."""

    async def __call__(
        self, consumer: ConsumerId, outcomes: Sequence[Outcome], claims: Sequence[Claim]
    ) -> tuple[list[Claim], list[Claim]]: ...


class ClaimAndStart(Protocol):
    """``RedisStore.claim_and_start``: a claim that starts the first ``start`` of its
    claims whose lease did not run out; the claims, and those started."""

    async def __call__(
        self, consumer: ConsumerId, limit: int, *, lease: float, start: int
    ) -> tuple[list[Claim], list[Claim]]: ...


class PublishAndClaim(Protocol):
    """``SQLiteStore.publish_and_claim`` (and ``MemoryStore``'s): a publish that leases
    to the publisher, in its own transaction, the deliveries it adds for the publisher's
    receivers that a claim would take, up to ``limit``, and starts the first ``start``;
    the events that stand, the claims, and those started."""

    async def __call__(
        self,
        events: Sequence[tuple[Event, Sequence[str]]],
        consumer: ConsumerId,
        *,
        limit: int,
        lease: float,
        start: int,
    ) -> tuple[list[Event], list[Claim], list[Claim]]: ...


class _Write:
    """One publish waiting to be written, alone or with others, and its answer."""

    __slots__ = ("error", "event", "ready", "receiver_ids", "result")

    def __init__(self, event: Event, receiver_ids: list[str]) -> None:
        self.event = event
        self.receiver_ids = receiver_ids
        self.ready: Waitable | None = None  # made when it waits for another's write
        self.result: Event | None = None
        self.error: BaseException | None = None


class _Starts:
    """Claims whose attempts workers are about to run, recorded in one ``start`` call."""

    __slots__ = ("claims", "done", "failed", "lost", "waiting")

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.done = anyio.Event()
        self.lost: list[Claim] = []
        self.failed = False
        self.waiting = 0  # workers waiting for this write


class Fleet:
    """A ``LeasedStore`` as the runtime uses it: publish, claim, run, settle, release."""

    def __init__(
        self,
        store: LeasedStore,
        *,
        run: RunState,
        buffer: DeliveryBuffer,
        epochs: Epochs,
        failures: Failures,
        counters: Counters,
        registry: Registry,
        middleware: MiddlewareStack,
        keyed_dead_letters: Literal["skip", "hold"],
        consume: bool,
        idempotency: IdempotencyWindow,
        lease: float = LEASE,
        start_ahead: int | None = None,
    ) -> None:
        self.store = store
        self._run = run
        self._buffer = buffer
        self._epochs = epochs
        self._failures = failures
        self._counters = counters
        self._registry = registry
        self._middleware = middleware
        self._hold = keyed_dead_letters == "hold"
        self.consume = consume
        self._idempotency = idempotency
        self._window = idempotency.window
        self.lease = lease
        self.consumer: ConsumerId | None = None
        """This runtime's identity as a consumer, once it has registered."""
        self._routes_version = -1
        self._mine: frozenset[str] = frozenset()  # receiver ids this consumer registered
        self._started_at = datetime.now(UTC)
        self._tasks: anyio.abc.TaskGroup | None = None
        # Publishing: writes waiting for the one under way.
        self._writes: list[_Write] = []
        self._new_event: Callable[[], Waitable] = anyio.Event
        self._writing = False
        self.unjournaled = 0
        """Deliveries of events publish_nowait accepted whose store write has not finished."""
        # Claims held, by (event id, receiver id), and those whose attempt started.
        self._held: dict[Held, Claim] = {}
        self._running: set[Held] = set()
        # The gate: the last attempt of a delivery whose earlier attempts ended with their
        # process (``Claim.lease_expired``) runs alone here, the one it holds.
        self._alone: Held | None = None
        self._alone_waiting = 0
        self._gate_moved: anyio.Event | None = None
        # Outcomes waiting to be settled, with the epoch each one finishes.
        self._to_settle: list[tuple[Outcome, Epoch]] = []
        self._settle_batch: list[tuple[Outcome, Epoch]] = []  # being written
        self._settle_wanted: anyio.Event | None = None
        self._settle_room: anyio.Event | None = None
        # Starts: the batch the next ``start`` call writes, and what wakes its task; the
        # write that counts each claim being started; and the look-ahead: claims waiting
        # in the buffer that are started ahead of a worker taking them (``_started``
        # once written, ``_starting_ahead`` while in a write), up to ``_ahead`` of them
        # (the runtime's ``start_ahead``, ``workers`` by default).
        self._starts: _Starts | None = None
        self._start_wanted: anyio.Event | None = None
        # Workers woken by a start write that have not run yet (they take the claims next).
        self._start_woken = 0
        self._starting: dict[Held, _Starts] = {}
        self._started: set[Held] = set()
        self._starting_ahead: set[Held] = set()
        self._ahead = buffer.workers if start_ahead is None else start_ahead
        # A store that starts claims in the claim's own call (RedisStore) starts the
        # look-ahead there: one call less per round.
        self._claim_and_start: ClaimAndStart | None = getattr(store, "claim_and_start", None)
        # Starts the look-ahead asked for in calls under way (claims, publishes that claim),
        # which ``_ahead_wanted`` counts as started: the look-ahead never passes ``_ahead``.
        self._ahead_asked = 0
        # A store that leases to the publisher in the publish's own write (SQLiteStore,
        # MemoryStore): what this process publishes for its own receivers is claimed
        # there, and runs from memory without a claim of its own.
        self._publish_and_claim: PublishAndClaim | None = getattr(store, "publish_and_claim", None)
        # A store that settles and starts in one call (RedisStore) takes the starts waiting
        # along with each settle: one call where the workers would make two.
        self._settle_and_start: SettleAndStart | None = getattr(store, "settle_and_start", None)
        # The claim loop: woken by publishes, settles and drain(); rounds counted for drain().
        self._claim_wanted = anyio.Event()
        self._rounds_started = 0
        self._rounds_finished = 0
        self._round_done = anyio.Event()
        self._last_round_full = False
        self._claimed = 0  # claims taken since the start, for drain()
        self._next_due = math.inf  # when the earliest retry this process rescheduled is due
        self._poll_max = POLL_MAX  # longer when the store wakes the claims (wake_on_work)
        # The least room a claim waits for while the buffer holds enough to keep the workers
        # busy: claims of a few deliveries each would cost a write per few deliveries.
        self._refill = max(1, min(CLAIM_BATCH, buffer.size // 4))
        self._poll_min = POLL_MIN  # so is the first step (POLL_WOKEN)
        self._held_keys: dict[tuple[str, str], str] = {}
        self.routes = RouteCheck(registry)
        """This process's routes against the live consumers' (warnings at publish)."""
        self.broadcast = Broadcast(
            store,
            run=run,
            buffer=buffer,
            epochs=epochs,
            registry=registry,
            idempotency=idempotency,
        )
        """The tail of the store's events, for the process receivers of every process."""

    # ------------------------------------------------------------------ start and stop

    async def open(self) -> None:
        """Open the store and forget its idempotency keys older than the window."""
        await self.store.open()
        try:
            before = datetime.now(UTC) - timedelta(seconds=self._window)
            await self.store.forget_idempotency_keys(before)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.close()
            raise

    async def start(self, tasks: anyio.abc.TaskGroup, dispatch: Dispatch) -> None:
        """Register the consumer (unless ``consume=False``), log how this process's routes
        compare with the live consumers', and start the background tasks, the tail of the
        store's events among them (``dispatch`` queues their process deliveries).

        Every task starts after the last await here: they run once the runtime runs.
        """
        self._tasks = tasks
        self._started_at = datetime.now(UTC)
        _, self._new_event = loop_caller()  # the loop's own events: publishes wait on them
        await self.broadcast.open()
        if self.consume:
            self.consumer = new_consumer_id()
            await self._register()
            if self._hold:
                self._held_keys = await self.store.held_keys()
            # A store that can tell when other processes left work (PostgresStore's
            # LISTEN) wakes the claim loop, which then polls only as a fallback.
            wake_on_work = getattr(self.store, "wake_on_work", None)
            if wake_on_work is not None:
                self._poll_max = max(POLL_MAX, float(wake_on_work(self._work_arrived)))
                self._poll_min = POLL_WOKEN
            logger.info(
                "consuming from the store as %s: %s",
                self.consumer,
                ", ".join(sorted(self._mine)) or "no receivers",
                extra={"consumer": str(self.consumer), "receiver_ids": sorted(self._mine)},
            )
        else:
            logger.info("publishing to the store without consuming (consume=False)")
        await self._compare_routes()
        tasks.start_soon(self._forget_idempotency_keys)
        self.broadcast.start(tasks, dispatch)
        tasks.start_soon(self._heartbeats)
        if self.consume:
            tasks.start_soon(self._claims)
            tasks.start_soon(self._renewals)
            tasks.start_soon(self._settles)
            tasks.start_soon(self._write_starts)

    async def _compare_routes(self) -> None:
        """Log, at start, how this process's routes compare with the live consumers'."""
        try:
            consumers = await self.store.consumers()
            self.routes.summary(consumers)
            self.routes.refresh(self._others(consumers))
        except StoreError as error:
            logger.warning("could not read the live consumers (%s)", error)

    def _routes(self) -> list[Route]:
        return fleet_routes(self._registry)

    def _others(self, consumers: list[Consumer]) -> list[Consumer]:
        """The live consumers but this one, for the checks at publish: its routes are this
        registry's (or will be at the next heartbeat, when it changed)."""
        return [consumer for consumer in consumers if consumer.id != self.consumer]

    async def _register(self) -> None:
        assert self.consumer is not None
        self._routes_version = self._registry.version
        routes = self._routes()
        await self.store.register(self.consumer, routes, ttl=self.lease)
        self._mine = frozenset(route.receiver_id for route in routes)

    async def stop(self) -> None:
        """Settle what piled up, hand back every claim still held, unregister, close.

        Called once the runtime's tasks are gone. A claim whose attempt started
        and was cut off is rescheduled at once (that attempt counts); one that
        never started is released (it does not).
        """
        with anyio.CancelScope(shield=True):
            try:
                if self.consumer is not None:
                    await self._hand_back(self.consumer)
            finally:
                await self.store.close()

    async def _hand_back(self, consumer: ConsumerId) -> None:
        # A settle the stop cancelled may or may not have been written: settle it again
        # (what was written already comes back as not held, and changes nothing).
        outcomes = [outcome for outcome, _ in (*self._settle_batch, *self._to_settle)]
        self._settle_batch, self._to_settle = [], []
        settled = {(o.claim.event.id, o.claim.receiver_id) for o in outcomes}
        for held, claim in self._held.items():
            if held in settled:
                continue
            outcomes.append(Rescheduled(claim, 0.0) if held in self._running else Released(claim))
        self._held.clear()
        self._running.clear()
        self._started.clear()
        self._starting_ahead.clear()
        try:
            if outcomes:
                await self.store.settle(consumer, outcomes)
            await self.store.unregister(consumer)
        except StoreError as error:
            logger.warning(
                "could not hand back %s at the stop (%s); other consumers take them "
                "when their leases run out",
                counted(len(outcomes), "claim"),
                error,
            )

    async def _forget_idempotency_keys(self) -> None:
        """Drop the store's idempotency keys older than the window, every so often."""
        while True:
            await anyio.sleep(min(self._window, 600.0))
            before = datetime.now(UTC) - timedelta(seconds=self._window)
            try:
                await self.store.forget_idempotency_keys(before)
            except StoreError as error:
                logger.warning("could not forget old idempotency keys: %s", error)

    # ------------------------------------------------------------------ publishing

    async def publish(self, waiting: Waiting, dispatch: Dispatch) -> Event:
        """Add an event whose room is reserved to the store, then queue its process deliveries.

        Returns the event, or the first event of its idempotency key when the
        store knows the key already (then nothing is queued). The write is
        shielded: once under way, cancelling the publisher cannot leave it
        unsure whether the event was accepted. On failure the room is given back.
        """
        fleet = [route.receiver_id for route in waiting.routes if route.scope == "fleet"]
        try:
            with anyio.CancelScope(shield=True):
                standing = await self._stored(
                    waiting.event, fleet, len(fleet) < len(waiting.routes)
                )
        except BaseException:
            self._buffer.release(len(waiting.routes))
            raise
        return self._queue_local(waiting, standing, len(fleet), dispatch)

    def publish_in_background(
        self, tasks: anyio.abc.TaskGroup, waiting: Waiting, dispatch: Dispatch
    ) -> None:
        """``publish_nowait``: add to the store in the background, then queue locally.

        ``waiting.epoch`` counts one more for the write (``drain()`` waits for
        it), and ``unjournaled`` its fleet deliveries until it is done. When the
        store already knows the event's idempotency key, nothing runs and later
        repeats here return the key's first event. When the store refuses the
        event, its process deliveries still run; its fleet deliveries run here,
        from memory and without the store's guarantee, if this process consumes,
        and are lost (counted as dropped) if it does not; an error says which.
        """
        self.unjournaled += sum(1 for route in waiting.routes if route.scope == "fleet")
        waiting.epoch.unfinished += 1
        tasks.start_soon(self._publish_then_dispatch, waiting, dispatch)

    async def _publish_then_dispatch(self, waiting: Waiting, dispatch: Dispatch) -> None:
        event = waiting.event
        fleet = [route.receiver_id for route in waiting.routes if route.scope == "fleet"]
        try:
            with anyio.CancelScope(shield=True):
                standing = await self._stored(event, fleet, len(fleet) < len(waiting.routes))
        except StoreError as error:
            self._refused_in_background(waiting, dispatch, fleet, error)
            return
        finally:
            self.unjournaled -= len(fleet)
        if standing.id != event.id:
            self._counters.published -= 1  # counted when accepted: it is a repeat instead
        self._queue_local(waiting, standing, len(fleet), dispatch)
        waiting.epoch.finish()

    def _refused_in_background(
        self, waiting: Waiting, dispatch: Dispatch, fleet: list[str], error: StoreError
    ) -> None:
        """A ``publish_nowait`` the store refused: run what can run here, from memory."""
        event = waiting.event
        here = self.consume and bool(fleet) and self._run.state is not STOPPED
        if here:
            fate = "delivering it here without the store's guarantee"
            routes = tuple(
                attrs.evolve(route, scope="process") if route.scope == "fleet" else route
                for route in waiting.routes
            )
        else:
            fate = "its " + counted(len(fleet), "delivery") + " to fleet receivers are lost"
            self._counters.dropped += len(fleet)
            routes = tuple(route for route in waiting.routes if route.scope == "process")
            self._buffer.release(len(fleet))
        logger.error(
            "event %s (%r) accepted by publish_nowait could not be added to the store (%s); %s",
            event.id,
            event.name,
            error,
            fate,
            extra={"event_id": event.id, "event_name": event.name},
        )
        if routes and self._run.state is not STOPPED:
            dispatch(event, routes, waiting.epoch)
        else:
            self._buffer.release(len(routes))
        waiting.epoch.finish()

    def _queue_local(
        self, waiting: Waiting, standing: Event, fleet: int, dispatch: Dispatch
    ) -> Event:
        """Give back the room of the deliveries the store holds; queue the process ones."""
        routes = waiting.routes
        if standing.id != waiting.event.id:  # a repeat of a key another publish recorded first
            self._buffer.release(len(routes))
            self._counters.repeated += 1
            key = waiting.event.metadata.get(IDEMPOTENCY_KEY)
            if key is not None:  # later repeats here answer with the key's first event
                self._idempotency.add(key, standing)
            return standing
        self._buffer.release(fleet)
        if fleet < len(routes):
            local = tuple(route for route in routes if route.scope == "process")
            if self._run.state is STOPPED:
                self._buffer.release(len(local))
            else:
                dispatch(waiting.event, local, waiting.epoch)
        return standing

    async def publish_many(self, batch: Batch, dispatch: Dispatch) -> None:
        """Add a batch whose room is reserved to the store in one write, all of it or none,
        then queue its process deliveries. The write is shielded; on failure the
        room is given back and the error raised, with nothing accepted."""
        entries = _fleet_entries(batch)
        try:
            with anyio.CancelScope(shield=True):
                await self._write_batch(entries)
        except BaseException:
            self._buffer.release(batch.deliveries)
            raise
        self._queue_batch_locally(batch, entries, dispatch)

    async def _write_batch(self, entries: list[tuple[Event, list[str]]]) -> None:
        """One all-or-none ``LeasedStore.publish`` of a batch (batches refuse idempotency
        keys, so each event stands for itself); the tail is told which are this process's."""
        if not entries:
            return
        events = [event for event, _ in entries]
        for event in events:
            self.broadcast.writing(event)
        try:
            standing = await self._publish_entries(entries)
        except BaseException:
            self.broadcast.not_added(events)
            raise
        self.broadcast.written(events, standing)

    def publish_many_in_background(
        self, tasks: anyio.abc.TaskGroup, batch: Batch, dispatch: Dispatch
    ) -> None:
        """``publish_many_nowait``: add the batch to the store in the background, then queue
        its process deliveries (as ``publish_in_background`` does for one event)."""
        self.unjournaled += sum(len(ids) for _, ids in _fleet_entries(batch))
        batch.epoch.unfinished += 1
        tasks.start_soon(self._publish_many_then_dispatch, batch, dispatch)

    async def _publish_many_then_dispatch(self, batch: Batch, dispatch: Dispatch) -> None:
        entries = _fleet_entries(batch)
        fleet = sum(len(ids) for _, ids in entries)
        try:
            with anyio.CancelScope(shield=True):
                await self._write_batch(entries)
        except StoreError as error:
            self._counters.dropped += fleet
            logger.error(  # noqa: TRY400 - the store error's message says it all
                "%s accepted by publish_many_nowait could not be added to the store (%s); "
                "their %s to fleet receivers are lost",
                counted(len(entries), "event"),
                error,
                counted(fleet, "delivery"),
                extra={"events": len(entries)},
            )
        finally:
            self.unjournaled -= fleet
        self._queue_batch_locally(batch, entries, dispatch)
        batch.epoch.finish()

    def _queue_batch_locally(
        self, batch: Batch, entries: list[tuple[Event, list[str]]], dispatch: Dispatch
    ) -> None:
        """Give back the room of what the store holds; queue the process deliveries."""
        fleet = sum(len(ids) for _, ids in entries)
        self._buffer.release(fleet)  # the write claimed, or woke the claim loop for, its own
        if fleet == batch.deliveries:
            return
        if self._run.state is STOPPED:
            self._buffer.release(batch.deliveries - fleet)
            return
        for event, routes in zip(batch.events, batch.routes, strict=True):
            local = tuple(route for route in routes if route.scope == "process")
            if local:
                dispatch(event, local, batch.epoch)

    async def _stored(self, event: Event, receiver_ids: list[str], local: bool) -> Event:
        """Write ``event`` (with any publishes that queue up meanwhile); the event that stands.

        An event is added with its fleet deliveries, or with none when it has
        process receivers here (``local``: the other processes' tails run theirs)
        or an idempotency key; an event routed to nothing here is not added.
        """
        if not receiver_ids and not local and IDEMPOTENCY_KEY not in event.metadata:
            return event
        write = _Write(event, receiver_ids)
        self.broadcast.writing(event)
        self._writes.append(write)
        if self._writing:
            write.ready = ready = self._new_event()
            await ready.wait()
            if write.error is not None:
                raise write.error
            if write.result is not None:
                return write.result
            # Handed the lead: write what queued up behind the last write.
        self._writing = True
        batch, self._writes = self._writes, []
        try:
            results = await self._publish_batch(batch)
        except StoreError as error:
            for each in batch:  # each publisher raises an error of its own
                each.error = error if each is write else StoreError(error.path, error.problem)
            self.broadcast.not_added([each.event for each in batch])
        except BaseException as error:
            for each in batch:
                each.error = error
            self.broadcast.not_added([each.event for each in batch])
        else:
            for each, result in zip(batch, results, strict=True):
                each.result = result
            self.broadcast.written([each.event for each in batch], results)
        finally:
            for each in batch:
                if each.ready is not None:
                    each.ready.set()
            if self._writes:
                lead = self._writes[0].ready
                assert lead is not None  # it waits: a write was under way when it came
                lead.set()  # it leads the next write
            else:
                self._writing = False
        if write.error is not None:
            raise write.error
        assert write.result is not None
        return write.result

    async def _publish_batch(self, batch: list[_Write]) -> list[Event]:
        """One ``LeasedStore.publish`` of the writes in ``batch``; with a store that can,
        the deliveries to this process's receivers are claimed (and the look-ahead's share
        started) in the same write, and queued here at once. Otherwise, or for those the
        store could not lease (behind their key), the claim loop is woken."""
        return await self._publish_entries([(each.event, each.receiver_ids) for each in batch])

    async def _publish_entries(self, entries: list[tuple[Event, list[str]]]) -> list[Event]:
        """``_publish_batch`` of these events (a ``publish_many`` batch's too)."""
        mine = self._mine
        wanted = sum(len(mine.intersection(receiver_ids)) for _, receiver_ids in entries)
        if not wanted:
            return await self.store.publish(entries)
        if self._publish_and_claim is not None:
            # Claims started ahead (or being started) wait in the buffer for a worker woken
            # to take them: let the workers take them first, which gives the look-ahead
            # room to start these in this write (a few turns of the loop at most: a woken
            # worker runs next).
            for _ in range(_TURNS_FOR_WORKERS):
                if not (
                    (self._started or self._starting_ahead)
                    and (self._buffer.waking or self._start_woken)
                ):
                    break
                await anyio.lowlevel.cancel_shielded_checkpoint()
        # What the buffer has room for besides the room these publishes hold, as a claim
        # would take: the deliveries beyond it stay free, for any consumer.
        limit = min(wanted, self._buffer.size - self._buffer.queued)
        if (
            self._publish_and_claim is None
            or self.consumer is None
            or self._run.state is not RUNNING
            or limit <= 0
        ):
            results = await self.store.publish(entries)
            self._claim_wanted.set()  # this process runs some of them: claim now
            return results
        start = min(self._ahead_in_line(), limit)
        self._ahead_asked += start
        try:
            results, claims, started = await self._publish_and_claim(
                entries, self.consumer, limit=limit, lease=self.lease, start=start
            )
        finally:
            self._ahead_asked -= start
        if claims:
            self._accept(claims, started)
            self._claimed += len(claims)
            self._start_ahead()
        if len(claims) < wanted:
            self._claim_wanted.set()  # some wait behind their key, or were repeats: claim
        return results

    # ------------------------------------------------------------------ claiming

    async def _claims(self) -> None:
        """Claim what the buffer has room for, whenever there may be something to claim."""
        assert self.consumer is not None
        try:
            await self._claim_while_running()
        finally:
            self._round_done.set()  # a drain() waiting for a round waits no more

    async def _claim_while_running(self) -> None:
        assert self.consumer is not None
        buffer = self._buffer
        delay = self._poll_min
        while self._run.state is RUNNING:
            room = buffer.size - buffer.queued
            if room <= 0:  # wait in line with the publishers for room, then claim that much
                await buffer.reserve(1)
                if buffer.closed:
                    return
                buffer.release(1)
                continue
            if not self._room_to_claim():
                # Enough queued to keep the workers busy: wait for room for a batch worth
                # a write of its own (settles wake the loop, as when room limited a claim).
                self._last_round_full = True
                self._claim_wanted = anyio.Event()
                with anyio.move_on_after(self._poll_max):
                    await self._claim_wanted.wait()
                continue
            limit = min(room, CLAIM_BATCH)
            if self._routes_version != self._registry.version:
                await self._register_again()  # receivers changed: claim for the new ones
            self._claim_wanted = anyio.Event()
            self._rounds_started += 1
            try:
                claims, started = await self._claim(limit)
            except StoreError as error:
                claims, started = [], []
                await self._claim_failed(error)
            self._accept(claims, started)
            if claims:
                self._start_ahead()
            self._claimed += len(claims)
            self._last_round_full = len(claims) == limit
            self._rounds_finished += 1
            self._round_done.set()
            self._round_done = anyio.Event()
            if self._last_round_full or self._claim_wanted.is_set():
                delay = self._poll_min
                continue
            due = self._next_due - anyio.current_time()
            if due <= 0:  # a retry rescheduled here is due: claim it now
                self._next_due = math.inf
                continue
            with anyio.move_on_after(min(delay, due)):
                await self._claim_wanted.wait()
            woken = self._claim_wanted.is_set()
            delay = self._poll_min if woken else min(delay * 2, self._poll_max)

    def _room_to_claim(self) -> bool:
        """Whether a claim is worth its write: the buffer has room for a batch, or too few
        queued to keep the workers busy (and any room at all)."""
        buffer = self._buffer
        room = buffer.size - buffer.queued
        return room >= self._refill or (room > 0 and len(buffer.items) < buffer.workers)

    async def _claim(self, limit: int) -> tuple[list[Claim], list[Claim]]:
        """Claim ``limit`` at most; with a store that can, start the look-ahead's share of
        them in the same call (as ``_start_ahead`` would next): the claims, those started."""
        assert self.consumer is not None
        wanted = self._ahead_in_line()
        if self._claim_and_start is None or wanted <= 0:
            return await self.store.claim(self.consumer, limit, lease=self.lease), []
        self._ahead_asked += wanted
        try:
            return await self._claim_and_start(self.consumer, limit, lease=self.lease, start=wanted)
        finally:
            self._ahead_asked -= wanted

    def _work_arrived(self) -> None:
        """The store says another process may have left work to claim."""
        self._claim_wanted.set()

    async def _claim_failed(self, error: StoreError) -> None:
        """A claim the store refused: most likely the registration ran out; register again."""
        logger.warning("could not claim deliveries (%s); registering again", error)
        await self._register_again()

    async def _register_again(self) -> None:
        try:
            await self._register()
        except StoreError as error:
            logger.warning("could not register as a consumer (%s)", error)
            await anyio.sleep(POLL_MAX)

    def _accept(self, claims: list[Claim], started: list[Claim]) -> None:
        """Queue claims (``started``: those whose start the claim wrote, now started
        ahead); settle at once those that cannot run here."""
        epoch = self._epochs.current
        ahead = {(claim.event.id, claim.receiver_id) for claim in started}
        held_claims, started_ahead, readmit = self._held, self._started, self._buffer.readmit
        started_at = self._started_at
        # A claim batch is mostly of a few (receiver, name) pairs: look each up once.
        subscriptions: dict[tuple[str, str], tuple[Subscription | None, int]] = {}
        for claim in claims:
            event, receiver_id = claim.event, claim.receiver_id
            held = (event.id, receiver_id)
            held_claims[held] = claim
            found = subscriptions.get((receiver_id, event.name))
            if found is None:
                subscription = self._registry.receiver(receiver_id, event.name)
                attempts = (
                    0 if subscription is None else self._failures.policy(subscription).attempts
                )
                found = subscriptions[receiver_id, event.name] = (subscription, attempts)
            subscription, attempts = found
            if subscription is None or subscription.scope != "fleet":
                # Unsubscribed since the consumer registered: hand it back, register again.
                self._routes_version = -1
                epoch.unfinished += 1
                self._queue_outcome(Released(claim), epoch)
                continue
            if claim.attempt > attempts:
                epoch.unfinished += 1
                self._queue_outcome(self._exhausted(claim, subscription), epoch)
                continue
            epoch.unfinished += 1
            if held in ahead:
                started_ahead.add(held)
            replay = claim.lease_expired or event.occurred_at < started_at
            # Within the room the claim asked for, unless publishes took some meanwhile.
            readmit(Delivery(event, subscription, claim.attempt, epoch, replay))

    def _exhausted(self, claim: Claim, subscription: Subscription) -> DeadLettered:
        """A claim past its policy: each earlier attempt's lease ran out. Dead, unrun."""
        attempts = claim.attempt - 1
        self._counters.dead += 1
        letter = DeadLetter(
            id=new_event_id(),
            event=claim.event,
            receiver_id=claim.receiver_id,
            attempts=attempts,
            error_type="aevents.AttemptsExhausted",
            error_message="the lease of each of its "
            + counted(attempts, "attempt")
            + " ran out: the processes running it stopped or hung",
            failed_at=datetime.now(UTC),
        )
        logger.error(
            "receiver %r: event %s (%r) dead-lettered as %s without running: %s",
            claim.receiver_id,
            claim.event.id,
            claim.event.name,
            letter.id,
            letter.error_message,
            extra={
                "event_id": claim.event.id,
                "receiver_id": claim.receiver_id,
                "dead_letter_id": letter.id,
                "attempt": claim.attempt,
            },
        )
        if self._middleware.outcomes:
            info = letter_info(self._registry, letter, replay=True)
            notify(self._middleware.outcomes, "on_dead_letter", info, letter)
        return self.dead_lettered(claim, letter)

    def dead_lettered(self, claim: Claim, letter: DeadLetter) -> DeadLettered:
        """The outcome of a claim whose attempts ran out, holding its key per the policy."""
        return DeadLettered(claim, letter, holds_key=self._hold and claim.event.key is not None)

    # ------------------------------------------------------------------ running

    async def start_attempt(self, delivery: Delivery) -> Claim | None:
        """The claim a worker is about to run, once the store counts its attempt as
        started; None if it must not run.

        Not run: its lease was lost (another consumer has it), the store could not
        record the start (the lease runs out and it runs again, uncounted), or the
        runtime is stopping, and a claim not started yet is handed back instead.
        """
        held = (delivery.event.id, delivery.subscription.receiver_id)
        claim = self._held.get(held)
        if claim is None:
            delivery.epoch.finish()
            return None
        if self._run.state is not RUNNING:
            self._queue_outcome(Released(claim), delivery.epoch)
            return None
        gated = self._alone is not None or self._alone_waiting or claim.lease_expired
        if gated and not await self._through_gate(delivery, claim):
            return None
        # Running from here on: a stop hands it back as Rescheduled, which keeps the
        # attempt counted if the start was written and counts nothing if it was not.
        self._running.add(held)
        written = held in self._started  # started ahead: its start is written already
        self._started.discard(held)
        self._starting_ahead.discard(held)  # a worker's now: it waits for the write
        starts = None if written else (self._starting.get(held) or self._start(claim))
        if not self._started and not self._starting_ahead:
            self._start_ahead()  # in the same write as this one's, if it waits for one
        if starts is not None:
            starts.waiting += 1
            try:
                await starts.done.wait()
            finally:
                starts.waiting -= 1
                if starts.done.is_set():
                    self._start_woken -= 1
            if starts.failed or self._held.get(held) is not claim:
                self._ended(held)
                delivery.epoch.finish()
                return None
        return claim

    def _start(self, claim: Claim) -> _Starts:
        """Add ``claim`` to the next ``start`` write (waking its task); the write."""
        starts = self._starts
        if starts is None:
            starts = self._starts = _Starts()
            if self._start_wanted is not None:
                self._start_wanted.set()
        starts.claims.append(claim)
        self._starting[claim.event.id, claim.receiver_id] = starts
        return starts

    def _start_ahead(self) -> None:
        """Start the claims next in the buffer, up to ``_ahead`` of them, so that workers
        that take them need not wait for a write of their own.

        A process that dies counts these attempts though they never ran, as it counts
        the ones running beside a crash: at most ``_ahead`` more. Not while a delivery
        waits to run alone, nor for deliveries that may have to (their last attempt
        followed a process that died), whose starts are their own.
        """
        wanted = self._ahead_wanted()
        if wanted <= 0:
            return
        # The first claims in line go to the other workers, which start them in this same
        # write if they take them while it is being made: the look-ahead starts the next.
        skip = skipping = min(self._buffer.workers - 1, len(self._buffer.items) - wanted)
        scanned = 0
        for queued in self._buffer.items:
            scanned += 1
            if wanted <= 0 or scanned > 4 * self._ahead + skip:
                break
            event, subscription = queued[0], queued[1]
            if subscription.scope != "fleet":
                continue
            held = (event.id, subscription.receiver_id)
            claim = self._held.get(held)
            if (
                claim is None
                or claim.lease_expired
                or held in self._started
                or held in self._starting
                or held in self._running
            ):
                continue
            if skipping > 0:
                skipping -= 1
                continue
            self._start(claim)
            self._starting_ahead.add(held)
            wanted -= 1

    def _ahead_in_line(self) -> int:
        """How many claims a claim (or a publish that claims) may start: the look-ahead's
        share, when they are next in line (the buffer holds fewer than a worker each
        before them that still need a start). Started further back, they would wait there
        as the look-ahead, and the claims before them would each wait for a start of
        their own. Claims started already, or in the write being made, need none: a batch
        queued behind a started batch is next in line, as in a loop that claims and
        starts a batch at a time."""
        waiting = len(self._buffer.items) - len(self._started) - len(self._starting_ahead)
        if waiting >= self._buffer.workers:
            return 0
        return max(self._ahead_wanted(), 0)

    def _ahead_wanted(self) -> int:
        """How many more claims the look-ahead may start (none while one runs alone)."""
        if self._alone is not None or self._alone_waiting or self._run.state is not RUNNING:
            return 0
        return self._ahead - len(self._started) - len(self._starting_ahead) - self._ahead_asked

    def _unheld(self, held: Held) -> None:
        """Forget a claim this process no longer holds (settled, lost or handed back)."""
        self._held.pop(held, None)
        self._started.discard(held)
        self._starting_ahead.discard(held)

    async def _through_gate(self, delivery: Delivery, claim: Claim) -> bool:
        """Wait until this attempt may run; whether it still may (its claim is held).

        A delivery whose earlier attempts ended with their processes, now on its last
        attempt, runs alone: it waits until nothing else runs, and nothing else starts
        until its outcome is written. So when a receiver kills its process, the attempts
        that ran beside it count once, run again alone if that was their last, and only
        the receiver that kills its process on its own ends as a dead letter.
        """
        held = (claim.event.id, claim.receiver_id)
        policy = self._failures.policy(delivery.subscription)
        alone = claim.lease_expired and claim.attempt >= policy.attempts
        if alone:
            self._alone_waiting += 1
        try:
            while self._alone is not None or (
                (self._running or self._starting) if alone else self._alone_waiting
            ):
                if self._gate_moved is None:
                    self._gate_moved = anyio.Event()
                await self._gate_moved.wait()
            if alone:
                self._alone = held  # the gate is this one's from here on
                if self._started:
                    await self._release_started_ahead()
        finally:
            if alone:
                self._alone_waiting -= 1
        if self._held.get(held) is not claim or self._run.state is not RUNNING:
            if self._held.get(held) is claim:
                self._queue_outcome(Released(claim), delivery.epoch)
            else:
                delivery.epoch.finish()
            if self._alone == held:
                self._alone = None
            self._move_gate()
            return False
        if alone:
            logger.info(
                "event %s for receiver %r runs alone: its last attempt (%d) follows attempts "
                "whose process stopped",
                claim.event.id,
                claim.receiver_id,
                claim.attempt,
                extra={"event_id": claim.event.id, "receiver_id": claim.receiver_id},
            )
        return True

    async def _release_started_ahead(self) -> None:
        """Hand back, uncounted, the claims started ahead that no worker took yet, so
        that a crash while a delivery runs alone counts that one attempt only."""
        assert self.consumer is not None
        claims = [self._held[held] for held in self._started if held in self._held]
        for claim in claims:
            self._unheld((claim.event.id, claim.receiver_id))  # its worker skips it
        self._started.clear()
        try:
            await self.store.settle(self.consumer, [Released(claim) for claim in claims])
        except StoreError as error:
            logger.warning(
                "could not hand back %s started ahead (%s); their leases run out",
                counted(len(claims), "claim"),
                error,
            )
        self._claim_wanted.set()

    def _ended(self, held: Held) -> None:
        """An attempt that ran (or was to run) here is over: its outcome is written, or it
        was lost or never started."""
        self._running.discard(held)
        if self._alone == held:
            self._alone = None
        self._move_gate()

    def _move_gate(self) -> None:
        if self._gate_moved is not None:
            self._gate_moved.set()
            self._gate_moved = None

    async def _write_starts(self) -> None:
        """Record the attempts workers are about to run, all that piled up in one call."""
        assert self.consumer is not None
        while True:
            starts = self._starts
            if starts is None:
                self._start_wanted = anyio.Event()
                await self._start_wanted.wait()
                self._start_wanted = None
                continue
            self._starts = None
            try:
                lost = await self.store.start(self.consumer, starts.claims)
            except StoreError as error:
                self._start_failed(starts, error)
            else:
                self._start_written(starts, lost)
            finally:
                self._start_over(starts)
            # Let the workers this write woke run first: those that need a start of their
            # own join the next write, and the look-ahead with them.
            await anyio.lowlevel.checkpoint()

    def _start_written(self, starts: _Starts, lost: list[Claim]) -> None:
        for claim in lost:  # another consumer took it meanwhile: not run here
            held = (claim.event.id, claim.receiver_id)
            if self._held.get(held) == claim:
                self._unheld(held)
        for claim in starts.claims:
            held = (claim.event.id, claim.receiver_id)
            if held in self._starting_ahead and self._held.get(held) is claim:
                self._starting_ahead.discard(held)
                self._started.add(held)  # written ahead of its worker

    def _start_failed(self, starts: _Starts, error: StoreError) -> None:
        starts.failed = True
        for claim in starts.claims:  # not run here: its lease runs out, uncounted
            self._unheld((claim.event.id, claim.receiver_id))
        logger.warning(
            "could not record %s as started (%s); their leases run out and they run again",
            counted(len(starts.claims), "attempt"),
            error,
            extra={"deliveries": len(starts.claims)},
        )

    def _start_over(self, starts: _Starts) -> None:
        for claim in starts.claims:
            held = (claim.event.id, claim.receiver_id)
            if self._starting.get(held) is starts:
                del self._starting[held]
            self._starting_ahead.discard(held)
        self._start_woken += starts.waiting
        starts.done.set()
        self._move_gate()

    async def settle(self, outcome: Outcome, epoch: Epoch) -> None:
        """Hand an attempt's outcome to the settle task; wait while too many are unwritten."""
        claim = outcome.claim
        held = (claim.event.id, claim.receiver_id)
        if held not in self._held:
            self._ended(held)
            epoch.finish()  # the lease was lost meanwhile: another consumer settles it
            return
        self._queue_outcome(outcome, epoch)
        while len(self._to_settle) + len(self._settle_batch) > self._buffer.size:
            if self._settle_room is None:
                self._settle_room = anyio.Event()
            await self._settle_room.wait()

    def _queue_outcome(self, outcome: Outcome, epoch: Epoch) -> None:
        self._to_settle.append((outcome, epoch))
        if self._settle_wanted is not None:
            self._settle_wanted.set()

    async def _settles(self) -> None:
        """Settle the outcomes that piled up, all in one call; then they count as finished."""
        assert self.consumer is not None
        while True:
            if not self._to_settle:
                self._settle_wanted = anyio.Event()
                await self._settle_wanted.wait()
                self._settle_wanted = None
                continue
            batch, self._to_settle = self._to_settle, []
            self._settle_batch = batch
            outcomes = [outcome for outcome, _ in batch]
            # The starts waiting go along, when the store can write both in one call.
            starts, both = self._starts, self._settle_and_start
            if both is None or starts is None:
                starts = None
            else:
                self._starts = None
            try:
                if starts is None:
                    lost = await self.store.settle(self.consumer, outcomes)
                else:
                    assert both is not None
                    try:
                        lost, not_started = await both(self.consumer, outcomes, starts.claims)
                    except StoreError as error:
                        self._start_failed(starts, error)
                        raise
                    else:
                        self._start_written(starts, not_started)
                    finally:
                        self._start_over(starts)
            except StoreError as error:
                lost = []
                logger.warning(
                    "%s could not be settled (%s); their leases run out and they run again",
                    counted(len(batch), "delivery"),
                    error,
                    extra={"deliveries": len(batch)},
                )
            self._settle_batch = []
            if self._settle_room is not None:
                self._settle_room.set()
                self._settle_room = None
            if lost:
                logger.info(
                    "%s not settled: another consumer took the lease",
                    counted(len(lost), "delivery"),
                    extra={"deliveries": len(lost)},
                )
            # Room was what limited the last claim: claim again once there is room enough.
            wake = self._last_round_full and self._room_to_claim()
            lost_keys = {(claim.event.id, claim.receiver_id) for claim in lost}
            for outcome, epoch in batch:
                claim = outcome.claim
                held = (claim.event.id, claim.receiver_id)
                current = self._held.get(held)
                if current is None or current is claim:
                    self._unheld(held)
                    self._ended(held)
                # else: its next attempt, due at once, was claimed while this outcome was
                # written; that claim is held now, and it runs and settles on its own.
                epoch.finish()
                if held in lost_keys:
                    continue
                if claim.event.key is not None or isinstance(outcome, Released | Rescheduled):
                    wake = True  # the next of its key, or this one again, may be claimable
                if isinstance(outcome, Rescheduled):
                    due = anyio.current_time() + outcome.delay
                    self._next_due = min(self._next_due, due)
                elif isinstance(outcome, DeadLettered) and outcome.holds_key:
                    assert claim.event.key is not None
                    self._held_keys[claim.receiver_id, claim.event.key] = claim.event.id
            if wake:
                self._claim_wanted.set()

    async def _renewals(self) -> None:
        """Renew the leases held, every third of the lease; forget those another consumer took."""
        assert self.consumer is not None
        while True:
            await anyio.sleep(self.lease / 3)
            claims = list(self._held.values())
            if not claims:
                continue
            try:
                lost = await self.store.renew(self.consumer, claims, lease=self.lease)
            except StoreError as error:
                logger.warning("could not renew %s (%s)", counted(len(claims), "lease"), error)
                continue
            self.lose(lost)

    def lose(self, lost: Sequence[Claim]) -> None:
        """Another consumer took these claims: they are neither run nor settled here."""
        for claim in lost:
            held = (claim.event.id, claim.receiver_id)
            if self._held.get(held) != claim:
                continue
            self._unheld(held)
            if held in self._running:
                logger.warning(
                    "the lease of event %s for receiver %r ran out while it ran; another "
                    "consumer runs it, and this attempt's outcome is not recorded",
                    claim.event.id,
                    claim.receiver_id,
                    extra={"event_id": claim.event.id, "receiver_id": claim.receiver_id},
                )

    async def _heartbeats(self) -> None:
        """Keep the registration live (register again when it lapsed or the receivers
        changed), then read the live consumers for the checks of ``routes``."""
        while True:
            await anyio.sleep(self.lease / 3)
            if self.consumer is not None:
                try:
                    if self._routes_version != self._registry.version or not (
                        await self.store.heartbeat(self.consumer, ttl=self.lease)
                    ):
                        await self._register()
                except StoreError as error:
                    logger.warning("could not keep the consumer registered (%s)", error)
            try:
                self.routes.refresh(self._others(await self.store.consumers()))
            except StoreError as error:
                logger.warning("could not read the live consumers (%s)", error)

    # ------------------------------------------------------------------ drain, keys, letters

    async def drain(self, wait_local: Callable[[], Awaitable[None]]) -> None:
        """``drain()`` with a shared store: what this process runs, then what the store holds.

        Waits until this process has finished what it claimed, and the store has
        no delivery to this consumer's receivers, of an event that occurred
        before the call, that is leased (here or elsewhere), waiting for its
        retry, or claimable. Deliveries behind a key held by a dead letter are
        not waited for. Without consuming, only what this process runs itself.
        """
        cutoff = datetime.now(UTC)
        await self.broadcast.catch_up()
        delay = POLL_MIN
        while True:
            await wait_local()
            if self.consumer is None or self._run.state is not RUNNING:
                return
            claimed = self._claimed
            await self._fresh_round()
            if self._claimed != claimed or self._epochs.unfinished():
                continue  # it claimed more: wait for those too
            mine = [each for each in await self.store.backlog() if each.receiver_id in self._mine]
            if not all(_finished_before(each, cutoff) for each in mine):
                await anyio.sleep(delay)
                delay = min(delay * 2, POLL_MAX)
                continue
            if any(each.ready for each in mine):
                # Ready deliveries left, nothing leased or scheduled: they can only wait
                # behind a key a dead letter holds. A second round that claims nothing
                # makes sure none became claimable meanwhile.
                await self._fresh_round()
                if self._claimed != claimed or self._epochs.unfinished():
                    continue
            if self._hold:
                self._held_keys = await self.store.held_keys()
            return

    async def _fresh_round(self) -> None:
        """Wake the claim loop and wait for a claim that began after this call."""
        started = self._rounds_started
        self._claim_wanted.set()
        while self._rounds_finished <= started and self._run.state is RUNNING:
            await self._round_done.wait()

    def held_keys(self) -> dict[tuple[str, str], str]:
        """The keys held by dead letters, as this process last read or made them."""
        return dict(self._held_keys)

    def release_key(self, receiver_id: str, key: str) -> bool:
        """Release a held key in the store (in the background); whether it was known held."""
        known = self._held_keys.pop((receiver_id, key), None) is not None
        if self._tasks is not None:
            self._tasks.start_soon(self._release_key, receiver_id, key)
        return known

    async def _release_key(self, receiver_id: str, key: str) -> None:
        try:
            await self.store.release_key(receiver_id, key)
        except StoreError as error:
            logger.warning("could not release key %r of %r (%s)", key, receiver_id, error)
        self._claim_wanted.set()

    async def redeliver(self, letters: Sequence[DeadLetter]) -> int:
        """Make dead letters ready again in the store; a consumer claims them from there."""
        if not letters:
            return 0
        count = await self.store.redeliver([letter.id for letter in letters])
        for letter in letters:
            key = letter.event.key
            if (
                key is not None
                and self._held_keys.get((letter.receiver_id, key)) == letter.event.id
            ):
                del self._held_keys[letter.receiver_id, key]
        self._claim_wanted.set()
        return count


def _finished_before(backlog: Backlog, cutoff: datetime) -> bool:
    """Nothing older than ``cutoff`` is leased, scheduled or claimable for this receiver.

    Ready deliveries that remain with nothing leased or scheduled could not be
    claimed just now: they wait behind a key that a dead letter holds.
    """
    if backlog.oldest is None or backlog.oldest >= cutoff:
        return True
    return backlog.leased == 0 and backlog.scheduled == 0


def _fleet_entries(batch: Batch) -> list[tuple[Event, list[str]]]:
    """The store's part of a batch: each event routed to receivers here, with the ids of its
    fleet receivers (none when it has only process receivers, which the store keeps for the
    other processes' tails)."""
    entries = []
    for event, routes in zip(batch.events, batch.routes, strict=True):
        if routes:
            entries.append(
                (event, [route.receiver_id for route in routes if route.scope == "fleet"])
            )
    return entries
