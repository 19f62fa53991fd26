"""Backend differences kept out of the runtime's way: the cancel check, error groups.

Public API of anyio and trio only.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.lowlevel import checkpoint

__all__ = [
    "Waitable",
    "cancelled_predicate",
    "honour_cancellation",
    "leaf_errors",
    "loop_caller",
    "native_event",
]

_HONOUR_TRIES = 8


def cancelled_predicate() -> Callable[[], bool] | None:
    """ "Has a cancellation reached the calling task?", cheaply, for this backend; None on trio.

    On trio, ``trio.lowlevel.checkpoint_if_cancelled`` is the cheapest correct
    cancel point (0.3 µs): None says "await that".

    On asyncio (and uvloop), anyio cancels a task through ``Task.cancel``, so a
    task that a cancellation has reached has ``Task.cancelling() > 0``: it
    yielded in a cancelled scope, or another task or an expired timer
    cancelled it. That costs 0.1 µs, on the loop the runtime runs on. Only
    then is the exact answer asked of ``anyio.current_effective_deadline``
    (1 µs, as it walks the task's scopes): ``-inf`` inside a cancelled scope,
    or a deadline already past; a shielded scope says no. When the answer is
    yes, ``honour_cancellation`` yields until anyio delivers the cancellation.

    What this does not see, by choice: a scope that the task cancelled
    itself, or a deadline that passed, since its last yield. Such a
    cancellation reaches the task at its next yield (``publish`` yields when
    it waits for room or for the journal). Checking for it exactly on every
    publish costs 1 µs, 15-25% of a publish.
    """
    if anyio.get_cancelled_exc_class().__module__.startswith("trio"):
        return None
    loop = asyncio.get_running_loop()
    current_task = asyncio.current_task
    effective_deadline = anyio.current_effective_deadline
    current_time = anyio.current_time
    inf = math.inf

    def cancelled() -> bool:
        task = current_task(loop)
        if task is None or not task.cancelling():
            return False
        deadline = effective_deadline()
        return deadline != inf and deadline <= current_time()

    return cancelled


async def honour_cancellation(cancelled: Callable[[], bool]) -> None:
    """Yield until the pending cancellation is delivered (it raises here).

    A scope the task cancelled itself is delivered at the first yield; an
    expired deadline once anyio's timer has run, at most a yield or two later.
    Should the predicate stay true without a cancellation arriving, give up
    after a few yields rather than spin: the publish then goes on.
    """
    for _ in range(_HONOUR_TRIES):
        await checkpoint()
        if not cancelled():
            return


class Waitable(Protocol):
    """An event tasks of one loop wait on: ``anyio.Event``, or the backend's own."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


def native_event() -> Callable[[], Waitable]:
    """The cheapest event for the running loop's tasks: ``asyncio.Event`` on asyncio (and
    uvloop), ``trio.Event`` on trio. Call it on the loop; use what it returns there.

    They wait, wake and are cancelled as ``anyio.Event`` does, which wraps them: making
    an ``anyio.Event`` first asks which backend runs (13.2k CPU instructions, counted
    with callgrind), making an ``asyncio.Event`` does not (2.7k). The runtime makes one
    each time a worker parks or a publisher waits for room.
    """
    if isinstance(anyio.lowlevel.current_token().native_token, asyncio.AbstractEventLoop):
        return asyncio.Event
    if anyio.get_cancelled_exc_class().__module__.startswith("trio"):
        import trio

        return trio.Event
    return anyio.Event  # pragma: no cover - anyio has no other backend today


def loop_caller() -> tuple[Callable[[Callable[[], object]], object], Callable[[], Waitable]]:
    """How to have the running loop call a function soon, from another thread, without
    waiting for it; and the cheapest event its tasks can wait on (``native_event``).
    Call it on the loop.

    On asyncio (and uvloop), ``loop.call_soon_threadsafe``; on trio,
    ``TrioToken.run_sync_soon``. ``anyio.from_thread.run_sync`` would also block the
    thread until the loop has run the call, which a thread that only tells the loop
    something has no need to wait for. Once the loop has ended, calling the function
    raises.
    """
    token = anyio.lowlevel.current_token()
    native = token.native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return native.call_soon_threadsafe, asyncio.Event
    run_sync_soon = getattr(native, "run_sync_soon", None)  # trio.lowlevel.TrioToken
    if callable(run_sync_soon):
        return run_sync_soon, native_event()
    return functools.partial(anyio.from_thread.run_sync, token=token), anyio.Event  # blocking


def leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside (nested) groups, less the cancellations that came with them."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(leaf_errors(error))
        elif not isinstance(error, cancelled):
            leaves.append(error)
    return leaves
