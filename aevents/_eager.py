"""EagerRuntime: an EventRuntime whose publish runs the receivers itself, for unit tests.

Public as ``aevents.testing.EagerRuntime``. It reuses the real publish path
(validation, strict mode, the payload's round trip, middleware, causation
metadata) and swaps one part: the intake's dispatch. Deliveries accepted by a
publish running in this context are collected and run inline, in the
publisher's task, through the same delivery step as the workers, instead of
being queued for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from ._attempt import attempt
from ._delivery import Delivery, delivery_var, fails_delivery, running_delivery
from ._event import Event
from ._exceptions import ConfigurationError
from ._failures import Retry
from ._registry import Registry, Subscription
from ._runtime import EventRuntime
from ._state import Epoch
from ._text import counted

__all__ = ["EagerRuntime"]

_Batch = tuple[Event, tuple[Subscription, ...], Epoch]


class _Later:
    """Deliveries a receiver's attempt accepted through publish_nowait: run when it returns."""

    __slots__ = ("batches", "open", "runtime")

    def __init__(self, runtime: EagerRuntime) -> None:
        self.runtime = runtime
        self.batches: list[_Batch] = []
        self.open = True


class _Chain:
    """The failures of one outermost publish and everything it led to."""

    __slots__ = ("failures", "owners")

    def __init__(self) -> None:
        self.failures: list[tuple[BaseException, str, str]] = []  # (error, receiver id, event name)
        self.owners = 0


# The deliveries accepted by the publish running in this context, and the
# publish_nowait calls of the attempt running in it.
_accepting: ContextVar[tuple[EagerRuntime, list[_Batch]] | None] = ContextVar(
    "aevents_eager_accepting", default=None
)
_later: ContextVar[_Later | None] = ContextVar("aevents_eager_later", default=None)


class EagerRuntime(EventRuntime):
    """An ``EventRuntime`` whose ``publish`` runs the receivers itself, for unit tests.

    ``await publish(...)`` validates and builds the event as the real runtime
    does (name grammar, strict mode, the payload's orjson round trip,
    middleware), then calls each matching receiver in turn in the publisher's
    task, depth first: it returns once they, and whatever they published, ran.
    Receivers see ``current_delivery()``, and their events carry causation
    metadata. ``publish_threadsafe`` from another thread is eager too.

    Differences from ``EventRuntime``:

    * No concurrency between one publish's receivers, and no backpressure.
    * A failing delivery is retried at once, without the backoff wait. With
      ``raise_errors=True`` (the default) its last error is raised by the
      outermost ``publish`` once every receiver ran (the others, if several
      failed, are listed in the error's notes); a receiver that publishes never
      sees its children fail, as in the real runtime. With
      ``raise_errors=False`` it becomes a dead letter, as in the real runtime.
    * ``publish_nowait`` inside a receiver is delivered when that attempt
      returns; elsewhere it is queued for the workers as usual (``drain()``
      waits for it), and so are ``redeliver()`` and retries of those.
    * No store: ``store=`` raises ``ConfigurationError``.

    Cancelling a publish cancels the receiver running; the rest of that
    publish's deliveries are dropped.
    """

    def __init__(
        self, registry: Registry | None = None, *, raise_errors: bool = True, **options: Any
    ) -> None:
        if options.get("store") is not None:
            raise ConfigurationError(
                "EagerRuntime", "eager delivery keeps no journal; drop store= or use EventRuntime"
            )
        super().__init__(registry, **options)
        self.raise_errors = raise_errors
        self._chains: dict[str, _Chain] = {}  # by correlation id
        self._intake.use_dispatch(self._dispatch_eagerly)

    async def publish(
        self,
        name: str,
        /,
        *,
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """Publish, then run every matching receiver before returning (see the class)."""
        parent = running_delivery()
        batches: list[_Batch] = []
        token = _accepting.set((self, batches))
        try:
            event = await super().publish(
                name, payload=payload, metadata=metadata, key=key, idempotency_key=idempotency_key
            )
        finally:
            _accepting.reset(token)
        await self._deliver_accepted([event], parent, batches)
        return event

    async def publish_many(
        self,
        name: str,
        /,
        payloads: Iterable[Mapping[str, Any] | None],
        *,
        keys: Iterable[str | None] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[Event]:
        """Publish a batch, then run every matching receiver, event by event, before returning.

        All of the batch is accepted before any receiver runs. A failing
        receiver is raised as for ``publish``, once every event's receivers ran.
        """
        parent = running_delivery()
        batches: list[_Batch] = []
        token = _accepting.set((self, batches))
        try:
            events = await super().publish_many(name, payloads, keys=keys, metadata=metadata)
        finally:
            _accepting.reset(token)
        await self._deliver_accepted(events, parent, batches)
        return events

    async def _deliver_accepted(
        self, events: list[Event], parent: Delivery | None, batches: list[_Batch]
    ) -> None:
        """Run what a publish accepted; the outermost publish of a chain raises its failures."""
        if not batches:
            return
        chain_ids = list(dict.fromkeys(event.correlation_id for event in events))
        chain = self._chains.get(chain_ids[0])
        if chain is not None and self._intake.in_delivery(parent):
            await self._deliver_batches(batches)  # nested: the outermost publish reports
            return
        if chain is None:
            chain = _Chain()
        for chain_id in chain_ids:  # a batch's events may each start a chain: they share one
            self._chains[chain_id] = chain
        chain.owners += 1
        try:
            await self._deliver_batches(batches)
        finally:
            chain.owners -= 1
            if not chain.owners:
                for chain_id in chain_ids:
                    self._chains.pop(chain_id, None)
        failures, chain.failures = chain.failures, []
        if not failures:
            return
        error = failures[0][0]
        if len(failures) > 1:
            error.add_note(
                f"aevents: {counted(len(failures) - 1, 'more receiver')} failed in this publish: "
                + "; ".join(
                    f"{receiver_id!r} on {event_name!r}: {type(other).__name__}: {other}"
                    for other, receiver_id, event_name in failures[1:]
                )
            )
        raise error

    def _dispatch_eagerly(
        self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch
    ) -> None:
        """Collect the deliveries of a publish running here; anything else goes to the workers."""
        accepting = _accepting.get()
        if accepting is not None and accepting[0] is self:
            batches = accepting[1]
        else:
            later = _later.get()
            if later is None or later.runtime is not self or not later.open:
                self._intake.enqueue(event, routes, epoch)  # the workers deliver it
                return
            batches = later.batches
        self._buffer.release(len(routes))  # the room publish reserved is not needed
        epoch.unfinished += len(routes)  # drain() from another task waits for them
        batches.append((event, routes, epoch))

    async def _deliver_batches(self, batches: list[_Batch]) -> None:
        for index, (event, routes, epoch) in enumerate(batches):
            done = 0
            try:
                for subscription in routes:
                    try:
                        await self._attempts(event, subscription, epoch)
                    finally:
                        done += 1
                        epoch.finish()
            except BaseException:  # cancelled: what did not run is dropped
                for _ in range(len(routes) - done):
                    epoch.finish()
                self._abandon(batches[index + 1 :])
                raise

    def _abandon(self, batches: list[_Batch]) -> None:
        for _, routes, epoch in batches:
            for _ in routes:
                epoch.finish()

    async def _attempts(self, event: Event, subscription: Subscription, epoch: Epoch) -> None:
        """Run one delivery to success or to its last attempt, without backoff waits."""
        limit = subscription.timeout if subscription.timeout is not None else self.timeout
        delivery = Delivery(event, subscription, 1, epoch, False)
        failures = self._failures
        while True:
            later = _Later(self)
            delivery_token, later_token = delivery_var.set(delivery), _later.set(later)
            started = perf_counter()
            error: BaseException | None = None
            try:
                await attempt(delivery, self._middleware.delivery, limit, self._sync_threads())
            except BaseException as failure:
                if not fails_delivery(failure):
                    later.open = False
                    self._abandon(later.batches)
                    raise
                error = failure
            finally:
                later.open = False
                _later.reset(later_token)
                delivery_var.reset(delivery_token)
            duration = perf_counter() - started
            await self._deliver_batches(later.batches)
            if error is None:
                self._counters.delivered += 1
                return
            chain = self._chains.get(event.correlation_id)
            if self.raise_errors and chain is not None and not failures.will_retry(delivery):
                # The outermost publish raises it: no dead letter.
                self._counters.failed += 1
                failures.forget_storm(event.id, subscription.receiver_id)
                chain.failures.append((error, subscription.receiver_id, event.name))
                return
            outcome = failures.on_failure(delivery, error, duration, backoff=False)
            if isinstance(outcome, Retry):
                delivery = outcome.delivery
                continue
            self._shelf.keep(outcome)
            return
