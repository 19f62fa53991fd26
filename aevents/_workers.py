"""The worker pool: tasks that take deliveries from the buffer and run their attempts.

Each worker runs one delivery at a time through ``attempt``, then settles
its outcome: delivered, retried after a backoff, or dead-lettered (what a
failure becomes is ``Failures.on_failure``'s to decide). With a store a
worker takes a batch of deliveries, records their attempts in one journal
write, runs them, and hands the successes to the journal to be marked done.

Workers never yield between deliveries that are ready, but every
``YIELD_EVERY`` deliveries they do, so that a flood of trivial receivers
cannot starve the rest of the application.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from inspect import isawaitable
from time import perf_counter
from typing import Any, Final

from anyio.lowlevel import checkpoint

from ._attempt import attempt
from ._buffer import DeliveryBuffer
from ._delivery import (
    Delivery,
    SyncThreads,
    delivery_var,
    fails_delivery,
    named,
    within,
)
from ._exceptions import StoreError
from ._failures import DeadLetterShelf, Failures, Retry
from ._fleet import Fleet
from ._journal import Journal
from ._lanes import Lanes
from ._middleware import Counting, MiddlewareStack
from ._retries import RetrySchedule
from ._state import Counters
from ._store._protocol import Completed, Outcome, Rescheduled

__all__ = ["DURABLE_BATCH", "HOP_SIZE", "YIELD_EVERY", "Workers"]

YIELD_EVERY: Final = 64
DURABLE_BATCH: Final = 32  # deliveries a worker records, runs and marks done together
HOP_SIZE: Final = 64  # deliveries to sync receivers a worker runs in one thread hop


class Workers:
    """The worker tasks' body, and the settling of each attempt's outcome."""

    def __init__(
        self,
        *,
        buffer: DeliveryBuffer,
        lanes: Lanes,
        retries: RetrySchedule,
        failures: Failures,
        shelf: DeadLetterShelf,
        journal: Journal | None,
        fleet: Fleet | None,
        counters: Counters,
        middleware: MiddlewareStack,
        timeout: float | None,
        threads: SyncThreads,
    ) -> None:
        self._buffer = buffer
        self._lanes = lanes
        self._retries = retries
        self._failures = failures
        self._shelf = shelf
        self._journal = journal
        self._fleet = fleet
        self._counters = counters
        self._middleware = middleware  # its tuples are replaced by add_middleware
        self._timeout = timeout
        self._threads = threads

    def _time_limit(self, delivery: Delivery) -> float | None:
        limit = delivery.subscription.timeout
        return limit if limit is not None else self._timeout

    async def run(self) -> None:
        """One worker: deliver until the buffer is closed and empty (or cancelled)."""
        if self._journal is not None:
            await self._run_durably(self._journal)
            return
        if self._fleet is not None:
            await self._run_leased(self._fleet)
            return
        buffer = self._buffer
        items = buffer.items
        middleware = self._middleware
        counters = self._counters
        threads = self._threads
        default_limit = self._timeout
        clock = perf_counter
        set_delivery = delivery_var.set
        since_yield = 0
        while True:
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await checkpoint()
            if not items:
                if not await buffer.wait():
                    return
                since_yield = 0
                continue
            # buffer.take(), inlined: the call was 4% of a fan-out's CPU instructions.
            delivery = items.popleft()
            buffer.queued -= 1
            if buffer.room_waiters:
                buffer.grant()
            since_yield += 1
            # A first attempt is a plain tuple here (see Queued): by position, once.
            event, subscription, attempt_number, epoch, _ = delivery
            if subscription.fast and default_limit is None and not middleware.delivery:
                # An async receiver with no time limit and no delivery hooks: what
                # attempt() would return, awaited without the call. The delivery is
                # set, never reset: the worker runs nothing else in its context, and a
                # task or thread a receiver starts keeps the context it was started
                # with, so a reset would be pure cost on every delivery.
                set_delivery(delivery)
                started = clock()
                try:
                    await subscription.receiver(event)
                except BaseException as error:
                    if not fails_delivery(error):
                        raise  # the runtime is cancelled, or KeyboardInterrupt, SystemExit
                    self._settle_failure(named(delivery), error, clock() - started)
                    continue
            else:
                count = middleware.count  # a plain Metrics alone: counted here, no hooks
                hooks = () if count is not None else middleware.delivery
                if subscription.threaded and not hooks:
                    await self._run_hop(named(delivery), count)
                    continue
                set_delivery(delivery)
                started = clock()
                failure: BaseException | None = None
                try:
                    if not hooks and subscription.fast and default_limit is None:
                        await subscription.receiver(event)  # a plain Metrics alone counts
                    else:
                        limit = subscription.timeout
                        await attempt(
                            named(delivery),
                            hooks,
                            limit if limit is not None else default_limit,
                            threads,
                        )
                except BaseException as error:
                    failure = error
                if count is not None:  # a cancelled attempt too, as after_delivery would
                    count(
                        subscription.pattern,
                        subscription.receiver_id,
                        attempt_number,
                        event,
                        started,
                        failure,
                    )
                if failure is not None:
                    if not fails_delivery(failure):
                        raise failure  # the runtime is cancelled, or KeyboardInterrupt...
                    self._settle_failure(named(delivery), failure, clock() - started)
                    del failure  # no cycle through its traceback and this frame
                    continue
            counters.delivered += 1
            if event.key is not None:
                self._lanes.done(event, subscription, dead=False)
            # epoch.finish(), inlined: the call costs 3-4% on fan-out to 10 receivers.
            epoch.unfinished -= 1
            if not epoch.unfinished and epoch.done is not None:
                epoch.done.set()

    def _settle_failure(self, delivery: Delivery, error: BaseException, duration: float) -> None:
        """A failed attempt without a store: retried after its backoff, or dead-lettered."""
        outcome = self._failures.on_failure(delivery, error, duration)
        if isinstance(outcome, Retry):
            self._retries.schedule(outcome.delivery, outcome.delay)
            return
        self._shelf.keep(outcome)
        delivery.epoch.finish()
        if delivery.event.key is not None:
            self._lanes.done(delivery.event, delivery.subscription, dead=True)

    async def _run_leased(self, fleet: Fleet) -> None:
        """A worker with a shared store: claims run and settled through ``fleet``; the
        deliveries of ``scope="process"`` receivers run as they would without a store."""
        buffer = self._buffer
        take = buffer.take
        since_yield = 0
        while True:
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await checkpoint()
            delivery = take()
            if delivery is None:
                if not await buffer.wait():
                    return
                since_yield = 0
                continue
            since_yield += 1
            delivery = named(delivery)
            if delivery.subscription.scope == "process":
                await self._run_in_memory(delivery)
                continue
            claim = await fleet.start_attempt(delivery)
            if claim is None:
                continue
            token = delivery_var.set(delivery)
            started = perf_counter()
            outcome: Outcome
            try:
                await attempt(
                    delivery, self._middleware.delivery, self._time_limit(delivery), self._threads
                )
            except BaseException as error:
                if not fails_delivery(error):
                    raise  # the runtime is cancelled, or KeyboardInterrupt, SystemExit
                failed = self._failures.on_failure(delivery, error, perf_counter() - started)
                if isinstance(failed, Retry):
                    outcome = Rescheduled(claim, failed.delay)
                else:
                    outcome = fleet.dead_lettered(claim, failed)
            else:
                self._counters.delivered += 1
                outcome = Completed(claim)
            finally:
                delivery_var.reset(token)
            await fleet.settle(outcome, delivery.epoch)

    async def _run_in_memory(self, delivery: Delivery) -> None:
        """One attempt of a delivery that no store holds, settled as without a store."""
        token = delivery_var.set(delivery)
        started = perf_counter()
        error: BaseException | None = None
        try:
            await attempt(
                delivery, self._middleware.delivery, self._time_limit(delivery), self._threads
            )
        except BaseException as raised:
            if not fails_delivery(raised):
                raise
            error = raised
        finally:
            delivery_var.reset(token)
        self._settle(delivery, error, perf_counter() - started)
        del error

    def _settle(self, delivery: Delivery, error: BaseException | None, duration: float) -> None:
        """What an attempt run without a store leads to: delivered, retried or dead."""
        event = delivery.event
        if error is None:
            self._counters.delivered += 1
            delivery.epoch.finish()
            if event.key is not None:
                self._lanes.done(event, delivery.subscription, dead=False)
            return
        self._settle_failure(delivery, error, duration)

    async def _run_hop(self, first: Delivery, count: Counting | None) -> None:
        """Run ``first`` and the deliveries to sync receivers queued right behind it (up to
        ``HOP_SIZE``) on threads, in one thread hop each way, and settle each one.

        Each keeps its own attempt: its ``current_delivery()``, its time limit, its
        outcome. Those that ``SyncThreads.run_hop`` hands back, because every thread
        was held by a slow receiver, are queued again for the other workers.
        """
        buffer = self._buffer
        hop = [first]
        buffer.take_threaded(hop, HOP_SIZE)
        default = self._timeout
        limits = [
            default if (limit := delivery.subscription.timeout) is None else limit
            for delivery in hop
        ]
        fatal: list[BaseException] = []  # raised once the others are settled
        counters = self._counters
        lanes_done = self._lanes.done

        def settle(
            delivery: Delivery, result: Any, error: BaseException | None, duration: float
        ) -> Coroutine[Any, Any, None] | None:
            if error is None and count is None:
                if result is not None and isawaitable(result):
                    return self._finish_on_loop(delivery, result, duration, count, fatal)
                # _settle's delivered case, inlined: it is most of what a hop settles.
                counters.delivered += 1
                epoch = delivery.epoch
                epoch.unfinished -= 1
                if not epoch.unfinished and epoch.done is not None:
                    epoch.done.set()
                event = delivery.event
                if event.key is not None:
                    lanes_done(event, delivery.subscription, dead=False)
                return None
            if result is not None and error is None and isawaitable(result):
                return self._finish_on_loop(delivery, result, duration, count, fatal)
            self._settle_counted(delivery, error, duration, count, fatal)
            return None

        await self._threads.run_hop(hop, limits, buffer.give_back, settle)
        if fatal:
            raise fatal[0]

    async def _finish_on_loop(
        self,
        delivery: Delivery,
        awaitable: Awaitable[Any],
        duration: float,
        count: Counting | None,
        fatal: list[BaseException],
    ) -> None:
        """A sync receiver's call returned an awaitable (a lambda around an async
        function): await it on the loop, within what is left of its time limit."""
        limit = self._time_limit(delivery)
        token = delivery_var.set(delivery)
        started = perf_counter()
        error: BaseException | None = None
        try:
            if limit is None:
                await awaitable
            else:
                await within(awaitable, max(limit - duration, 0.0))
        except BaseException as raised:
            error = raised
        finally:
            delivery_var.reset(token)
        self._settle_counted(delivery, error, duration + perf_counter() - started, count, fatal)
        del error

    def _settle_counted(
        self,
        delivery: Delivery,
        error: BaseException | None,
        duration: float,
        count: Counting | None,
        fatal: list[BaseException],
    ) -> None:
        if count is not None:
            subscription = delivery.subscription
            count(
                subscription.pattern,
                subscription.receiver_id,
                delivery.attempt,
                delivery.event,
                perf_counter() - duration,  # counted as if it had just ended
                error,
            )
        if error is not None and not fails_delivery(error):
            fatal.append(error)  # KeyboardInterrupt, SystemExit: the runtime stops
            return
        self._settle(delivery, error, duration)

    async def _run_durably(self, journal: Journal) -> None:
        """A worker with a store: batches of recorded attempts, completions handed over."""
        buffer = self._buffer
        take = buffer.take
        while True:
            delivery = take()
            if delivery is None:
                if not await buffer.wait():
                    return
                continue
            batch = [named(delivery)]
            while len(batch) < DURABLE_BATCH and (delivery := take()) is not None:
                batch.append(named(delivery))
            await self._deliver_batch(journal, batch)

    async def _deliver_batch(self, journal: Journal, batch: list[Delivery]) -> None:
        """Record every attempt in one journal write, run them, hand over the successes.

        A kill re-runs at most the batches in flight and the completions not
        yet committed.
        """
        try:
            await journal.record_attempts(batch)
        except StoreError as error:  # not recorded, so not run: each counts as a failed attempt
            for delivery in batch:
                await self._failed_durably(journal, delivery, error, None)
            return
        finished: list[Delivery] = []
        for delivery in batch:
            token = delivery_var.set(delivery)
            started = perf_counter()
            try:
                await attempt(
                    delivery, self._middleware.delivery, self._time_limit(delivery), self._threads
                )
            except BaseException as error:
                if not fails_delivery(error):
                    raise  # the runtime is cancelled, or KeyboardInterrupt, SystemExit
                await self._failed_durably(journal, delivery, error, perf_counter() - started)
                continue
            finally:
                delivery_var.reset(token)
            self._counters.delivered += 1
            finished.append(delivery)
        if finished:
            await journal.completed(finished)

    async def _failed_durably(
        self, journal: Journal, delivery: Delivery, error: BaseException, duration: float | None
    ) -> None:
        outcome = self._failures.on_failure(delivery, error, duration)
        if isinstance(outcome, Retry):
            self._retries.schedule(outcome.delivery, outcome.delay)
            return
        await journal.dead_letter(outcome)
        delivery.epoch.finish()
        if delivery.event.key is not None:
            self._lanes.done(delivery.event, delivery.subscription, dead=True)
