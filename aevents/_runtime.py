"""EventRuntime: a façade over the parts that publish, hold, run and settle deliveries.

The path of one event (see ARCHITECTURE.md): ``publish`` → ``Intake.accept``
(check, build, reserve room in the ``DeliveryBuffer``) → the buffer's queue,
or a key's lane in ``Lanes`` first → a worker of ``Workers`` → ``attempt`` →
the receiver; a failure goes to ``Failures.on_failure``, which answers with a
retry (``RetrySchedule``) or a dead letter (``DeadLetterShelf``, or the store
through ``Journal``). ``Publisher`` does the waiting and the special cases of
publishing.

Three choices keep the hot path fast without giving up cancellation:

* ``publish`` honours a cancellation that reached its task, but yields to the
  scheduler only when it must wait for room. A naive ``await send()`` per
  event yields on every event and runs about 15x slower.
* The buffer's queue is a deque of its own: putting and taking never yield.
  Its bound counts every delivery of an event at once, so an event is
  admitted whole or not at all.
* Workers yield every ``YIELD_EVERY`` deliveries, so a flood of trivial
  receivers cannot starve the rest of the application.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import anyio.from_thread
from anyio.lowlevel import checkpoint

from ._buffer import DeliveryBuffer
from ._config import RuntimeConfig
from ._delivery import Delivery, SyncThreads, delivery_var, named, running_delivery
from ._event import Event
from ._exceptions import AeventsError, RuntimeClosedError, StoreError, WrongThreadError
from ._failures import DeadLetterShelf, Failures
from ._fleet import Fleet
from ._idempotency import IdempotencyWindow, claims_key
from ._intake import Intake, Waiting
from ._journal import Journal
from ._lanes import Lanes
from ._lowlevel import cancelled_predicate, honour_cancellation, leaf_errors, native_event
from ._middleware import Middleware, MiddlewareStack, notify
from ._payload import DEFAULT_MAX_PAYLOAD_BYTES
from ._policy import DeadLetter, RetryPolicy
from ._publishing import Publisher
from ._registry import Registry
from ._retries import RetrySchedule
from ._state import DRAINING, NEW, RUNNING, STOPPED, Counters, Epochs, RunState
from ._stats import RuntimeStats
from ._store._protocol import LeasedStore, Store, shared
from ._text import counted
from ._workers import Workers

if TYPE_CHECKING:
    from ._metrics import Metrics

__all__ = ["EventRuntime", "RuntimeStats", "current_runtime"]

_get_ident = threading.get_ident

_current_runtime: ContextVar[EventRuntime | None] = ContextVar("aevents_runtime", default=None)
_running: list[EventRuntime] = []  # every started runtime in this process, oldest first
_running_lock = threading.Lock()

logger = logging.getLogger("aevents.runtime")


def current_runtime() -> EventRuntime | None:
    """The runtime that module-level ``publish`` would use from here, if any.

    The runtime whose ``async with`` encloses the calling task; failing that,
    the most recently started one on this thread (a request task that uvicorn
    or Starlette started outside the lifespan's ``async with``); failing that,
    the only runtime in the process (a foreign thread, for ``publish_threadsafe``).
    """
    runtime = _current_runtime.get()
    if runtime is not None and runtime._run.accepting:
        return runtime
    thread = threading.get_ident()
    with _running_lock:
        for runtime in reversed(_running):
            if runtime._run.thread == thread:
                return runtime
        if len(_running) == 1:
            return _running[0]
    return None


class EventRuntime:
    """The event runtime: ``async with EventRuntime() as runtime:`` is its whole life.

    Deliveries wait in a bounded buffer for one of ``workers`` worker tasks.
    Each (event, receiver) delivery is independent: it is retried per its
    ``RetryPolicy`` and becomes a dead letter when its attempts run out.
    Leaving the ``async with`` stops new publishes, drains what was accepted
    within ``shutdown_timeout`` seconds, then cancels the rest and logs how
    many deliveries were dropped (with a store they stay pending for the
    next start). A runtime starts once; build a new one to start again.

    Args:
        registry: The receivers to deliver to. Defaults to
            ``aevents.default_registry``, which ``aevents.subscribe`` fills.
        workers: Worker tasks delivering concurrently. Default 8.
        buffer: Deliveries that may wait for a worker; ``publish`` waits when
            the buffer is full. Default 1024.
        store: A journal (``aevents.SQLiteStore``) that makes delivery at
            least once across a crash, or a store that several runtimes share
            through leases (``aevents.MemoryStore``, for now), from which each
            runs a share of the deliveries. Default ``None``: in memory only.
        retry: The policy of receivers subscribed without one. Default
            ``None``, meaning ``RetryPolicy()``: 3 attempts with backoff.
        timeout: Seconds an async receiver's attempt may run before it is
            cancelled and counted as failed. Default ``None``: no limit,
            since no one figure suits every receiver; set it per receiver
            with ``subscribe(..., timeout=)`` for those that call the network.
        shutdown_timeout: Seconds leaving the ``async with`` waits for accepted
            deliveries before cancelling the rest. Default 10.
        strict: Publish only names that an ``aevents.Catalog`` declares.
            Default ``False``.
        max_payload_bytes: The largest payload accepted, as JSON. Default 1 MiB.
        max_causation_depth: How deep receivers may publish events from
            events before ``CausationDepthError``. Default 32.
        max_dead_letters: Dead letters kept in memory without a store; older
            ones are evicted. Default 10,000.
        sync_threads: Worker threads for sync receivers, from a limiter of the
            runtime's own (never anyio's default one). Default ``None``: as
            many as ``workers``.
        middleware: Hooks around each publish and each delivery attempt, in
            order (see ``aevents.Middleware``). Default none.
        metrics: ``True``, or an ``aevents.Metrics`` of your own, keeps
            delivery counters and histograms per subscription, read with
            ``runtime.metrics.snapshot()``. It runs as the first middleware.
            Default ``False``.
        log_payloads: Add each failed event's payload to its log records (as
            the ``payload`` extra field). Default ``False``: payloads are
            never logged.
        keyed_dead_letters: What a dead letter does to the later events of its
            ordering key: ``"skip"`` past it (the default), or ``"hold"`` them
            until it is redelivered or ``release_key`` is called.
        idempotency_window: Seconds a ``publish(..., idempotency_key=)`` key
            is remembered. Default 24 hours.
        max_idempotency_keys: Keys remembered at most. Default 100,000. With a
            store, keys are kept in the journal across a restart.
        consume: With a shared store, ``False`` publishes durably but claims
            nothing: the processes that consume from the store run the
            deliveries (a web process when workers run the receivers).
            ``scope="process"`` receivers still run here. Default ``True``.
        lease: With a shared store, seconds a claimed delivery stays this
            process's without a renewal: renewed every third of it while its
            receiver runs, and taken over by another process when this one
            dies or stalls for longer. Default 30.
        start_ahead: With a shared store, how many claims waiting in the buffer
            may have their attempt recorded as started ahead of the workers
            that take them, so that those workers need no store call of their
            own. Larger values take a batch in fewer calls (``publish_many``
            of 256 on Redis with ``start_ahead=256``: 2 scripts in all,
            against 19 with the default); the price is that a process that
            dies counts an attempt for each claim started ahead of it that
            never ran (see "Attempts add up across processes" in the
            processes guide). Default ``None``: as many as ``workers``.

    Raises:
        ConfigurationError: An option has a wrong type or value; the message
            names it.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        workers: int = 8,
        buffer: int = 1024,
        store: Store | LeasedStore | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        shutdown_timeout: float = 10.0,
        strict: bool = False,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_causation_depth: int = 32,
        max_dead_letters: int = 10_000,
        sync_threads: int | None = None,
        middleware: Sequence[Middleware] = (),
        metrics: bool | Metrics = False,
        log_payloads: bool = False,
        keyed_dead_letters: Literal["skip", "hold"] = "skip",
        idempotency_window: float = 24 * 3600.0,
        max_idempotency_keys: int = 100_000,
        consume: bool = True,
        lease: float = 30.0,
        start_ahead: int | None = None,
    ) -> None:
        config = RuntimeConfig(
            registry=registry,
            workers=workers,
            buffer=buffer,
            store=store,
            retry=retry,
            timeout=timeout,
            shutdown_timeout=shutdown_timeout,
            strict=strict,
            max_payload_bytes=max_payload_bytes,
            max_causation_depth=max_causation_depth,
            max_dead_letters=max_dead_letters,
            sync_threads=sync_threads,
            middleware=middleware,
            metrics=metrics,
            log_payloads=log_payloads,
            keyed_dead_letters=keyed_dead_letters,
            idempotency_window=idempotency_window,
            max_idempotency_keys=max_idempotency_keys,
            consume=consume,
            lease=lease,
            start_ahead=start_ahead,
        )
        self.metrics: Metrics | None = config.metrics
        self.registry = config.registry
        self.store = config.store
        self.workers = config.workers
        self.buffer = config.buffer
        self.retry = config.retry
        self.timeout = config.timeout
        self.shutdown_timeout = config.shutdown_timeout
        self.strict = config.strict
        self.max_payload_bytes = config.max_payload_bytes
        self.max_causation_depth = config.max_causation_depth
        self.max_dead_letters = config.max_dead_letters
        self.sync_threads = config.sync_threads
        self.log_payloads = config.log_payloads
        self.keyed_dead_letters = config.keyed_dead_letters
        self.consume = config.consume
        self.lease = config.lease
        self.start_ahead = config.start_ahead
        leased = shared(store)

        # The parts, each owning its state; see the module docstring for the path.
        self._run = RunState()
        self._counters = counters = Counters()
        self._middleware = MiddlewareStack(
            config.middleware if config.metrics is None else (config.metrics, *config.middleware)
        )
        self._epochs = epochs = Epochs(self)
        self._buffer = room = DeliveryBuffer(buffer, workers)
        self._lanes = lanes = Lanes(
            room, epochs, keyed_dead_letters, behind_replay=store is not None and not leased
        )
        self._retries = RetrySchedule(room)
        self._failures = failures = Failures(
            retry=self.retry,
            counters=counters,
            middleware=self._middleware,
            log_payloads=config.log_payloads,
        )
        self._shelf = DeadLetterShelf(
            config.max_dead_letters,
            registry=self.registry,
            lanes=lanes,
            counters=counters,
            middleware=self._middleware,
        )
        self._idempotency = IdempotencyWindow(
            config.idempotency_window, config.max_idempotency_keys
        )
        self._fleet = (
            Fleet(
                store,
                run=self._run,
                buffer=room,
                epochs=epochs,
                failures=failures,
                counters=counters,
                registry=self.registry,
                middleware=self._middleware,
                keyed_dead_letters=keyed_dead_letters,
                consume=config.consume,
                idempotency=self._idempotency,
                lease=config.lease,
                start_ahead=config.start_ahead,
            )
            if leased and isinstance(store, LeasedStore)
            else None
        )
        self._journal = (
            None
            if store is None or leased or not isinstance(store, Store)
            else Journal(
                store,
                run=self._run,
                buffer=room,
                lanes=lanes,
                epochs=epochs,
                failures=failures,
                counters=counters,
                registry=self.registry,
                middleware=self._middleware,
                idempotency=self._idempotency,
                keyed_dead_letters=keyed_dead_letters,
            )
        )
        self._intake = Intake(
            self,
            run=self._run,
            registry=self.registry,
            buffer=room,
            lanes=lanes,
            epochs=epochs,
            counters=counters,
            durable=store is not None,
            strict=config.strict,
            max_payload_bytes=config.max_payload_bytes,
            max_causation_depth=config.max_causation_depth,
            on_storm=failures.storm,
        )
        # With a shared store, each name published is checked against the routes of the
        # live consumers (a dict lookup once the name is known).
        self._accept = (
            self._intake.accept
            if self._fleet is None
            else self._fleet.routes.watch(self._intake.accept)
        )
        self._publisher = Publisher(
            intake=self._intake,
            accept=self._accept,
            run=self._run,
            buffer=room,
            journal=self._journal,
            fleet=self._fleet,
            counters=counters,
            middleware=self._middleware,
            idempotency=self._idempotency,
            strict=config.strict,
            max_payload_bytes=config.max_payload_bytes,
        )
        self._threads: SyncThreads | None = None  # made at start: it needs the event loop
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._cancelled: Callable[[], bool] | None = None
        self._checkpoint_if_cancelled: Callable[[], Awaitable[None]] = checkpoint
        self._lifecycle_cm: Any = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> EventRuntime:
        if self._run.state != NEW:
            raise AeventsError("an EventRuntime can be started once; create a new one")
        self._lifecycle_cm = self._lifecycle()
        return await self._lifecycle_cm.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return await self._lifecycle_cm.__aexit__(exc_type, exc, traceback)  # type: ignore[no-any-return]

    def _sync_threads(self) -> SyncThreads:
        assert self._threads is not None, "the runtime has started"
        return self._threads

    async def _seed_idempotency_window(self, store: LeasedStore) -> None:
        """A shared store that can list its recent keys (``SQLiteStore``, ``MemoryStore``)
        seeds the window, as a journal does: a ``publish_nowait`` repeated after a restart
        answers with the first event. Closes the store on failure."""
        if not isinstance(store, Store):
            return
        window = self._idempotency
        since = datetime.now(UTC) - timedelta(seconds=window.window)
        try:
            window.seed(await store.recent_idempotency_keys(since, window.max_keys))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.close()
            raise

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[EventRuntime]:
        journal = self._journal
        fleet = self._fleet
        if journal is not None:
            await journal.open()
        if fleet is not None:
            await fleet.open()
            await self._seed_idempotency_window(fleet.store)
        self._threads = threads = SyncThreads(self.sync_threads)
        self._buffer.new_event = native_event()
        self._run.thread = threading.get_ident()
        self._cancelled = cancelled_predicate()
        if self._cancelled is None:
            import trio

            self._checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
        workers = Workers(
            buffer=self._buffer,
            lanes=self._lanes,
            retries=self._retries,
            failures=self._failures,
            shelf=self._shelf,
            journal=journal,
            fleet=fleet,
            counters=self._counters,
            middleware=self._middleware,
            timeout=self.timeout,
            threads=threads,
        )
        body_error: BaseException | None = None
        token = _current_runtime.set(self)
        with _running_lock:
            _running.append(self)
        try:
            async with (
                anyio.from_thread.BlockingPortal() as portal,
                anyio.create_task_group() as tasks,
            ):
                self._portal = portal
                self._publisher.started(tasks)
                for _ in range(self.workers):
                    tasks.start_soon(workers.run)
                tasks.start_soon(self._retries.run)
                if journal is not None:
                    await journal.start(tasks)
                if fleet is not None:
                    await fleet.start(tasks, self._intake.dispatch)
                self._run.state = RUNNING
                try:
                    yield self
                except BaseException as error:  # re-raised as itself once the task group is gone
                    body_error = error
                await self._shutdown(
                    tasks, cancelled=isinstance(body_error, anyio.get_cancelled_exc_class())
                )
        except BaseExceptionGroup as group:
            # A worker can only fail with KeyboardInterrupt, SystemExit or a bug:
            # surface it as itself rather than wrapped in (nested) groups.
            errors = leaf_errors(group)
            if len(errors) == 1:
                raise errors[0] from None
            raise
        finally:
            self._run.state = STOPPED
            self._buffer.close()
            self._report_dropped()
            self._report_abandoned()
            with _running_lock:
                if self in _running:
                    _running.remove(self)
            try:
                _current_runtime.reset(token)
            except ValueError:  # exited in another context than it was entered in
                _current_runtime.set(None)
            if journal is not None:
                await journal.close()
            if fleet is not None:
                await fleet.stop()
        if body_error is not None:
            raise body_error

    async def _shutdown(self, tasks: anyio.abc.TaskGroup, *, cancelled: bool) -> None:
        """Stop accepting, drain within the shutdown timeout, cancel what is left."""
        self._run.state = DRAINING
        try:
            if not cancelled:
                with anyio.move_on_after(self.shutdown_timeout):
                    await self.drain()
        finally:
            self._run.state = STOPPED
            self._buffer.close()  # publishers still waiting for room, idle workers
            self._epochs.wake_all()  # drain() callers: nothing more
            tasks.cancel_scope.cancel()

    def _report_dropped(self) -> None:
        """Count and log, once, the deliveries the stop left unrun (the task group is gone)."""
        in_flight = self._in_flight()
        queued, retrying = self._buffer.queued, len(self._retries)
        left = queued + in_flight + retrying
        if not left:
            return
        self._counters.dropped += left
        if self._middleware.outcomes:
            # Not those in flight: their cancelled attempts went to after_delivery.
            unrun = [*self._buffer.items, *self._lanes.waiting(), *self._retries.waiting()]
            for delivery in unrun:
                notify(self._middleware.outcomes, "on_dropped", named(delivery).info())
        if self._fleet is not None:
            fate = (
                "claims go back to the store for any consumer; "
                'deliveries to scope="process" receivers are lost'
            )
            unjournaled = self._fleet.unjournaled
        elif self._journal is not None:
            fate = "they stay pending in the journal for the next start"
            unjournaled = self._journal.unjournaled
        else:
            fate = "without a store they are lost"
            unjournaled = 0
        if unjournaled:
            fate += (
                f", except {unjournaled} of events accepted by publish_nowait "
                "whose journal write never began: those are lost"
            )
        logger.warning(
            "event runtime stopped with %s not run "
            "(%d queued, %d in flight, %d waiting to retry); %s",
            counted(left, "delivery"),
            queued,
            in_flight,
            retrying,
            fate,
            extra={"dropped": left, "unjournaled": unjournaled},
        )

    def _report_abandoned(self) -> None:
        """Log the sync receivers still running on their threads as the runtime stops."""
        running = self._sync_threads().running()
        if running:
            logger.warning(
                "event runtime stopped with %s still running, "
                "abandoned on daemon threads (they cannot be interrupted and do not "
                "keep the process from exiting): %s",
                counted(len(running), "sync receiver call"),
                ", ".join(repr(receiver_id) for receiver_id in running),
                extra={"abandoned": running},
            )

    # ------------------------------------------------------------------ publishing

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
        """Validate, queue one delivery per matching receiver, and return the event.

        Waits while the buffer is full (backpressure); with a store, also until
        the event and its deliveries are durable. It yields to the scheduler
        when it has to wait (with a store, always: for the write), and
        otherwise once, shielded, when it woke an idle worker, so that the
        delivery starts before the caller goes on. Once a
        cancellation has reached the calling task (in the cleanup code of a
        cancelled scope, say) it raises before accepting anything; on trio it
        is a full cancel point, while on asyncio a scope the task cancelled
        itself reaches it at its next yield.
        Cancelled while waiting for room, nothing was accepted; once the
        journal write has begun it is finished (shielded), so publish either
        returns the accepted event or raises having accepted nothing.

        Args:
            name: The event name, such as ``"user:account:created"``
                (positional only).
            payload: A JSON-serialisable mapping with ``str`` keys. It is
                copied through an orjson round trip, so receivers see what a
                journal would give back. Default: an empty mapping.
            metadata: String entries carried with the event (trace context,
                a tenant). ``"idempotency_key"`` is reserved.
            key: Orders delivery: for each receiver, events with the same key
                (a string of 1 to 200 characters) run one at a time in publish
                order, across retries and (with a store) across a restart;
                events with other keys, or none, run concurrently.
            idempotency_key: Makes repeats no-ops: the first publish with a key
                is accepted, and a repeat within ``idempotency_window`` returns
                that first event and publishes nothing (a repeat made while the
                first still waits for room waits for it). The key travels in
                ``metadata["idempotency_key"]``.

        Returns:
            The accepted event, with its id and causation metadata.

        Raises:
            InvalidEventNameError: ``name`` breaks the name grammar.
            UnknownEventError: With ``strict=True``, no catalog declares ``name``.
            PayloadError: The payload, metadata or a key cannot be accepted; the
                message names the event and the key path.
            CausationDepthError: A receiver's chain of publishes went deeper than
                ``max_causation_depth``.
            RuntimeNotRunningError: The runtime has not started.
            RuntimeClosedError: The runtime is shutting down or has stopped.
            StoreError: The journal could not record the event.
            WrongThreadError: Called from a thread other than the event loop's:
                use ``publish_threadsafe()`` there.
        """
        if _get_ident() != self._run.thread:
            raise self._intake.wrong_thread(name, "publish")
        # A cancel point without a schedule point (see cancelled_predicate).
        cancelled = self._cancelled
        if cancelled is None:
            await self._checkpoint_if_cancelled()
        elif cancelled():
            await honour_cancellation(cancelled)
        if idempotency_key is not None or (metadata is not None and claims_key(metadata)):
            return await self._publisher.publish_once(name, payload, metadata, key, idempotency_key)
        if self._middleware.publish:
            return await self._publisher.publish_with_middleware(name, payload, metadata, key)
        queued = delivery_var.get()  # inside a receiver, the delivery it runs
        parent = None if queued is None else named(queued)
        buffer = self._buffer
        waking = buffer.waking
        accepted = self._accept(name, payload, metadata, parent, key)
        if isinstance(accepted, Waiting):
            return await self._publisher.finish(name, accepted, parent)
        if buffer.waking and not waking:
            # It woke an idle worker: let it start the delivery now, not at the caller's
            # next yield, which may come after more work (at a paced load on asyncio, this
            # halved the median latency and cut the 99th percentile by two thirds).
            await anyio.lowlevel.cancel_shielded_checkpoint()
        return accepted

    def publish_nowait(
        self,
        name: str,
        /,
        *,
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """Like ``publish`` but never waits: raises ``QueueFullError`` when full.

        For sync code running on the event loop's thread. With a store the
        event is journaled in the background before it is delivered, so it is
        not yet durable when this returns: a crash in that window loses it (its
        ``idempotency_key`` too). Use ``await publish()`` where that matters.

        Args:
            name: The event name (positional only).
            payload: A JSON-serialisable mapping, as for ``publish``.
            metadata: String entries carried with the event, as for ``publish``.
            key: The ordering key, as for ``publish``.
            idempotency_key: As for ``publish``: a repeat returns the first event.

        Returns:
            The accepted event.

        Raises:
            QueueFullError: The buffer has no room for the event's deliveries.
            KeyInFlightError: A repeat of an ``idempotency_key`` whose first
                publish still waits for room (a ``QueueFullError``).
            WrongThreadError: Called from a thread other than the event loop's:
                use ``publish_threadsafe()`` there.
            InvalidEventNameError: As for ``publish``.
            UnknownEventError: As for ``publish``.
            PayloadError: As for ``publish``.
            RuntimeNotRunningError: The runtime has not started.
            RuntimeClosedError: The runtime is shutting down or has stopped.
        """
        if _get_ident() != self._run.thread:
            raise self._intake.wrong_thread(name, "publish_nowait")
        return self._publisher.publish_nowait(name, payload, metadata, key, idempotency_key)

    async def publish_many(
        self,
        name: str,
        /,
        payloads: Iterable[Mapping[str, Any] | None],
        *,
        keys: Iterable[str | None] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[Event]:
        """Publish a batch of events of one name: all of them, or none.

        Every payload, key and the metadata are checked, and every event
        built, before anything is accepted; then room for all of the batch's
        deliveries is taken at once, waiting while the buffer is full (in line
        with the other publishes). A batch larger than the whole buffer waits
        until the buffer is empty, then goes in whole, as one oversize event
        does. With a store, the batch is journaled before any of it is queued,
        and this returns once it is durable. It is a cancel point, as
        ``publish`` is: cancelled while waiting for room, nothing was
        accepted; once the journal write has begun it is finished (shielded).
        Publish middleware sees one ``before_publish`` and ``after_publish``
        per event, as if each had been published alone.

        Args:
            name: The event name of every event in the batch (positional only).
            payloads: One JSON-serialisable mapping (or ``None``, for an empty
                one) per event, in order. Each is copied as for ``publish``.
            keys: ``None``, or one ordering key (a ``str``, or ``None`` for
                none) per payload, in the same order. The events of one key
                run in batch order for each receiver, as for ``publish``.
            metadata: String entries carried by every event of the batch (each
                event gets its own copy). ``"idempotency_key"`` is refused:
                publish events that need one with ``publish(...,
                idempotency_key=...)``.

        Returns:
            The accepted events, in the order of ``payloads``; empty for an
                empty batch.

        Raises:
            PayloadError: A payload, a key or the metadata cannot be accepted;
                the message names the event and the index in the batch
                (``payloads[3]['user']['id']``, ``keys[3]``). Nothing was accepted.
            InvalidEventNameError: As for ``publish``.
            UnknownEventError: As for ``publish``.
            CausationDepthError: As for ``publish``.
            RuntimeNotRunningError: The runtime has not started.
            RuntimeClosedError: The runtime is shutting down or has stopped.
            StoreError: The journal could not record the batch; none of it
                was accepted.
            WrongThreadError: Called from a thread other than the event loop's.
        """
        if _get_ident() != self._run.thread:
            raise self._intake.wrong_thread(name, "publish_many")
        cancelled = self._cancelled
        if cancelled is None:
            await self._checkpoint_if_cancelled()
        elif cancelled():
            await honour_cancellation(cancelled)
        return await self._publisher.publish_many(name, payloads, keys, metadata)

    def publish_many_nowait(
        self,
        name: str,
        /,
        payloads: Iterable[Mapping[str, Any] | None],
        *,
        keys: Iterable[str | None] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[Event]:
        """Like ``publish_many`` but never waits: all of the batch, or ``QueueFullError``.

        The batch goes in only if the buffer has room for all of its
        deliveries now (or is empty, for a batch larger than the buffer).
        With a store it is journaled in the background before it is
        delivered, as for ``publish_nowait``: not yet durable when this returns.

        Args:
            name: The event name (positional only).
            payloads: One payload per event, as for ``publish_many``.
            keys: ``None``, or one ordering key per payload, as for ``publish_many``.
            metadata: String entries carried by every event, as for ``publish_many``.

        Returns:
            The accepted events, in order.

        Raises:
            QueueFullError: The buffer has no room for the batch's deliveries;
                none of it was accepted.
            PayloadError: As for ``publish_many``.
            WrongThreadError: Called from a thread other than the event loop's.
            InvalidEventNameError: As for ``publish``.
            UnknownEventError: As for ``publish``.
            RuntimeNotRunningError: The runtime has not started.
            RuntimeClosedError: The runtime is shutting down or has stopped.
        """
        if _get_ident() != self._run.thread:
            raise self._intake.wrong_thread(name, "publish_many_nowait")
        return self._publisher.publish_many_nowait(name, payloads, keys, metadata)

    def publish_threadsafe(
        self,
        name: str,
        /,
        *,
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """Publish from a thread that is not the event loop's; blocks until accepted.

        For sync views, ORM signal handlers and sync receivers on worker
        threads. It waits for room, and with a store until the event is
        journaled, as ``await publish()`` does on the loop.

        Args:
            name: The event name (positional only).
            payload: A JSON-serialisable mapping, as for ``publish``.
            metadata: String entries carried with the event, as for ``publish``.
            key: The ordering key, as for ``publish``.
            idempotency_key: As for ``publish``: a repeat returns the first event.

        Returns:
            The accepted event.

        Raises:
            WrongThreadError: Called on the event loop's own thread, where it
                would block the loop: use ``await publish()`` or ``publish_nowait()``.
            InvalidEventNameError: As for ``publish``.
            UnknownEventError: As for ``publish``.
            PayloadError: As for ``publish``.
            RuntimeClosedError: The runtime is shutting down or has stopped.
            StoreError: The journal could not record the event.
        """
        if not self._run.accepting:
            raise self._intake.not_accepting(name)
        if _get_ident() == self._run.thread:
            raise WrongThreadError(name, "publish_threadsafe")
        assert self._portal is not None
        parent = running_delivery()  # worker threads inherit the receiver's context
        try:
            event: Event = self._portal.call(
                self._publish_for_thread, name, payload, metadata, key, idempotency_key, parent
            )
        except RuntimeError as error:
            # The portal stopped between our check and the call.
            if self._run.state is STOPPED:
                raise RuntimeClosedError(name) from error
            raise
        return event

    async def _publish_for_thread(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
        parent: Delivery | None,
    ) -> Event:
        token = delivery_var.set(parent)
        try:
            return await self.publish(
                name, payload=payload, metadata=metadata, key=key, idempotency_key=idempotency_key
            )
        finally:
            delivery_var.reset(token)

    def _validated(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
    ) -> tuple[dict[str, Any], dict[str, str] | None, str | None]:
        """Check a publish to be made later (``publish_on_commit``) as ``publish`` would."""
        return self._publisher.validated(name, payload, metadata, key, idempotency_key)

    # ------------------------------------------------------------------ draining

    async def drain(self) -> None:
        """Wait until every delivery accepted so far has finished or been dead-lettered.

        That includes everything those deliveries publish in turn, retries
        still waiting for their backoff, and (with a store) the replay of what
        an earlier run left pending. Deliveries accepted after the call are not
        waited for, and neither are deliveries held behind a dead letter
        (``keyed_dead_letters="hold"``). Cancelling it leaves the runtime
        unaffected. With ``timeout=None``, a hung async receiver keeps it
        waiting: bound the wait with ``anyio.fail_after()`` if that matters.

        Raises:
            AeventsError: Awaited inside a receiver, where it would wait for itself.
        """
        if self._intake.in_delivery(running_delivery()):
            raise AeventsError(
                "drain() cannot be awaited inside a receiver: it would wait for itself"
            )
        await checkpoint()
        if self._run.state in (NEW, STOPPED):
            return
        if self._fleet is not None:
            await self._fleet.drain(self._wait_for_epochs)
            return
        await self._epochs.wait_for_all(self._run)

    async def _wait_for_epochs(self) -> None:
        await self._epochs.wait_for_all(self._run)

    # ------------------------------------------------------------------ dead letters and keys

    async def dead_letters(self) -> list[DeadLetter]:
        """The dead letters, oldest first.

        Returns:
            With a store, every dead letter in the journal; without one, those
                kept in memory (at most ``max_dead_letters``, the newest). With
                a shared store, those of ``scope="process"`` receivers too,
                which are kept in memory.
        """
        if self.store is None:
            await checkpoint()
            return self._shelf.list()
        letters = await self.store.dead_letters()
        if self._fleet is not None and (kept := self._shelf.list()):
            letters = sorted([*letters, *kept], key=lambda letter: letter.failed_at)
        return letters

    async def redeliver(
        self, dead_letters: Iterable[DeadLetter | str] | DeadLetter | str | None = None
    ) -> int:
        """Queue dead letters again with a fresh set of attempts.

        The receiver id is resolved through the registry as it is now; a letter
        whose receiver is no longer subscribed stays dead and is logged. Waits
        for room like ``publish``; if cancelled, letters not yet queued stay dead.

        Args:
            dead_letters: Dead letters, or their ids, one or many. Default
                ``None``: all of them.

        Returns:
            How many were queued.
        """
        if self._run.state is not RUNNING:
            raise self._intake.not_accepting("<redeliver>")
        known = {letter.id: letter for letter in await self.dead_letters()}
        if dead_letters is None:
            chosen = list(known)
        elif isinstance(dead_letters, DeadLetter | str):
            chosen = [dead_letters.id if isinstance(dead_letters, DeadLetter) else dead_letters]
        else:
            chosen = [
                letter.id if isinstance(letter, DeadLetter) else letter for letter in dead_letters
            ]
        queued = 0
        shared: list[DeadLetter] = []  # letters a shared store holds: redelivered there
        for letter_id in chosen:
            letter = known.get(letter_id)
            if letter is None:
                continue
            subscription = self.registry.receiver(letter.receiver_id, letter.event.name)
            if subscription is None:
                logger.warning(
                    "dead letter %s not redelivered: receiver %r is not subscribed",
                    letter_id,
                    letter.receiver_id,
                )
                continue
            if self._fleet is not None and subscription.scope == "fleet":
                shared.append(letter)
                continue
            await self._buffer.reserve(1)
            if self._journal is not None:
                self._journal.not_for_replay(letter.event.id)
                try:
                    await self._journal.store.redeliver([letter_id])
                except BaseException:
                    self._buffer.release(1)  # the letter stays dead; give its room back
                    raise
            self._shelf.discard(letter_id)
            self._intake.dispatch(letter.event, (subscription,), self._epochs.current)
            queued += 1
        if self._fleet is not None:
            queued += await self._fleet.redeliver(shared)
        await checkpoint()
        return queued

    async def discard(self, dead_letters: Iterable[DeadLetter | str] | DeadLetter | str) -> int:
        """Delete dead letters for good, without running them.

        A discarded letter is gone from ``dead_letters()``; with a store its
        delivery counts as done. A keyed letter that held its key
        (``keyed_dead_letters="hold"``) lets the deliveries behind it go. Ids
        of letters that do not exist (any more) are skipped. There is no
        "all" default: pass the letters. If cancelled, the letters the store
        had not deleted yet stay dead.

        Args:
            dead_letters: Dead letters, or their ids, one or many.

        Returns:
            How many were discarded.

        Raises:
            StoreError: The runtime's store is a journal (``Store``) only,
                which cannot discard; or the store could not record it.
        """
        if self._run.state is not RUNNING:
            raise self._intake.not_accepting("<discard>")
        if isinstance(dead_letters, DeadLetter | str):
            dead_letters = [dead_letters]
        chosen = [item.id if isinstance(item, DeadLetter) else item for item in dead_letters]
        discarded = 0
        stored: list[str] = []
        for letter_id in dict.fromkeys(chosen):
            letter = self._shelf.discard(letter_id)
            if letter is None:
                stored.append(letter_id)
                continue
            discarded += 1
            key = letter.event.key
            if key is not None and self._lanes.holder(letter.receiver_id, key) == letter.event.id:
                self._lanes.release_key(letter.receiver_id, key)
        if stored and isinstance(self.store, LeasedStore):
            discarded += await self.store.discard(stored)
        elif stored and self.store is not None:
            raise StoreError(
                repr(self.store),
                "cannot discard dead letters: a journal (Store) has no discard(); "
                "redeliver them instead, or use a store that shares deliveries (SQLiteStore)",
            )
        await checkpoint()
        return discarded

    def release_key(self, receiver_id: str, key: str) -> bool:
        """Let a lane held by a dead letter move on past it; False if it was not held.

        With ``keyed_dead_letters="hold"``, a dead letter keeps the later
        deliveries of its receiver and key waiting. This skips past it: the
        dead letter stays listed (and can still be redelivered, after the
        others), and the next delivery of the key is queued now.

        With a shared store the key is released in the store, in the
        background, and the answer is whether this process knew it held (see
        ``held_keys``).
        """
        if self._fleet is not None and self._lanes.holder(receiver_id, key) is None:
            return self._fleet.release_key(receiver_id, key)
        return self._lanes.release_key(receiver_id, key)

    def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}`` for held lanes.

        With a shared store, the keys held in the store as this process last
        read them (at start and at the end of each ``drain()``) or changed
        them; ``await store.held_keys()`` reads them now.
        """
        if self._fleet is not None:
            return {**self._fleet.held_keys(), **self._lanes.held_keys()}
        return self._lanes.held_keys()

    # ------------------------------------------------------------------ middleware and stats

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware, in the order their ``before_*`` hooks run."""
        return tuple(self._middleware.all)

    def add_middleware(self, middleware: Middleware) -> None:
        """Add a middleware after the others; it applies to publishes and attempts from now on.

        Safe while the runtime runs (on the event loop's thread): an attempt
        already under way finishes with the hooks it started with.
        """
        self._middleware.add(middleware)

    def remove_middleware(self, middleware: Middleware) -> bool:
        """Remove a middleware; False if it was not there."""
        return self._middleware.remove(middleware)

    @property
    def running(self) -> bool:
        """True between entering and leaving the ``async with``."""
        return self._run.accepting

    def _in_flight(self) -> int:
        # Every unfinished delivery is queued, waiting to retry, or running;
        # deriving the last keeps two counter updates off each delivery.
        unfinished = self._epochs.unfinished()
        journal = self._journal
        replay = 1 if journal is not None and journal.replaying and self._run.state != NEW else 0
        held = self._lanes.held  # counted as queued, set aside from their epochs
        return max(0, unfinished + held - replay - self._buffer.queued - len(self._retries))

    def stats(self) -> RuntimeStats:
        """A snapshot of the runtime's counters."""
        counters = self._counters
        return RuntimeStats(
            published=counters.published,
            unrouted=counters.unrouted,
            delivered=counters.delivered,
            failed=counters.failed,
            retried=counters.retried,
            dead=counters.dead,
            dropped=counters.dropped,
            queued=self._buffer.queued,
            in_flight=self._in_flight(),
            retrying=len(self._retries),
            active_keys=len(self._lanes),
            held=self._lanes.held,
            repeated=counters.repeated,
            metrics=None if self.metrics is None else self.metrics.snapshot(),
        )

    def __repr__(self) -> str:
        return f"<EventRuntime {self._run.state} workers={self.workers} buffer={self.buffer}>"
