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

from time import perf_counter
from typing import Final

from anyio.lowlevel import checkpoint

from ._attempt import attempt
from ._buffer import DeliveryBuffer
from ._delivery import Delivery, SyncThreads, delivery_var, fails_delivery
from ._exceptions import StoreError
from ._failures import DeadLetterShelf, Failures, Retry
from ._fleet import Fleet
from ._journal import Journal
from ._lanes import Lanes
from ._middleware import MiddlewareStack
from ._retries import RetrySchedule
from ._state import Counters
from ._store._protocol import Completed, Outcome, Rescheduled

__all__ = ["DURABLE_BATCH", "YIELD_EVERY", "Workers"]

YIELD_EVERY: Final = 64
DURABLE_BATCH: Final = 32  # deliveries a worker records, runs and marks done together


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
        take = buffer.take
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
            delivery = take()
            if delivery is None:
                if not await buffer.wait():
                    return
                since_yield = 0
                continue
            since_yield += 1
            event, subscription, attempt_number, epoch, _ = delivery
            # Set, never reset: the worker runs nothing else in its context, and a task
            # or thread a receiver starts keeps the context it was started with, so a
            # reset would be pure cost on every delivery.
            set_delivery(delivery)
            count = middleware.count  # a plain Metrics alone: counted here, no hooks
            hooks = () if count is not None else middleware.delivery
            started = clock()
            try:
                if subscription.fast and not hooks and default_limit is None:
                    # What attempt() returns here, without the call: 3% of fan-out.
                    await subscription.receiver(event)
                else:
                    limit = subscription.timeout
                    await attempt(
                        delivery,
                        hooks,
                        limit if limit is not None else default_limit,
                        threads,
                    )
            except BaseException as error:
                if count is not None:  # a cancelled attempt too, as after_delivery would
                    count(
                        subscription.pattern,
                        subscription.receiver_id,
                        attempt_number,
                        event,
                        started,
                        error,
                    )
                if not fails_delivery(error):
                    raise  # the runtime is cancelled, or KeyboardInterrupt, SystemExit
                outcome = self._failures.on_failure(delivery, error, clock() - started)
                if isinstance(outcome, Retry):
                    self._retries.schedule(outcome.delivery, outcome.delay)
                else:
                    self._shelf.keep(outcome)
                    epoch.finish()
                    if event.key is not None:
                        self._lanes.done(event, subscription, dead=True)
                continue
            if count is not None:
                count(
                    subscription.pattern,
                    subscription.receiver_id,
                    attempt_number,
                    event,
                    started,
                    None,
                )
            counters.delivered += 1
            if event.key is not None:
                self._lanes.done(event, subscription, dead=False)
            # epoch.finish(), inlined: the call costs 3-4% on fan-out to 10 receivers.
            epoch.unfinished -= 1
            if not epoch.unfinished and epoch.done is not None:
                epoch.done.set()

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
        event, subscription = delivery.event, delivery.subscription
        try:
            await attempt(
                delivery, self._middleware.delivery, self._time_limit(delivery), self._threads
            )
        except BaseException as error:
            if not fails_delivery(error):
                raise
            outcome = self._failures.on_failure(delivery, error, perf_counter() - started)
            if isinstance(outcome, Retry):
                self._retries.schedule(outcome.delivery, outcome.delay)
                return
            self._shelf.keep(outcome)
            delivery.epoch.finish()
            if event.key is not None:
                self._lanes.done(event, subscription, dead=True)
            return
        finally:
            delivery_var.reset(token)
        self._counters.delivered += 1
        delivery.epoch.finish()
        if event.key is not None:
            self._lanes.done(event, subscription, dead=False)

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
            batch = [delivery]
            while len(batch) < DURABLE_BATCH and (delivery := take()) is not None:
                batch.append(delivery)
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
