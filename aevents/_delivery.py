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
from collections.abc import Callable, Coroutine
from contextlib import suppress
from contextvars import ContextVar, copy_context
from math import inf
from queue import Empty, SimpleQueue
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

import anyio

from ._event import Event
from ._lowlevel import Waitable, loop_caller

if TYPE_CHECKING:
    from ._registry import Subscription
    from ._state import Epoch

__all__ = [
    "Delivery",
    "DeliveryInfo",
    "Queued",
    "ReceiverTimeout",
    "Settle",
    "SyncThreads",
    "call_receiver",
    "current_delivery",
    "delivery_var",
    "fails_delivery",
    "named",
    "running_delivery",
    "within",
]

logger = logging.getLogger("aevents.runtime")


class Delivery(NamedTuple):
    """One (event, receiver) delivery on its way: queued, running, waiting to retry.

    A named tuple, so that a plain tuple of the same fields can stand for it where
    it is queued (see ``Queued``). Build one with ``tuple.__new__(Delivery, (...))``,
    which skips the argument handling of ``Delivery(...)``.
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


Queued: TypeAlias = tuple[Event, "Subscription", int, "Epoch", bool]
"""A delivery as the buffer and the workers' fast path hold it: ``Delivery``'s fields in
``Delivery``'s order, as a plain tuple or as a ``Delivery`` (which is one).

A first attempt is queued as a plain tuple: making a ``Delivery`` costs 100 ns more
(``tuple.__new__`` of a subclass, then its dealloc and its garbage-collector
traversals), which measured 7% of an unkeyed publish and 16% of a fan-out delivery
in CPU instructions. The worker unpacks it by position once; anything that wants
the fields by name (a failure, a hook, a hop, a store) asks ``named`` for them."""

delivery_var: ContextVar[Queued | None] = ContextVar("aevents_delivery", default=None)
"""The delivery the current task (or worker thread) is running, if any; read it with
``running_delivery`` (or ``current_delivery``), which name its fields."""

_new = tuple.__new__  # a NamedTuple without its __new__'s argument handling


def named(delivery: Queued) -> Delivery:
    """``delivery`` with its fields named: itself if it is a ``Delivery``."""
    if isinstance(delivery, Delivery):
        return delivery
    return _new(Delivery, delivery)


def running_delivery() -> Delivery | None:
    """The delivery the calling task (or worker thread) runs, if any, fields named."""
    delivery = delivery_var.get()
    return None if delivery is None else named(delivery)


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
    return named(delivery).info()


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


async def within(awaitable: Any, time_limit: float) -> Any:
    """Await ``awaitable`` for at most ``time_limit`` seconds, else raise ``ReceiverTimeout``."""
    with anyio.move_on_after(time_limit) as scope:
        return await awaitable
    if scope.cancelled_caught:
        raise ReceiverTimeout(time_limit)
    return None  # pragma: no cover - move_on_after leaves its block only by returning or this


class _Job:
    """One call of a sync receiver on a daemon thread, and its outcome."""

    __slots__ = ("done", "error", "function", "receiver_id", "result")

    def __init__(self, function: Callable[[], Any], receiver_id: str, done: Waitable) -> None:
        self.function = function
        self.receiver_id = receiver_id
        self.done = done
        self.result: Any = None
        self.error: BaseException | None = None


# The states of one call in a _Hop.
_WAITING, _RUNNING, _DONE, _GIVEN_UP, _GIVEN_UP_ENDED, _RETURNED = range(6)

HELP_AFTER: Final = 0.0005
"""Seconds a call in a hop may run before it counts as slow: then another thread comes
to take the hop's calls not started, and each call that ends is settled at once."""


class _Hop:
    """Several deliveries to sync receivers, run by threads one after another, and told
    to the loop together: one thread hop each way for all of them.

    ``next`` is the first call no thread has started; a thread takes calls from it under
    the ``SyncThreads`` lock. Each call runs in its own copy of ``context`` with
    ``current_delivery()`` set to its delivery. ``left`` counts the calls not ended:
    not yet returned on their thread, given up by the loop (timed out), or handed back.
    The thread that ends a call sets ``waiter``, if the loop waits, when it ended the
    last call, or at each call once the hop is ``eager`` (it has a slow call).
    """

    __slots__ = (
        "context",
        "deliveries",
        "eager",
        "ended",
        "errors",
        "left",
        "next",
        "results",
        "serving",
        "started",
        "states",
        "told",
        "waiter",
    )

    def __init__(self, deliveries: list[Delivery]) -> None:
        count = len(deliveries)
        self.deliveries = deliveries
        self.context = copy_context()
        self.results: list[Any] = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        self.started = [0.0] * count
        self.ended = [0.0] * count
        self.states = [_WAITING] * count
        self.told = [False] * count  # its outcome went to the loop's settle
        self.next = 0
        self.left = count
        self.serving = 0  # threads working on it
        self.eager = False
        self.waiter: Waitable | None = None

    def receiver_ids(self) -> list[str]:
        """The receivers of the calls running on a thread now, given up ones included."""
        return [
            self.deliveries[index].subscription.receiver_id
            for index, state in enumerate(self.states)
            if state in (_RUNNING, _GIVEN_UP)
        ]

    def newly_ended(self) -> list[int]:
        """The calls that ended, or timed out, since the last look; marked told."""
        states, errors, told = self.states, self.errors, self.told
        ended = [
            index
            for index in range(self.next)
            if not told[index]
            and (
                states[index] == _DONE
                or (states[index] in (_GIVEN_UP, _GIVEN_UP_ENDED) and errors[index] is not None)
            )
        ]
        for index in ended:
            told[index] = True
        return ended

    def settle(self, index: int, settle: Settle) -> Coroutine[Any, Any, None] | None:
        """Hand what call ``index`` did to ``settle``, and drop it from the hop."""
        result, error = self.results[index], self.errors[index]
        self.results[index] = self.errors[index] = None  # no cycle through a traceback
        return settle(
            self.deliveries[index], result, error, self.ended[index] - self.started[index]
        )


def _call_in_hop(delivery: Delivery) -> Any:
    delivery_var.set(delivery)
    return delivery.subscription.receiver(delivery.event)


def _tell(soon: Callable[[Callable[[], object]], object], waiter: Waitable) -> None:
    """Have the loop set ``waiter``, without waiting for it to (see loop_caller)."""
    with suppress(Exception):  # the loop is gone: nobody waits any more
        soon(waiter.set)


Settle = Callable[
    [Delivery, Any, "BaseException | None", float], "Coroutine[Any, Any, None] | None"
]
"""What ``run_hop`` calls with each delivery's outcome as it is known (what its call
returned, what it raised, the seconds it ran): it settles it, or returns a coroutine
that finishes it on the loop."""


class SyncThreads:
    """Daemon threads of the runtime's own for sync receivers, at most ``limit`` busy.

    Daemon threads, so that a receiver that never returns cannot keep the
    interpreter from exiting once the runtime has stopped (anyio's worker
    threads are joined at exit on asyncio). An idle thread waits for its next
    call for ``IDLE_SECONDS``, then ends. The outcome comes back to the loop
    through ``loop_caller``: the thread tells the loop and goes on,
    without waiting for the loop to hear. Make it on the loop that it serves.

    ``run_hop`` runs several deliveries in one hop each way; ``run`` one call.
    """

    IDLE_SECONDS = 10.0

    def __init__(self, limit: int) -> None:
        self.limiter = anyio.CapacityLimiter(limit)
        self._lock = threading.Lock()
        self._idle: deque[SimpleQueue[_Job | _Hop]] = deque()
        self._busy: dict[_Job | _Hop, None] = {}  # insertion-ordered set of running work
        self._soon, self._new_event = loop_caller()

    def running(self) -> list[str]:
        """The receiver ids of the calls still running (abandoned ones too)."""
        with self._lock:
            return [
                receiver_id
                for work in self._busy
                for receiver_id in (
                    [work.receiver_id] if isinstance(work, _Job) else work.receiver_ids()
                )
            ]

    def _hand_over(self, work: _Job | _Hop) -> None:
        """Give ``work`` to an idle thread, or to a new one. Call with the lock held."""
        inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = SimpleQueue()
            thread = threading.Thread(
                target=self._serve, args=(inbox,), name="aevents sync receiver", daemon=True
            )
            thread.start()
        inbox.put(work)

    async def run(self, function: Callable[[], Any], receiver_id: str) -> Any:
        """Call ``function`` on a daemon thread and return (or raise) what it did.

        Cancelling the wait abandons the call: the thread goes on until the
        function returns, then takes the next call.
        """
        async with self.limiter:
            job = _Job(function, receiver_id, self._new_event())
            with self._lock:
                self._busy[job] = None
                self._hand_over(job)
            await job.done.wait()
        error, job.error = job.error, None
        if error is not None:
            try:
                raise error
            finally:
                del error  # no reference cycle through the traceback
        return job.result

    async def run_hop(
        self,
        deliveries: list[Delivery],
        limits: list[float | None],
        give_back: Callable[[list[Delivery]], None],
        settle: Settle,
    ) -> None:
        """Run the sync receivers of ``deliveries`` on threads, and ``settle`` each outcome.

        One thread takes the calls in order, and when they end quickly their
        outcomes come back in one hop. When a call runs past ``HELP_AFTER``,
        each call that ends is settled at once, and, once every thread of the
        hop is held by such a call, another thread (within the limit) comes to
        take the calls not started. With no thread to spare, those are handed
        to ``give_back``, to be queued again for other workers. So a slow
        receiver holds back only itself. A call past its limit in ``limits``
        is settled as ``ReceiverTimeout`` and left to finish on its thread, as
        ``run`` abandons a call.

        Cancelled, the calls not started go to ``give_back`` and are not run;
        those that ended are settled (a coroutine returned for one is closed
        unawaited), and those still running are abandoned.
        """
        hop = _Hop(deliveries)
        results, errors, started_at, ended_at = hop.results, hop.errors, hop.started, hop.ended
        lock = self._lock
        helpers: list[object] = []
        limiter = self.limiter
        async with limiter:
            with lock:
                self._busy[hop] = None
                hop.serving = 1
                self._hand_over(hop)
            try:
                while True:
                    handed_back: list[Delivery] = []
                    with lock:
                        wait = self._check_hop(hop, limits, limiter, helpers, handed_back)
                        ended = hop.newly_ended()
                        finished = not hop.left
                        waiter = None
                        if not (finished or ended or handed_back):
                            waiter = hop.waiter = self._new_event()
                    if handed_back:
                        give_back(handed_back)
                    for index in ended:  # hop.settle, inlined: once per delivery
                        result, error = results[index], errors[index]
                        results[index] = errors[index] = None  # no cycle through a traceback
                        finishing = settle(
                            deliveries[index], result, error, ended_at[index] - started_at[index]
                        )
                        result = error = None
                        if finishing is not None:
                            await finishing
                    if finished:
                        break
                    if waiter is None:
                        continue
                    if wait == inf:
                        await waiter.wait()
                    else:
                        with anyio.move_on_after(wait):
                            await waiter.wait()
            except BaseException:
                with lock:
                    states = hop.states
                    unstarted = deliveries[hop.next :]
                    for index in range(hop.next, len(states)):
                        states[index] = _RETURNED
                    hop.next = len(states)
                    for index, state in enumerate(states):
                        if state == _RUNNING:
                            states[index] = _GIVEN_UP
                    hop.waiter = None
                    ended = hop.newly_ended()
                if unstarted:
                    give_back(unstarted)
                for index in ended:
                    finishing = hop.settle(index, settle)
                    if finishing is not None:
                        finishing.close()
                raise
            finally:
                for borrower in helpers:
                    limiter.release_on_behalf_of(borrower)

    def _check_hop(
        self,
        hop: _Hop,
        limits: list[float | None],
        limiter: anyio.CapacityLimiter,
        helpers: list[object],
        handed_back: list[Delivery],
    ) -> float:
        """Give up the hop's calls past their limit, bring a thread or hand the calls not
        started back when every thread is held, and return how long to wait before the
        next look. Called with the lock held."""
        states, started = hop.states, hop.started
        now = perf_counter()
        wait = inf
        held = 0  # threads in a call that runs long, or that was given up
        for index in range(hop.next):
            state = states[index]
            if state == _GIVEN_UP:
                held += 1
                continue
            if state != _RUNNING:
                continue
            ran = now - started[index]
            limit = limits[index]
            if limit is not None:
                if ran >= limit:
                    states[index] = _GIVEN_UP
                    hop.errors[index] = ReceiverTimeout(limit)
                    hop.ended[index] = now
                    hop.left -= 1
                    held += 1
                    continue
                wait = min(wait, limit - ran)
            if ran >= HELP_AFTER:
                held += 1
            else:
                wait = min(wait, HELP_AFTER - ran)
        if held:
            hop.eager = True
        count = len(states)
        if hop.next < count:
            if held < hop.serving:
                wait = min(wait, HELP_AFTER)
            else:
                borrower = object()
                try:
                    limiter.acquire_on_behalf_of_nowait(borrower)
                except anyio.WouldBlock:
                    handed_back.extend(hop.deliveries[hop.next :])
                    for index in range(hop.next, count):
                        states[index] = _RETURNED
                    hop.left -= count - hop.next
                    hop.next = count
                else:
                    helpers.append(borrower)
                    hop.serving += 1
                    self._hand_over(hop)
                    wait = min(wait, HELP_AFTER)
        return wait

    def _serve(self, inbox: SimpleQueue[_Job | _Hop]) -> None:
        while True:
            try:
                work = inbox.get(timeout=self.IDLE_SECONDS)
            except Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                continue  # a call was handed to this thread just now
            if isinstance(work, _Hop):
                waiter = self._serve_hop(work)
                with self._lock:
                    self._idle.append(inbox)  # free for the next hop before the loop hears
                if waiter is not None:
                    _tell(self._soon, waiter)
                del work, waiter
                continue
            job = work
            try:
                job.result = job.function()
            except BaseException as error:  # handed to the loop, which raises it
                job.error = error
            with self._lock:
                del self._busy[job]
                self._idle.append(inbox)
            _tell(self._soon, job.done)
            del job, work

    def _serve_hop(self, hop: _Hop) -> Waitable | None:
        """Run the hop's calls not started yet, one after another, on this thread.

        Returns the loop's waiter to set when this thread ended the hop's last
        call, once the thread is free again.
        """
        lock = self._lock
        states, deliveries = hop.states, hop.deliveries
        count = len(deliveries)
        context = hop.context
        while True:
            with lock:
                index = hop.next
                if index >= count:
                    hop.serving -= 1
                    if not hop.serving:
                        self._busy.pop(hop, None)
                    return None
                hop.next = index + 1
                states[index] = _RUNNING
                hop.started[index] = perf_counter()
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.copy().run(_call_in_hop, deliveries[index])
            except BaseException as raised:  # handed to the loop
                error = raised
            ended = perf_counter()
            waiter = None
            with lock:
                if states[index] == _RUNNING:
                    states[index] = _DONE
                    hop.results[index] = result
                    hop.errors[index] = error
                    hop.ended[index] = ended
                    hop.left -= 1
                    last = not hop.left
                    if last or hop.eager:
                        waiter, hop.waiter = hop.waiter, None
                    if last:
                        hop.serving -= 1
                        if not hop.serving:
                            self._busy.pop(hop, None)
                else:  # given up by the loop: what it did is nobody's now
                    states[index] = _GIVEN_UP_ENDED
                    last = False
            del result, error
            if last:
                return waiter
            if waiter is not None:
                _tell(self._soon, waiter)


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
            await within(receiver(event), time_limit)
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
            result = await within(calling, time_limit)
    if inspect.isawaitable(result):
        # A sync callable that returns an awaitable (a lambda around an async
        # function, a wrapper that hides ``async def``): finish it on the loop.
        if time_limit is None:
            await result
        else:
            await within(result, time_limit)
