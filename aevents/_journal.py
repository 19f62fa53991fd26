"""The runtime's use of a store: durable publishing, recorded attempts, replay on start.

Mixed into ``EventRuntime``. With a store, an event is appended (with one
pending delivery per receiver) before it is queued; every attempt is
recorded before its receiver runs, so a receiver that kills the process
runs out of attempts instead of crash-looping; a delivery is marked done
after its receiver returns. On start, what the journal holds as pending is
streamed back into the queue, each receiver id resolved through the live
registry, never by importing anything the journal names.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from time import perf_counter
from typing import TYPE_CHECKING, Literal

import anyio

from ._delivery import (
    DeliveryInfo,
    Item,
    ReplayedAttempt,
    SyncThreads,
    call_receiver,
    delivery_var,
    fails_delivery,
)
from ._event import Event, new_event_id
from ._exceptions import StoreError
from ._middleware import MiddlewareStack, call_with_middleware, notify
from ._policy import DeadLetter, RetryPolicy
from ._text import counted

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from ._registry import Registry, Subscription
    from ._state import Epoch
    from ._store._protocol import PendingDelivery, Store

__all__ = ["Journaling"]


async def _chain(
    first: PendingDelivery | None, rest: AsyncIterator[PendingDelivery]
) -> AsyncIterator[PendingDelivery]:
    """``first`` (already read) followed by the rest of the stream."""
    if first is None:
        return
    yield first
    async for item in rest:
        yield item


logger = logging.getLogger("aevents.journal")


class Journaling:
    """Durable publish, durable delivery and replay, for ``EventRuntime``."""

    registry: Registry
    store: Store | None
    retry: RetryPolicy
    timeout: float | None
    buffer: int
    _send: MemoryObjectSendStream[Item]
    _epoch: Epoch
    _threads: SyncThreads
    _delivered: int
    _dead: int
    _replaying: set[str] | None
    _state: str
    _unjournaled: int
    _middleware: MiddlewareStack
    keyed_dead_letters: Literal["skip", "hold"]

    if TYPE_CHECKING:  # provided by the other classes EventRuntime is made of; declared
        # here only for the type checker, so they can never shadow the real ones
        def _finish(self, epoch: Epoch) -> None: ...
        def _release(self, count: int) -> None: ...
        def _enqueue(
            self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch
        ) -> None: ...
        async def _reserve(self, count: int) -> None: ...
        def _lane_done(self, event: Event, subscription: Subscription, *, dead: bool) -> None: ...
        def _into_lane(self, item: Item) -> None: ...
        def _replay_finished(self, stopped: bool) -> None: ...
        def _hold_lane(self, event: Event, receiver_id: str) -> None: ...
        def _on_failure(
            self, item: Item, error: BaseException, duration: float | None
        ) -> DeadLetter | None: ...
        def _letter_info(self, letter: DeadLetter, replay: bool = False) -> DeliveryInfo: ...

    async def _append(self, event: Event, routes: tuple[Subscription, ...]) -> None:
        """Journal an event whose room in the buffer is reserved; on failure give the room back.

        The wait is shielded: once the write is under way, cancelling the
        publisher cannot leave it unsure whether the event was accepted.
        """
        assert self.store is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.store.append(event, [route.receiver_id for route in routes])
        except BaseException:
            self._release(len(routes))
            raise

    async def _append_then_enqueue(
        self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch
    ) -> None:
        """``publish_nowait`` with a store: journal in the background, then queue.

        If the journal refuses the event it is still delivered, without the
        crash guarantee, and an error says so: nothing accepted is dropped.
        """
        assert self.store is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.store.append(event, [route.receiver_id for route in routes])
        except StoreError as error:
            self._unjournaled -= len(routes)
            logger.error(  # noqa: TRY400 - the store error's message says it all
                "event %s (%r) accepted by publish_nowait could not be journaled (%s); "
                "delivering it without the crash guarantee",
                event.id,
                event.name,
                error,
                extra={"event_id": event.id, "event_name": event.name},
            )
        else:
            self._unjournaled -= len(routes)
        if self._state != "stopped":
            self._enqueue(event, routes, epoch)
        # else shutdown closed the queue while the write ran: the deliveries stay
        # counted as left pending, and the journal replays them on the next start.
        self._finish(epoch)  # the placeholder publish_nowait counted

    def _not_for_replay(self, event_id: str) -> None:
        """Mark a dead letter this run redelivers as not the replay's to queue.

        The replay's snapshot leaves out what this run appends, but a
        redelivered letter is an old event made pending again: it may still lie
        ahead of the replay. Called before the write; the set lives only as long
        as the replay does.
        """
        if self._replaying is not None:
            self._replaying.add(event_id)

    def _init_journaling(self) -> None:
        # Deliveries that ran, waiting for _complete_durably to mark them done.
        self._to_complete: list[Item] = []
        self._completing = 0  # taken by _complete_durably, not yet committed
        self._completions_wanted: anyio.Event | None = None  # set to wake _complete_durably
        self._completion_room: anyio.Event | None = None  # set when the backlog shrinks

    async def _deliver_durably(self, items: list[Item]) -> None:
        """Run a batch of deliveries with a store: record the attempts, run, hand over.

        One journal write records every attempt before any receiver runs. The
        successes go to ``_complete_durably``, which marks what every worker
        finished done in one write while the workers go on with their next
        batch, so a busy runtime pays about one commit per batch, not per
        delivery, and a worker never waits for a completion. A kill re-runs at
        most the batches in flight and the completions not yet committed.
        """
        assert self.store is not None
        try:
            await self.store.start_attempts(
                [
                    (event.id, subscription.receiver_id, int(attempt))
                    for event, subscription, attempt, _ in items
                ]
            )
        except StoreError as error:  # not recorded, so not run: each counts as a failed attempt
            for item in items:
                await self._failed_durably(item, error, None)
            return
        finished: list[Item] = []
        for item in items:
            event, subscription = item[0], item[1]
            token = delivery_var.set(item)
            started = perf_counter()
            try:
                time_limit = (
                    subscription.timeout if subscription.timeout is not None else self.timeout
                )
                if self._middleware.delivery:
                    await call_with_middleware(
                        self._middleware.delivery, item, time_limit, self._threads
                    )
                else:
                    await call_receiver(subscription, event, time_limit, self._threads)
            except BaseException as error:
                if not fails_delivery(error):
                    raise  # the runtime is cancelled, or KeyboardInterrupt, SystemExit
                await self._failed_durably(item, error, perf_counter() - started)
                continue
            finally:
                delivery_var.reset(token)
            self._delivered += 1
            finished.append(item)
        if not finished:
            return
        self._to_complete += finished
        if self._completions_wanted is not None:
            self._completions_wanted.set()
        # Bounded: past a buffer's worth of uncommitted completions, wait for the journal.
        while len(self._to_complete) + self._completing > self.buffer:
            if self._completion_room is None:
                self._completion_room = anyio.Event()
            await self._completion_room.wait()

    async def _complete_durably(self) -> None:
        """Mark the deliveries the workers finished done, all that piled up in one write.

        A delivery counts as finished (``drain()``, its key's lane) only once
        that write has committed, so a drained runtime leaves nothing pending
        and a keyed delivery's successor never completes before it.
        """
        assert self.store is not None
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
                    [(event.id, subscription.receiver_id) for event, subscription, _, _ in batch]
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
            for event, subscription, _, epoch in batch:
                self._finish(epoch)
                if event.key is not None:
                    self._lane_done(event, subscription, dead=False)

    async def _failed_durably(
        self, item: Item, error: BaseException, duration: float | None
    ) -> None:
        letter = self._on_failure(item, error, duration)
        if letter is not None:
            await self._journal_dead_letter(letter)
            self._finish(item[3])
            if item[0].key is not None:
                self._lane_done(item[0], item[1], dead=True)

    async def _journal_dead_letter(self, letter: DeadLetter) -> None:
        assert self.store is not None
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

    async def _hold_lanes_of_dead_letters(self) -> None:
        """Policy "hold": keyed dead letters of earlier runs hold their lanes again."""
        assert self.store is not None
        if self.keyed_dead_letters == "hold":
            for letter in await self.store.dead_letters():
                self._hold_if_keyed(letter.event, letter.receiver_id)

    def _hold_if_keyed(self, event: Event, receiver_id: str) -> None:
        if event.key is not None and self.keyed_dead_letters == "hold":
            self._hold_lane(event, receiver_id)

    async def _replay(
        self,
        epoch: Epoch,
        stream: AsyncIterator[PendingDelivery],
        first: PendingDelivery | None,
    ) -> None:
        """Queue what the journal held as pending at start, streaming, with backpressure.

        ``stream`` is the journal's ``pending()`` snapshot and ``first`` its
        first item, read before the runtime accepted any publish. ``epoch``
        already counts one for the replay itself (taken at start, so a
        ``drain()`` that runs before this task does still waits for it).
        """
        replayed = unknown = exhausted = found = events = 0
        last_event: str | None = None
        redelivered = self._replaying
        assert redelivered is not None
        assert self.store is not None
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
                subscription = self.registry.receiver(pending.receiver_id, pending.event.name)
                if subscription is None:
                    unknown += 1
                    self._hold_if_keyed(pending.event, pending.receiver_id)
                    await self._park(
                        pending.event,
                        pending.receiver_id,
                        pending.attempts,
                        "aevents.UnknownReceiver",
                        f"receiver id {pending.receiver_id!r} is not subscribed in this process; "
                        "ids read from a journal are resolved through the registry only",
                    )
                    continue
                policy = subscription.retry if subscription.retry is not None else self.retry
                if pending.attempts >= policy.attempts:
                    exhausted += 1
                    self._hold_if_keyed(pending.event, pending.receiver_id)
                    await self._park(
                        pending.event,
                        pending.receiver_id,
                        pending.attempts,
                        "aevents.AttemptsExhausted",
                        "the process stopped during each of its "
                        + counted(pending.attempts, "attempt"),
                    )
                    continue
                await self._reserve(1)
                epoch.unfinished += 1
                item = (pending.event, subscription, ReplayedAttempt(pending.attempts + 1), epoch)
                if pending.event.key is None:
                    self._send.send_nowait(item)
                else:
                    self._into_lane(item)
                replayed += 1
        finally:
            self._replaying = None
            self._replay_finished(stopped=self._state == "stopped")
            self._finish(epoch)
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

    async def _park(
        self, event: Event, receiver_id: str, attempts: int, error_type: str, message: str
    ) -> None:
        self._dead += 1
        letter = DeadLetter(
            id=new_event_id(),
            event=event,
            receiver_id=receiver_id,
            attempts=attempts,
            error_type=error_type,
            error_message=message,
            failed_at=datetime.now(UTC),
        )
        await self._journal_dead_letter(letter)
        if self._middleware.outcomes:
            info = self._letter_info(letter, replay=True)
            notify(self._middleware.outcomes, "on_dead_letter", info, letter)
