"""The runtime's use of a store: durable publishing, recorded attempts, replay on start.

With a store, an event is appended (with one pending delivery per receiver)
before it is queued; every attempt is recorded before its receiver runs, so a
receiver that kills the process runs out of attempts instead of crash-looping;
a delivery is marked done after its receiver returns. On start, what the
journal holds as pending is streamed back into the buffer, each receiver id
resolved through the live registry, never by importing anything the journal
names.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio
import anyio.abc

from ._buffer import DeliveryBuffer
from ._delivery import Delivery
from ._event import Event, new_event_id
from ._exceptions import StoreError
from ._failures import Failures, letter_info
from ._idempotency import IdempotencyWindow
from ._lanes import Lanes
from ._middleware import MiddlewareStack, notify
from ._policy import DeadLetter
from ._registry import Registry, Subscription
from ._state import STOPPED, Counters, Epoch, Epochs, RunState
from ._store._protocol import PendingDelivery, Store
from ._text import counted

__all__ = ["Journal"]

logger = logging.getLogger("aevents.journal")

Dispatch = Callable[[Event, tuple[Subscription, ...], Epoch], None]


async def _chain(
    first: PendingDelivery | None, rest: AsyncIterator[PendingDelivery]
) -> AsyncIterator[PendingDelivery]:
    """``first`` (already read) followed by the rest of the stream."""
    if first is None:
        return
    yield first
    async for pending in rest:
        yield pending


def _waves(entries: list[tuple[Event, list[str]]]) -> list[list[tuple[Event, list[str]]]]:
    """Split a batch so that each wave holds at most one event per ordering key.

    Appends within a wave may commit in any order; waves commit one after
    another, so the events of one key reach the journal in batch order.
    """
    waves: list[list[tuple[Event, list[str]]]] = [[]]
    seen: dict[str, int] = {}
    for entry in entries:
        key = entry[0].key
        if key is None:
            waves[0].append(entry)
            continue
        wave = seen.get(key, -1) + 1
        seen[key] = wave
        if wave == len(waves):
            waves.append([])
        waves[wave].append(entry)
    return [wave for wave in waves if wave]


class Journal:
    """A store, as the runtime uses it: append, record, complete, dead-letter, replay."""

    def __init__(
        self,
        store: Store,
        *,
        run: RunState,
        buffer: DeliveryBuffer,
        lanes: Lanes,
        epochs: Epochs,
        failures: Failures,
        counters: Counters,
        registry: Registry,
        middleware: MiddlewareStack,
        idempotency: IdempotencyWindow,
        keyed_dead_letters: Literal["skip", "hold"],
    ) -> None:
        self.store = store
        self._run = run
        self._buffer = buffer
        self._lanes = lanes
        self._epochs = epochs
        self._failures = failures
        self._counters = counters
        self._registry = registry
        self._middleware = middleware
        self._idempotency = idempotency
        self._hold = keyed_dead_letters == "hold"
        # Events whose dead letters this run redelivers while the replay runs.
        self._replaying: set[str] | None = set()
        # Deliveries of events publish_nowait accepted whose journal write has not
        # finished: if shutdown cancels it first, they are lost and must be said so.
        self.unjournaled = 0
        # Deliveries that ran, waiting for run_completions to mark them done.
        self._to_complete: list[Delivery] = []
        self._completing = 0  # taken by run_completions, not yet committed
        self._completions_wanted: anyio.Event | None = None
        self._completion_room: anyio.Event | None = None

    @property
    def replaying(self) -> bool:
        """The replay of what an earlier run left pending is under way."""
        return self._replaying is not None

    # ------------------------------------------------------------------ start and stop

    async def open(self) -> None:
        """Open the store and seed the idempotency window from it; close it again on failure."""
        await self.store.open()  # a journal that cannot be used fails here, before anything runs
        window = self._idempotency
        since = datetime.now(UTC) - timedelta(seconds=window.window)
        try:
            window.seed(await self.store.recent_idempotency_keys(since, window.max_keys))
            await self.store.forget_idempotency_keys(since)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.close()
            raise

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.close()

    async def start(self, tasks: anyio.abc.TaskGroup) -> None:
        """Start the background tasks and the replay, having read the replay's first page.

        The journal's ``pending()`` is a snapshot from its first page: read it
        before accepting any publish, so the replay never sees events this run
        appends. The current epoch counts the replay as one delivery, so that
        ``drain()`` waits for the whole of it.
        """
        tasks.start_soon(self._forget_idempotency_keys)
        tasks.start_soon(self.run_completions)
        epoch = self._epochs.current
        epoch.unfinished += 1
        if self._hold:
            for letter in await self.store.dead_letters():
                self._hold_if_keyed(letter.event, letter.receiver_id)
        replay = self.store.pending().__aiter__()
        first = await anext(replay, None)
        tasks.start_soon(self._replay, epoch, replay, first)

    async def _forget_idempotency_keys(self) -> None:
        """Drop journaled idempotency keys older than the window, every so often."""
        window = self._idempotency.window
        while True:
            await anyio.sleep(min(window, 600.0))
            before = datetime.now(UTC) - timedelta(seconds=window)
            try:
                await self.store.forget_idempotency_keys(before)
            except StoreError as error:
                logger.warning("could not forget old idempotency keys: %s", error)

    # ------------------------------------------------------------------ publishing

    async def append(self, event: Event, routes: tuple[Subscription, ...]) -> None:
        """Journal an event whose room in the buffer is reserved; on failure give the room back.

        The wait is shielded: once the write is under way, cancelling the
        publisher cannot leave it unsure whether the event was accepted.
        """
        try:
            with anyio.CancelScope(shield=True):
                await self.store.append(event, [route.receiver_id for route in routes])
        except BaseException:
            self._buffer.release(len(routes))
            raise

    def append_in_background(
        self,
        tasks: anyio.abc.TaskGroup,
        event: Event,
        routes: tuple[Subscription, ...],
        epoch: Epoch,
        dispatch: Dispatch,
    ) -> None:
        """``publish_nowait`` with a store: journal in the background, then queue.

        If the journal refuses the event it is still delivered, without the
        crash guarantee, and an error says so: nothing accepted is dropped.
        ``epoch`` counts one more for the write (``drain()`` waits for it), and
        ``unjournaled`` its deliveries until it is done.
        """
        self.unjournaled += len(routes)
        epoch.unfinished += 1
        tasks.start_soon(self._append_then_dispatch, event, routes, epoch, dispatch)

    async def _append_then_dispatch(
        self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch, dispatch: Dispatch
    ) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.store.append(event, [route.receiver_id for route in routes])
        except StoreError as error:
            logger.error(  # noqa: TRY400 - the store error's message says it all
                "event %s (%r) accepted by publish_nowait could not be journaled (%s); "
                "delivering it without the crash guarantee",
                event.id,
                event.name,
                error,
                extra={"event_id": event.id, "event_name": event.name},
            )
        finally:
            self.unjournaled -= len(routes)
        if self._run.state is not STOPPED:
            dispatch(event, routes, epoch)
        # else shutdown closed the buffer while the write ran: the deliveries stay
        # counted as left pending, and the journal replays them on the next start.
        epoch.finish()

    async def append_many(
        self, events: Sequence[Event], routes: Sequence[tuple[Subscription, ...]], count: int
    ) -> None:
        """Journal a batch whose room (``count`` deliveries) is reserved: all of it or none.

        ``routes[i]`` are the receivers of ``events[i]``; events without any
        are not journaled (as for ``append``). On failure the room is given
        back and the error raised, with none of the batch left pending. The
        wait is shielded, as for ``append``.

        A store with an ``append_many(entries)`` method (``entries``: a list of
        ``(event, receiver ids)``) writes the batch in that one call, which
        must record all of it or none, in one transaction. Other stores get
        one ``append`` per event, made concurrently so that a group-committing
        store writes them in few transactions, in waves that keep the events
        of each ordering key in journal order. If one fails, the events already
        written are marked done, so that no replay delivers them.
        """
        entries = [
            (event, [route.receiver_id for route in receivers])
            for event, receivers in zip(events, routes, strict=True)
            if receivers
        ]
        try:
            with anyio.CancelScope(shield=True):
                if not entries:
                    return
                append_many = getattr(self.store, "append_many", None)
                if append_many is not None:
                    await append_many(entries)
                else:
                    await self._append_each(entries)
        except BaseException:
            self._buffer.release(count)
            raise

    async def _append_each(
        self, entries: list[tuple[Event, list[str]]], *, undo: bool = True
    ) -> None:
        """``append_many`` on a store without it: concurrent appends, undone on failure
        (with ``undo``: marked done, so that no replay delivers them)."""
        written: list[tuple[Event, list[str]]] = []
        failures: list[BaseException] = []

        async def one(entry: tuple[Event, list[str]]) -> None:
            try:
                await self.store.append(*entry)
            except Exception as error:
                failures.append(error)
            else:
                written.append(entry)

        for wave in _waves(entries):
            if failures:
                break
            if len(wave) == 1:
                await one(wave[0])
                continue
            async with anyio.create_task_group() as tasks:
                for entry in wave:
                    tasks.start_soon(one, entry)
        if not failures:
            return
        if written and undo:
            try:
                await self.store.complete(
                    [(event.id, receiver) for event, receivers in written for receiver in receivers]
                )
            except StoreError as error:
                logger.error(  # noqa: TRY400 - the store error's message says it all
                    "publish_many failed, and %s of the batch already journaled could not be "
                    "withdrawn (%s): they stay pending and run on the next start",
                    counted(len(written), "event"),
                    error,
                    extra={"events": len(written)},
                )
        raise failures[0]

    def append_many_in_background(
        self,
        tasks: anyio.abc.TaskGroup,
        events: Sequence[Event],
        routes: Sequence[tuple[Subscription, ...]],
        count: int,
        epoch: Epoch,
        dispatch: Dispatch,
    ) -> None:
        """``publish_many_nowait`` with a store: journal the batch in the background, then queue.

        As ``append_in_background``: if the journal refuses the batch it is
        still delivered, without the crash guarantee, and an error says so.
        """
        self.unjournaled += count
        epoch.unfinished += 1  # drain() waits for the background write too
        tasks.start_soon(self._append_many_then_dispatch, events, routes, count, epoch, dispatch)

    async def _append_many_then_dispatch(
        self,
        events: Sequence[Event],
        routes: Sequence[tuple[Subscription, ...]],
        count: int,
        epoch: Epoch,
        dispatch: Dispatch,
    ) -> None:
        entries = [
            (event, [route.receiver_id for route in receivers])
            for event, receivers in zip(events, routes, strict=True)
            if receivers
        ]
        try:
            with anyio.CancelScope(shield=True):
                append_many = getattr(self.store, "append_many", None)
                if append_many is not None:
                    await append_many(entries)
                else:
                    await self._append_each(entries, undo=False)
        except StoreError as error:
            logger.error(  # noqa: TRY400 - the store error's message says it all
                "%s accepted by publish_many_nowait could not be journaled (%s); "
                "delivering them without the crash guarantee",
                counted(len(entries), "event"),
                error,
                extra={"events": len(entries)},
            )
        finally:
            self.unjournaled -= count
        if self._run.state is not STOPPED:
            for event, receivers in zip(events, routes, strict=True):
                if receivers:
                    dispatch(event, receivers, epoch)
        epoch.finish()

    def not_for_replay(self, event_id: str) -> None:
        """Mark a dead letter this run redelivers as not the replay's to queue.

        The replay's snapshot leaves out what this run appends, but a
        redelivered letter is an old event made pending again: it may still lie
        ahead of the replay. Called before the write; the set lives only as long
        as the replay does.
        """
        if self._replaying is not None:
            self._replaying.add(event_id)

    # ------------------------------------------------------------------ delivering

    async def record_attempts(self, batch: Sequence[Delivery]) -> None:
        """Record that each delivery's attempt starts, before any of them runs."""
        await self.store.start_attempts(
            [
                (delivery.event.id, delivery.subscription.receiver_id, delivery.attempt)
                for delivery in batch
            ]
        )

    async def completed(self, finished: list[Delivery]) -> None:
        """Hand deliveries whose receiver returned to ``run_completions``.

        Waits while more than a buffer's worth of completions is uncommitted.
        """
        self._to_complete += finished
        if self._completions_wanted is not None:
            self._completions_wanted.set()
        while len(self._to_complete) + self._completing > self._buffer.size:
            if self._completion_room is None:
                self._completion_room = anyio.Event()
            await self._completion_room.wait()

    async def run_completions(self) -> None:
        """Mark the deliveries the workers finished done, all that piled up in one write.

        A delivery counts as finished (``drain()``, its key's lane) only once
        that write has committed, so a drained runtime leaves nothing pending
        and a keyed delivery's successor never completes before it.
        """
        while True:
            if not self._to_complete:
                self._completions_wanted = anyio.Event()
                await self._completions_wanted.wait()
                self._completions_wanted = None
                continue
            batch, self._to_complete = self._to_complete, []
            self._completing = len(batch)
            try:
                await self.store.complete(
                    [(delivery.event.id, delivery.subscription.receiver_id) for delivery in batch]
                )
            except StoreError as error:
                logger.warning(
                    "%s ran but could not be marked done (%s); "
                    "they will run again on the next start",
                    counted(len(batch), "delivery"),
                    error,
                    extra={"deliveries": len(batch)},
                )
            self._completing = 0
            if self._completion_room is not None:
                self._completion_room.set()
                self._completion_room = None
            for delivery in batch:
                delivery.epoch.finish()
                if delivery.event.key is not None:
                    self._lanes.done(delivery.event, delivery.subscription, dead=False)

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Journal a dead letter; if the journal refuses, it stays pending for the next start."""
        try:
            await self.store.dead_letter([letter])
        except StoreError as error:
            logger.error(  # noqa: TRY400 - the store error's message says it all
                "dead letter %s could not be journaled (%s); the delivery stays pending "
                "and runs again on the next start",
                letter.id,
                error,
                extra={"dead_letter_id": letter.id, "event_id": letter.event.id},
            )

    # ------------------------------------------------------------------ replay

    def _hold_if_keyed(self, event: Event, receiver_id: str) -> None:
        if event.key is not None and self._hold:
            self._lanes.hold(event, receiver_id)

    async def _replay(
        self,
        epoch: Epoch,
        stream: AsyncIterator[PendingDelivery],
        first: PendingDelivery | None,
    ) -> None:
        """Queue what the journal held as pending at start, streaming, with backpressure."""
        replayed = unknown = exhausted = found = events = 0
        last_event: str | None = None
        redelivered = self._replaying
        assert redelivered is not None
        dead: int | None = None
        try:
            try:
                dead = (await self.store.stats()).dead
            except StoreError as error:
                logger.warning("could not count the journal's dead letters (%s)", error)
            async for pending in _chain(first, stream):
                if pending.event.id in redelivered:
                    continue  # redelivered by this run, which queues it itself
                found += 1
                if pending.event.id != last_event:  # pending() comes in publish order
                    events += 1
                    last_event = pending.event.id
                subscription = self._registry.receiver(pending.receiver_id, pending.event.name)
                if subscription is None:
                    unknown += 1
                    self._hold_if_keyed(pending.event, pending.receiver_id)
                    await self._park(
                        pending,
                        "aevents.UnknownReceiver",
                        f"receiver id {pending.receiver_id!r} is not subscribed in this process; "
                        "ids read from a journal are resolved through the registry only",
                    )
                    continue
                if pending.attempts >= self._failures.policy(subscription).attempts:
                    exhausted += 1
                    self._hold_if_keyed(pending.event, pending.receiver_id)
                    await self._park(
                        pending,
                        "aevents.AttemptsExhausted",
                        "the process stopped during each of its "
                        + counted(pending.attempts, "attempt"),
                    )
                    continue
                await self._buffer.reserve(1)
                epoch.unfinished += 1
                delivery = Delivery(pending.event, subscription, pending.attempts + 1, epoch, True)
                if pending.event.key is None:
                    self._buffer.put(delivery)
                else:
                    self._lanes.enter(delivery)
                replayed += 1
        finally:
            self._replaying = None
            self._lanes.replay_finished(stopped=self._run.state is STOPPED)
            epoch.finish()
        logger.info(
            "journal replay found %s of %s%s",
            counted(found, "pending delivery"),
            counted(events, "event"),
            "" if dead is None else f", and {counted(dead, 'dead letter')}",
            extra={"pending_deliveries": found, "events": events, "dead_letters": dead},
        )
        if unknown or exhausted:
            logger.warning(
                "journal replay parked %s: %d for receiver ids "
                "not subscribed here, %d whose attempts ran out across restarts",
                counted(unknown + exhausted, "delivery") + " as dead letters"
                if unknown + exhausted > 1
                else "1 delivery as a dead letter",
                unknown,
                exhausted,
                extra={"unknown_receivers": unknown, "exhausted": exhausted},
            )

    async def _park(self, pending: PendingDelivery, error_type: str, message: str) -> None:
        self._counters.dead += 1
        letter = DeadLetter(
            id=new_event_id(),
            event=pending.event,
            receiver_id=pending.receiver_id,
            attempts=pending.attempts,
            error_type=error_type,
            error_message=message,
            failed_at=datetime.now(UTC),
        )
        await self.dead_letter(letter)
        if self._middleware.outcomes:
            info = letter_info(self._registry, letter, replay=True)
            notify(self._middleware.outcomes, "on_dead_letter", info, letter)
