"""One delivery, what a receiver can know about it, and calling its receiver.

``Delivery`` is the record that travels through the buffer, the key lanes,
the retry schedule and the journal. ``call_receiver`` runs one attempt with
whatever twist it needs: a timeout, a sync receiver on a worker thread, a cheap
sync receiver run inline, a sync callable that returns an awaitable.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from contextvars import ContextVar, copy_context
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._event import Event

if TYPE_CHECKING:
    from ._registry import Subscription
    from ._state import Epoch

__all__ = [
    "Delivery",
    "DeliveryInfo",
    "ReceiverTimeout",
    "SyncThreads",
    "call_receiver",
    "current_delivery",
    "delivery_var",
    "fails_delivery",
]

logger = logging.getLogger("aevents.runtime")


class Delivery(NamedTuple):
    """One (event, receiver) delivery on its way: queued, running, waiting to retry.

    A named tuple because one is made per delivery on the hot path; build it
    with ``tuple.__new__(Delivery, (...))`` there, which skips the argument
    handling of ``Delivery(...)``.
    """

    event: Event
    subscription: Subscription
    attempt: int
    """1 on the first try, 2 on the first retry, and so on."""
    epoch: Epoch
    """The drain epoch it counts in."""
    replay: bool
    """The journal replayed it after a restart (see ``DeliveryInfo.replay``)."""

    def next_attempt(self) -> Delivery:
        """The same delivery, one attempt later."""
        return _new(
            Delivery, (self.event, self.subscription, self.attempt + 1, self.epoch, self.replay)
        )

    def info(self) -> DeliveryInfo:
        """What a receiver or a middleware may know about it."""
        return _new(
            DeliveryInfo,
            (
                self.event,
                self.subscription.receiver_id,
                self.attempt,
                self.subscription.pattern,
                self.replay,
            ),
        )


delivery_var: ContextVar[Delivery | None] = ContextVar("aevents_delivery", default=None)
"""The delivery the current task (or worker thread) is running, if any."""

_new = tuple.__new__  # a NamedTuple without its __new__'s argument handling


class DeliveryInfo(NamedTuple):
    """What a receiver, or a middleware, may ask about the delivery it is running.

    A named tuple rather than an attrs class: middleware builds one per
    attempt, and a tuple costs a third as much.
    """

    event: Event
    receiver_id: str
    attempt: int
    """1 on the first try, 2 on the first retry, and so on."""
    pattern: str
    """The pattern the receiver subscribed with, which matched the event's name."""
    replay: bool
    """True when the journal replayed this delivery after a restart: an earlier run
    accepted it and may have run it (``attempt`` counts the attempts it recorded)."""


def current_delivery() -> DeliveryInfo | None:
    """The delivery being run by the calling receiver, or ``None`` outside a receiver.

    Works in async receivers and in sync receivers on worker threads.
    """
    delivery = delivery_var.get()
    if delivery is None:
        return None
    return delivery.info()


def fails_delivery(error: BaseException) -> bool:
    """Whether ``error``, raised by a receiver's attempt, is that delivery's failure.

    Every ``Exception`` is. So is a cancellation (``asyncio.CancelledError``,
    trio's ``Cancelled``) or a ``GeneratorExit`` that the receiver raised
    itself, from a scope or task of its own, while the runtime's scopes are not
    cancelled: it must not escape the worker and stop the runtime. A real
    cancellation of the runtime, ``KeyboardInterrupt`` and ``SystemExit``
    are not: the caller re-raises them. Call it in the ``except`` block.
    """
    if isinstance(error, Exception):
        return True
    if not isinstance(
        error, GeneratorExit | asyncio.CancelledError | anyio.get_cancelled_exc_class()
    ):
        return False
    if anyio.current_effective_deadline() <= anyio.current_time():
        return False  # the runtime (or what encloses it) is cancelled: let it through
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return True
    if task is not None:
        # A receiver that cancelled its own task (``current_task().cancel()``) left
        # the request counted: withdraw it, or every later await in this worker fails.
        while task.cancelling():
            task.uncancel()
    return True


class ReceiverTimeout(TimeoutError):
    """An attempt ran past its receiver's ``timeout``; its dead letter says which limit."""

    def __init__(self, limit: float) -> None:
        self.limit = float(limit)
        super().__init__(f"receiver exceeded timeout={self.limit} s")

    def describe(self, attempt: int, attempts: int) -> str:
        return f"receiver exceeded timeout={self.limit} s (attempt {attempt} of {attempts})"


async def _within(awaitable: Any, time_limit: float) -> Any:
    """Await ``awaitable`` for at most ``time_limit`` seconds, else raise ``ReceiverTimeout``."""
    with anyio.move_on_after(time_limit) as scope:
        return await awaitable
    if scope.cancelled_caught:
        raise ReceiverTimeout(time_limit)
    return None  # pragma: no cover - move_on_after leaves its block only by returning or this


class _Job:
    """One call of a sync receiver on a daemon thread, and its outcome."""

    __slots__ = ("done", "error", "function", "receiver_id", "result", "token")

    def __init__(self, function: Callable[[], Any], receiver_id: str) -> None:
        self.function = function
        self.receiver_id = receiver_id
        self.done = anyio.Event()
        self.token = anyio.lowlevel.current_token()
        self.result: Any = None
        self.error: BaseException | None = None


class SyncThreads:
    """Daemon threads of the runtime's own for sync receivers, at most ``limit`` busy.

    Daemon threads, so that a receiver that never returns cannot keep the
    interpreter from exiting once the runtime has stopped (anyio's worker
    threads are joined at exit on asyncio). An idle thread waits for its next
    call for ``IDLE_SECONDS``, then ends. The outcome comes back to the loop
    through ``anyio.from_thread.run_sync`` with the loop's token.
    """

    IDLE_SECONDS = 10.0

    def __init__(self, limit: int) -> None:
        self.limiter = anyio.CapacityLimiter(limit)
        self._lock = threading.Lock()
        self._idle: deque[SimpleQueue[_Job]] = deque()
        self._busy: dict[_Job, None] = {}  # insertion-ordered set of running calls

    def running(self) -> list[str]:
        """The receiver ids of the calls still running (abandoned ones too)."""
        with self._lock:
            return [job.receiver_id for job in self._busy]

    async def run(self, function: Callable[[], Any], receiver_id: str) -> Any:
        """Call ``function`` on a daemon thread and return (or raise) what it did.

        Cancelling the wait abandons the call: the thread goes on until the
        function returns, then takes the next call.
        """
        async with self.limiter:
            job = _Job(function, receiver_id)
            with self._lock:
                self._busy[job] = None
                inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                inbox = SimpleQueue()
                thread = threading.Thread(
                    target=self._serve, args=(inbox,), name="aevents sync receiver", daemon=True
                )
                thread.start()
            inbox.put(job)
            await job.done.wait()
        error, job.error = job.error, None
        if error is not None:
            try:
                raise error
            finally:
                del error  # no reference cycle through the traceback
        return job.result

    def _serve(self, inbox: SimpleQueue[_Job]) -> None:
        while True:
            try:
                job = inbox.get(timeout=self.IDLE_SECONDS)
            except Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                continue  # a call was handed to this thread just now
            try:
                job.result = job.function()
            except BaseException as error:  # handed to the loop, which raises it
                job.error = error
            with self._lock:
                del self._busy[job]
                self._idle.append(inbox)
            with suppress(Exception):  # the loop is gone: nobody waits any more
                anyio.from_thread.run_sync(job.done.set, token=job.token)
            del job


async def call_receiver(
    subscription: Subscription,
    event: Event,
    time_limit: float | None,
    threads: SyncThreads,
) -> None:
    """Run one attempt of one delivery; raise whatever the receiver raised.

    Running past ``time_limit`` seconds raises ``ReceiverTimeout``. A sync
    receiver on a thread cannot be interrupted: when its attempt times out (or
    the runtime is cancelled) the attempt is abandoned and the thread is left
    to finish on its own; it is a daemon thread, so it never keeps the
    interpreter from exiting.
    """
    receiver = subscription.receiver
    if subscription.is_async:
        if time_limit is None:
            await receiver(event)
        else:
            await _within(receiver(event), time_limit)
        return
    result: Any
    if subscription.inline:
        result = receiver(event)
    else:
        call = copy_context().run  # the thread sees current_delivery() and the caller's context
        calling = threads.run(lambda: call(receiver, event), subscription.receiver_id)
        if time_limit is None:
            result = await calling
        else:
            result = await _within(calling, time_limit)
    if inspect.isawaitable(result):
        # A sync callable that returns an awaitable (a lambda around an async
        # function, a wrapper that hides ``async def``): finish it on the loop.
        if time_limit is None:
            await result
        else:
            await _within(result, time_limit)
