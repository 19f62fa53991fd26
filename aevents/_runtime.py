"""EventRuntime: the bounded queue, the workers, publishing, draining and shutdown.

The hot path is ``publish`` → ``_accept`` → ``send_nowait`` → ``_work`` →
receiver. Three choices keep it fast without giving up cancellation:

* ``publish`` is a cancel point but yields to the scheduler only when it must
  wait for room. A naive ``await send()`` per item yields on every event and
  runs about 15x slower.
* The queue is an anyio memory stream used only through ``send_nowait`` and
  ``receive_nowait``; its bound is kept in ``_queued`` so that one event's
  deliveries are admitted all at once or not at all.
* Workers yield every ``_YIELD_EVERY`` deliveries, so a flood of trivial
  receivers cannot starve the rest of the application.

Retries and dead letters live in ``_failures``; the store's part in ``_journal``;
per-key ordering in ``_ordering``; ``publish_nowait``, ``publish_threadsafe`` and
publishes with an idempotency key or publish hooks in ``_publishing``; shutdown,
``stats()`` and the middleware list in ``_lifecycle``; the states, ``Epoch``,
``RuntimeStats`` and ``_Deferred`` they all share in ``_state``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import anyio.from_thread
import orjson
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from . import _catalog
from ._config import check_config as _check_config
from ._delivery import (
    DeliveryInfo,
    Item,
    ReplayedAttempt,
    SyncThreads,
    call_receiver,
    delivery_var,
    fails_delivery,
)
from ._event import NO_METADATA, Event, make_event
from ._exceptions import (
    AeventsError,
    CausationDepthError,
    RuntimeClosedError,
    RuntimeNotRunningError,
    UnknownEventError,
    WrongThreadError,
)
from ._failures import FailureHandling
from ._idempotency import IDEMPOTENCY_KEY, IdempotencyWindow
from ._journal import Journaling
from ._lifecycle import Lifecycle
from ._lowlevel import cancelled_check_for_backend, leaf_errors
from ._middleware import Middleware, MiddlewareStack, call_with_middleware, log_after_delivery_error
from ._names import validate_name
from ._ordering import MAX_KEY_CHARS, Ordering, bad_key
from ._payload import DEFAULT_MAX_PAYLOAD_BYTES, encode_metadata, encode_payload, payload_json
from ._policy import DeadLetter, RetryPolicy
from ._publishing import PublishVariants
from ._registry import Registry, Subscription, default_registry
from ._state import _DRAINING, _NEW, _RUNNING, _STOPPED, Epoch, RuntimeStats, _claims_key, _Deferred
from ._store._protocol import Store

if TYPE_CHECKING:
    from ._metrics import Metrics

__all__ = ["EventRuntime", "RuntimeStats", "current_runtime"]

_YIELD_EVERY: Final = 64
_DURABLE_BATCH: Final = 32  # deliveries a worker records, runs and marks done together
_dumps, _loads = orjson.dumps, orjson.loads
_get_ident = threading.get_ident

_current_runtime: ContextVar[EventRuntime | None] = ContextVar("aevents_runtime", default=None)
_running: list[EventRuntime] = []  # every started runtime in this process, oldest first
_running_lock = threading.Lock()


def current_runtime() -> EventRuntime | None:
    """The runtime that module-level ``publish`` would use from here, if any.

    The runtime whose ``async with`` encloses the calling task; failing that,
    the most recently started one on this thread (a request task that uvicorn
    or Starlette started outside the lifespan's ``async with``); failing that,
    the only runtime in the process (a foreign thread, for ``publish_threadsafe``).
    """
    runtime = _current_runtime.get()
    if runtime is not None and runtime._state in (_RUNNING, _DRAINING):
        return runtime
    thread = threading.get_ident()
    with _running_lock:
        for runtime in reversed(_running):
            if runtime._thread == thread:
                return runtime
        if len(_running) == 1:
            return _running[0]
    return None


class EventRuntime(FailureHandling, Journaling, Ordering, PublishVariants, Lifecycle):
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
            least once across a crash. Default ``None``: in memory only.
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
        store: Store | None = None,
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
    ) -> None:
        _check_config(locals())
        if metrics is True:
            from ._metrics import Metrics  # loaded only when asked for

            metrics = Metrics()
        self.metrics: Metrics | None = metrics or None
        self._middleware = MiddlewareStack(
            middleware if self.metrics is None else (self.metrics, *middleware)
        )
        self.registry = registry if registry is not None else default_registry
        self.store = store
        self.workers = workers
        self.buffer = buffer
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self.strict = strict
        self.max_payload_bytes = max_payload_bytes
        self.max_causation_depth = max_causation_depth
        self.max_dead_letters = max_dead_letters
        self.sync_threads = sync_threads if sync_threads is not None else workers
        self.log_payloads = log_payloads
        self.keyed_dead_letters = keyed_dead_letters
        self._init_ordering()
        self._idempotency = IdempotencyWindow(idempotency_window, max_idempotency_keys)
        self._first_publishes: dict[str, anyio.Event] = {}  # keys whose first publish is waiting
        self._repeated = 0

        self._state = _NEW
        self._thread = 0
        self._routes = self.registry.route_cache()
        self._epoch = Epoch(self)
        self._closed_epochs: list[Epoch] = []
        # The bound: deliveries admitted and not yet taken by a worker.
        self._queued = 0
        self._space_waiters: deque[list[Any]] = deque()  # [needed, anyio.Event, granted]
        self._blocked_in_delivery = 0
        self._init_failures()
        self._init_journaling()
        self._dead_letters: dict[str, DeadLetter] = {}
        self._storms: set[tuple[str, str]] = set()
        self._replaying: set[str] | None = set() if store is not None else None
        # Deliveries of events publish_nowait accepted whose journal write has not
        # finished: if shutdown cancels it first, they are lost and must be said so.
        self._unjournaled = 0
        self._published = self._unrouted = self._delivered = 0
        self._failed = self._retried = self._dead = self._dropped = 0
        self._lifecycle_cm: Any = None
        self._cancelled: Callable[[], bool] | None = None
        self._checkpoint_if_cancelled: Callable[[], Awaitable[None]] = checkpoint_if_cancelled

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> EventRuntime:
        if self._state != _NEW:
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

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[EventRuntime]:
        if self.store is not None:
            await (
                self.store.open()
            )  # a journal that cannot be used fails here, before anything runs
            await self._remember_idempotency_keys(self.store)
        send, receive = anyio.create_memory_object_stream[Item](math.inf)
        self._send, self._receive = send, receive
        self._threads = SyncThreads(self.sync_threads)
        self._thread = threading.get_ident()
        self._cancelled = cancelled_check_for_backend()
        if self._cancelled is None:
            import trio

            self._checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
        body_error: BaseException | None = None
        token = _current_runtime.set(self)
        with _running_lock:
            _running.append(self)
        try:
            async with (
                anyio.from_thread.BlockingPortal() as portal,
                anyio.create_task_group() as tasks,
            ):
                self._portal, self._tasks = portal, tasks
                for _ in range(self.workers):
                    tasks.start_soon(self._work)
                tasks.start_soon(self._run_retries)
                if self.store is not None:
                    tasks.start_soon(self._forget_idempotency_keys, self.store)
                    tasks.start_soon(self._complete_durably)
                if self.store is not None:
                    # The journal's pending() is a snapshot from its first page: read
                    # that page before accepting any publish, so the replay never sees
                    # events this run appends.
                    self._epoch.unfinished += 1  # drain() waits for the whole replay
                    await self._hold_lanes_of_dead_letters()
                    replay = self.store.pending().__aiter__()
                    first = await anext(replay, None)
                    tasks.start_soon(self._replay, self._epoch, replay, first)
                self._state = _RUNNING
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
            self._state = _STOPPED
            self._report_dropped()
            self._report_abandoned()
            send.close()
            receive.close()
            with _running_lock:
                if self in _running:
                    _running.remove(self)
            try:
                _current_runtime.reset(token)
            except ValueError:  # exited in another context than it was entered in
                _current_runtime.set(None)
            if self.store is not None:
                with anyio.CancelScope(shield=True):
                    await self.store.close()
        if body_error is not None:
            raise body_error

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
        the event and its deliveries are durable. It is a cancel point: in a
        cancelled scope it raises before accepting anything. It yields to the
        scheduler only when it has to wait. Cancelled while waiting for room,
        nothing was accepted; once the journal write has begun it is finished
        (shielded), so publish either returns the accepted event or raises
        having accepted nothing.

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
        if _get_ident() != self._thread:
            raise self._wrong_thread(name, "publish")
        # A cancel point without a schedule point (see cancelled_check_for_backend).
        cancelled = self._cancelled
        if cancelled is None:
            await self._checkpoint_if_cancelled()
        elif cancelled():
            await checkpoint()
        if idempotency_key is not None or (metadata is not None and _claims_key(metadata)):
            return await self._publish_once(name, payload, metadata, key, idempotency_key)
        if self._middleware.publish:
            return await self._publish_with_middleware(name, payload, metadata, key)
        parent = delivery_var.get()
        try:
            return self._accept(name, payload, metadata, parent, key)
        except _Deferred as deferred:
            return await self._accept_deferred(name, deferred, parent)

    async def _accept_deferred(self, name: str, deferred: _Deferred, parent: Item | None) -> Event:
        """The waits of ``publish``: for room in the buffer, then for the journal."""
        if not deferred.reserved:
            in_delivery = parent is not None and parent[3].runtime is self
            await self._wait_for_room(len(deferred.routes), in_delivery)
            if self._state is _STOPPED:
                raise RuntimeClosedError(name) from None
        if self.store is not None:
            await self._append(deferred.event, deferred.routes)
            if not deferred.routes:
                self._unrouted += 1
            if self._state is _STOPPED:
                # Shutdown closed the queue during the (shielded) write: the event
                # is journaled, counted as left pending, and the next start delivers it.
                self._published += 1
                return deferred.event
        self._published += 1
        self._enqueue(deferred.event, deferred.routes, deferred.epoch)
        return deferred.event

    def _not_accepting(self, name: str) -> AeventsError:
        if self._state == _NEW:
            return RuntimeNotRunningError(
                name,
                "enter this runtime first: `async with runtime:` around the code that publishes",
            )
        return RuntimeClosedError(name)

    def _wrong_thread(self, name: str, call: str) -> AeventsError:
        """The error of a ``publish`` or ``publish_nowait`` made off the loop's thread."""
        if self._state not in (_RUNNING, _DRAINING):
            return self._not_accepting(name)
        return WrongThreadError(name, call)

    def _accept(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        parent: Item | None,
        key: str | None = None,
    ) -> Event:
        """The whole of publishing but the waits: validate, build the event, admit, queue.

        Raises on bad input having queued nothing, and ``_Deferred`` (carrying
        the built event) when it has to wait for room or for the journal.
        """
        if self._state is not _RUNNING and not (
            self._state is _DRAINING and parent is not None and parent[3].runtime is self
        ):
            raise self._not_accepting(name)
        routes = self._routes.get(name)
        if routes is None:
            routes = self._route(name)
        if payload is None:
            body: Any = {}
        elif type(payload) is dict:
            # encode_payload inlined for its common case; payload_json has the slow checks.
            try:
                data = _dumps(payload)
            except (TypeError, orjson.JSONEncodeError):
                data = payload_json(name, payload, self.max_payload_bytes)  # raises with the path
            if len(data) > self.max_payload_bytes or data.find(b"null") != -1:
                data = payload_json(name, payload, self.max_payload_bytes)
            body = _loads(data)
        else:
            body = encode_payload(name, payload, self.max_payload_bytes)
        if key is not None and (type(key) is not str or not 0 < len(key) <= MAX_KEY_CHARS):
            raise bad_key(name, key)
        if parent is None:
            meta = NO_METADATA if metadata is None else encode_metadata(name, metadata)
            event = make_event(name, body, meta, key)
            epoch = self._epoch
        else:
            event = make_event(name, body, self._child_metadata(name, metadata, parent), key)
            epoch = parent[3] if parent[3].runtime is self else self._epoch
        count = len(routes)
        if not count:
            if self.store is not None and metadata is not None and IDEMPOTENCY_KEY in metadata:
                # No receiver, but its idempotency key must still reach the journal.
                raise _Deferred(event, routes, epoch, reserved=True)
            self._published += 1
            self._unrouted += 1
            return event
        if self._space_waiters or (self._queued + count > self.buffer and self._queued):
            raise _Deferred(event, routes, epoch, reserved=False)
        self._queued += count
        if self.store is not None:
            raise _Deferred(event, routes, epoch, reserved=True)
        self._published += 1
        self._enqueue(event, routes, epoch)
        return event

    def _enqueue(self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch) -> None:
        """Queue first attempts for deliveries whose room is already reserved.

        Every publish path queues through here (``aevents.testing.EagerRuntime``
        overrides it to deliver inline): never inline a copy of it.
        """
        epoch.unfinished += len(routes)
        if event.key is not None:
            for subscription in routes:
                self._admit_keyed((event, subscription, 1, epoch))
            return
        send = self._send.send_nowait
        for subscription in routes:
            send((event, subscription, 1, epoch))

    def _route(self, name: str) -> tuple[Subscription, ...]:
        validate_name(name)
        if self.strict and not _catalog.is_declared(name):
            raise UnknownEventError(name)
        version = self.registry.version
        routes = self.registry.route(name)
        if len(self._routes) >= 10_000:
            self._routes.clear()
        if version == self.registry.version:  # not if another thread subscribed meanwhile
            self._routes[name] = routes
        return routes

    def _child_metadata(
        self, name: str, metadata: Mapping[str, str] | None, parent: Item
    ) -> dict[str, str]:
        parent_event = parent[0]
        depth = int(parent_event.metadata.get("causation_depth", "0")) + 1
        if depth > self.max_causation_depth:
            self._storms.add((parent_event.id, parent[1].receiver_id))
            raise CausationDepthError(name, depth, self.max_causation_depth)
        child = {} if metadata is None else encode_metadata(name, metadata)
        child["causation_id"] = parent_event.id
        child["correlation_id"] = parent_event.metadata.get("correlation_id", parent_event.id)
        child["causation_depth"] = str(depth)
        return child

    # ------------------------------------------------------------------ room in the buffer

    async def _reserve(self, count: int) -> None:
        """Take room for ``count`` deliveries, waiting for it if need be."""
        if self._space_waiters or (self._queued + count > self.buffer and self._queued):
            await self._wait_for_room(count, in_delivery=False)
        else:
            self._queued += count

    async def _wait_for_room(self, count: int, in_delivery: bool) -> None:
        if in_delivery and self._blocked_in_delivery + 1 >= self.workers:
            # Every other worker is itself blocked publishing: waiting here would
            # deadlock the runtime, so this receiver's events overshoot the bound.
            self._queued += count
            return
        waiter: list[Any] = [count, anyio.Event(), False]
        self._space_waiters.append(waiter)
        if in_delivery:
            self._blocked_in_delivery += 1
        try:
            await waiter[1].wait()
        except BaseException:
            if waiter[2]:
                self._release(count)  # room was granted just as we were cancelled: pass it on
            else:
                self._space_waiters.remove(waiter)
            raise
        finally:
            if in_delivery:
                self._blocked_in_delivery -= 1

    def _release(self, count: int) -> None:
        self._queued -= count
        waiters = self._space_waiters
        while waiters:
            waiter = waiters[0]
            needed = waiter[0]
            if self._queued + needed > self.buffer and self._queued:
                return
            waiters.popleft()
            self._queued += needed
            waiter[2] = True
            waiter[1].set()

    # ------------------------------------------------------------------ workers

    async def _work(self) -> None:
        receive_nowait = self._receive.receive_nowait
        receive = self._receive.receive
        fast_ok = self.timeout is None and self.store is None
        durable = self.store is not None
        middleware = self._middleware  # its tuples are replaced by add_middleware
        clock = perf_counter
        new_info = tuple.__new__  # a DeliveryInfo without NamedTuple's __new__
        set_delivery = delivery_var.set
        since_yield = 0
        while True:
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await checkpoint()
            try:
                item = receive_nowait()
                since_yield += 1
            except anyio.WouldBlock:
                try:
                    item = await receive()
                except anyio.EndOfStream:
                    return
                since_yield = 0
            except anyio.EndOfStream:
                return
            self._queued -= 1
            if durable:
                batch = [item]
                while len(batch) < _DURABLE_BATCH:
                    try:
                        batch.append(receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    self._queued -= 1
                if self._space_waiters:
                    self._release(0)
                await self._deliver_durably(batch)
                continue
            if self._space_waiters:
                self._release(0)
            event, subscription, _, epoch = item
            # Set, never reset: the worker runs nothing else in its context, and a task
            # or thread a receiver starts keeps the context it was started with, so a
            # reset would be pure cost on every delivery.
            set_delivery(item)
            started = clock()
            try:
                hooks = middleware.delivery
                if fast_ok and subscription.fast and not hooks:
                    await subscription.receiver(event)
                elif fast_ok and subscription.fast and (count := middleware.count) is not None:
                    # A plain Metrics alone: its count() without a DeliveryInfo or a
                    # before_delivery call, the cheapest way to count an attempt.
                    try:
                        await subscription.receiver(event)
                    except BaseException as error:
                        count(
                            subscription.pattern,
                            subscription.receiver_id,
                            item[2],
                            event,
                            started,
                            error,
                        )
                        raise
                    count(
                        subscription.pattern,
                        subscription.receiver_id,
                        item[2],
                        event,
                        started,
                        None,
                    )
                elif fast_ok and subscription.fast and len(hooks) == 1:
                    # One middleware (metrics, or tracing) around a plain async receiver,
                    # inlined: call_with_middleware's coroutine costs 4% of throughput.
                    hook = hooks[0]
                    attempt = item[2]
                    delivery = new_info(
                        DeliveryInfo,
                        (
                            event,
                            subscription.receiver_id,
                            attempt,
                            subscription.pattern,
                            type(attempt) is ReplayedAttempt,
                        ),
                    )
                    state = hook.before_delivery(delivery)
                    try:
                        await subscription.receiver(event)
                    except BaseException as error:
                        try:
                            hook.after_delivery(delivery, state, error)
                        except Exception:
                            log_after_delivery_error(hook, "after_delivery", delivery)
                        raise
                    try:
                        hook.after_delivery(delivery, state, None)
                    except Exception:
                        log_after_delivery_error(hook, "after_delivery", delivery)
                else:
                    time_limit = (
                        subscription.timeout if subscription.timeout is not None else self.timeout
                    )
                    if hooks:
                        await call_with_middleware(hooks, item, time_limit, self._threads)
                    else:
                        await call_receiver(subscription, event, time_limit, self._threads)
            except BaseException as error:
                if not fails_delivery(error):
                    raise  # the runtime is cancelled, or KeyboardInterrupt, SystemExit
                letter = self._on_failure(item, error, clock() - started)
                if letter is not None:
                    self._keep_dead_letter(letter)
                    self._finish(epoch)
                    if event.key is not None:
                        self._lane_done(event, subscription, dead=True)
            else:
                self._delivered += 1
                if event.key is not None:
                    self._lane_done(event, subscription, dead=False)
                # _finish(epoch), inlined: the call costs 3-4% on fan-out to 10 receivers.
                epoch.unfinished -= 1
                if not epoch.unfinished and epoch.done is not None:
                    epoch.done.set()

    def _finish(self, epoch: Epoch) -> None:
        epoch.unfinished -= 1
        if not epoch.unfinished and epoch.done is not None:
            epoch.done.set()

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
        parent = delivery_var.get()
        if parent is not None and parent[3].runtime is self:
            raise AeventsError(
                "drain() cannot be awaited inside a receiver: it would wait for itself"
            )
        await checkpoint()
        if self._state in (_NEW, _STOPPED):
            return
        closed = self._epoch
        self._epoch = Epoch(self)
        self._closed_epochs = [epoch for epoch in self._closed_epochs if epoch.unfinished]
        self._closed_epochs.append(closed)
        for epoch in list(self._closed_epochs):
            if epoch.unfinished and self._state is not _STOPPED:
                if epoch.done is None:
                    epoch.done = anyio.Event()
                await epoch.done.wait()

    def __repr__(self) -> str:
        return f"<EventRuntime {self._state} workers={self.workers} buffer={self.buffer}>"
