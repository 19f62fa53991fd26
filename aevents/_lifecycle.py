"""The runtime's life around the hot path: shutdown, what it left unrun, stats, middleware.

Mixed into ``EventRuntime``; the attributes annotated below are its own.
Starting, the workers and ``drain`` stay in ``_runtime`` with the hot path;
here are the pieces ``EventRuntime._lifecycle`` calls on the way in and
out (the idempotency keys a store remembers, the shutdown, the report of
deliveries the stop left unrun), the counters of ``stats()``, and the
middleware list.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._delivery import Item, SyncThreads, delivery_info
from ._exceptions import StoreError
from ._middleware import Middleware, MiddlewareStack, notify
from ._state import _DRAINING, _NEW, _RUNNING, _STOPPED, Epoch, RuntimeStats
from ._text import counted

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._idempotency import IdempotencyWindow
    from ._metrics import Metrics
    from ._ordering import Lane
    from ._store._protocol import Store

__all__ = ["Lifecycle"]

logger = logging.getLogger("aevents.runtime")


class Lifecycle:
    """Shutdown, stats and the middleware list, for ``EventRuntime``."""

    store: Store | None
    shutdown_timeout: float
    metrics: Metrics | None
    _state: str
    _send: MemoryObjectSendStream[Item]
    _receive: MemoryObjectReceiveStream[Item]
    _epoch: Epoch
    _closed_epochs: list[Epoch]
    _queued: int
    _space_waiters: deque[list[Any]]
    _retries: list[tuple[float, int, Item]]
    _lanes: dict[Lane, deque[Item] | None]
    _behind_replay: list[Item] | None
    _held_deliveries: int
    _replaying: set[str] | None
    _unjournaled: int
    _idempotency: IdempotencyWindow
    _published: int
    _unrouted: int
    _delivered: int
    _failed: int
    _retried: int
    _dead: int
    _dropped: int
    _repeated: int
    _middleware: MiddlewareStack
    _threads: SyncThreads

    if TYPE_CHECKING:  # provided by EventRuntime; declared for the type checker only

        async def drain(self) -> None: ...

    async def _remember_idempotency_keys(self, store: Store) -> None:
        """Seed the idempotency window from the journal; forget keys past the window."""
        since = datetime.now(UTC) - timedelta(seconds=self._idempotency.window)
        try:
            self._idempotency.seed(
                await store.recent_idempotency_keys(since, self._idempotency.max_keys)
            )
            await store.forget_idempotency_keys(since)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.close()
            raise

    async def _forget_idempotency_keys(self, store: Store) -> None:
        """Drop journaled idempotency keys older than the window, every so often."""
        while True:
            await anyio.sleep(min(self._idempotency.window, 600.0))
            before = datetime.now(UTC) - timedelta(seconds=self._idempotency.window)
            try:
                await store.forget_idempotency_keys(before)
            except StoreError as error:
                logger.warning("could not forget old idempotency keys: %s", error)

    def _report_dropped(self) -> None:
        """Count and log, once, the deliveries the stop left unrun (the task group is gone)."""
        in_flight = self._in_flight()
        left = self._queued + in_flight + len(self._retries)
        if not left:
            return
        self._dropped += left
        if self._middleware.outcomes:
            self._notify_dropped()
        fate = (
            "they stay pending in the journal for the next start"
            if self.store is not None
            else "without a store they are lost"
        )
        if self._unjournaled:
            fate += (
                f", except {self._unjournaled} of events accepted by publish_nowait "
                "whose journal write never began: those are lost"
            )
        logger.warning(
            "event runtime stopped with %s not run "
            "(%d queued, %d in flight, %d waiting to retry); %s",
            counted(left, "delivery"),
            self._queued,
            in_flight,
            len(self._retries),
            fate,
            extra={"dropped": left, "unjournaled": self._unjournaled},
        )

    def _report_abandoned(self) -> None:
        """Log the sync receivers still running on their threads as the runtime stops."""
        running = self._threads.running()
        if running:
            logger.warning(
                "event runtime stopped with %s still running, "
                "abandoned on daemon threads (they cannot be interrupted and do not "
                "keep the process from exiting): %s",
                counted(len(running), "sync receiver call"),
                ", ".join(repr(receiver_id) for receiver_id in running),
                extra={"abandoned": running},
            )

    def _notify_dropped(self) -> None:
        """Tell the middleware about each delivery the stop left unrun (not those in flight,
        whose cancelled attempts went to ``after_delivery``)."""
        unrun: list[Item] = []
        while True:
            try:
                unrun.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        for lane in self._lanes.values():
            unrun.extend(lane or ())
        unrun.extend(self._behind_replay or ())
        unrun.extend(item for _, _, item in self._retries)
        for item in unrun:
            notify(self._middleware.outcomes, "on_dropped", delivery_info(item))

    async def _shutdown(self, tasks: anyio.abc.TaskGroup, *, cancelled: bool) -> None:
        """Stop accepting, drain within the shutdown timeout, cancel what is left."""
        self._state = _DRAINING
        try:
            if not cancelled:
                with anyio.move_on_after(self.shutdown_timeout):
                    await self.drain()
        finally:
            self._state = _STOPPED
            for waiter in self._space_waiters:  # publishers still waiting for room
                waiter[1].set()
            for epoch in (*self._closed_epochs, self._epoch):  # drain() callers: nothing more
                if epoch.done is not None:
                    epoch.done.set()
            self._send.close()
            tasks.cancel_scope.cancel()

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
        return self._state in (_RUNNING, _DRAINING)

    def _in_flight(self) -> int:
        # Every unfinished delivery is queued, waiting to retry, or running;
        # deriving the last keeps two counter updates off each delivery.
        unfinished = self._epoch.unfinished + sum(epoch.unfinished for epoch in self._closed_epochs)
        replay = 1 if self._replaying is not None and self._state != _NEW else 0
        held = self._held_deliveries  # counted as queued, set aside from their epochs
        return max(0, unfinished + held - replay - self._queued - len(self._retries))

    def stats(self) -> RuntimeStats:
        """A snapshot of the runtime's counters."""
        return RuntimeStats(
            published=self._published,
            unrouted=self._unrouted,
            delivered=self._delivered,
            failed=self._failed,
            retried=self._retried,
            dead=self._dead,
            dropped=self._dropped,
            queued=self._queued,
            in_flight=self._in_flight(),
            retrying=len(self._retries),
            active_keys=len(self._lanes),
            held=self._held_deliveries,
            repeated=self._repeated,
            metrics=None if self.metrics is None else self.metrics.snapshot(),
        )
