"""The coredis client of a RedisStore, on an event loop of its own in a thread.

coredis (6.x) runs its connections in a task group that ``async with client``
opens, and anyio requires a task group to close in the task, and the nesting,
it was opened in. A store is opened by one part of a runtime and closed by
another, around the runtime's own task groups, so the client lives on a
thread with its own event loop (anyio's blocking portal), from ``open`` to
``close``. Callers, on asyncio, uvloop or trio, hand it a coroutine function and
sleep on an event that the thread sets with a non-blocking call into their
loop; no worker thread is held while a command runs.

The thread's loop is uvloop when it is installed (the ``uvloop`` extra): coredis
parses replies there, whatever loop the callers run. A call is a coroutine handed
to that loop with ``asyncio.run_coroutine_threadsafe``, the cheapest hop there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from .._lowlevel import loop_caller

__all__ = ["RedisConnection"]

_T = TypeVar("_T")


class RedisConnection:
    """One coredis client, entered on a thread of its own while the store is open."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client: Any = None

    @property
    def is_open(self) -> bool:
        return self._portal is not None

    async def open(self, make_client: Callable[[], Any]) -> None:
        """Start the thread and enter a client that ``make_client`` makes there."""
        stack = contextlib.ExitStack()

        def enter() -> tuple[anyio.from_thread.BlockingPortal, asyncio.AbstractEventLoop, Any]:
            portal = stack.enter_context(
                anyio.from_thread.start_blocking_portal("asyncio", {"use_uvloop": _UVLOOP})
            )
            loop = portal.call(_running_loop)
            client = portal.call(_make, make_client)
            stack.enter_context(portal.wrap_async_context_manager(client))
            return portal, loop, client

        try:
            self._portal, self._loop, self.client = await anyio.to_thread.run_sync(enter)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stack.close)
            raise
        self._stack = stack

    async def close(self) -> None:
        """Leave the client and stop the thread. Idempotent."""
        stack, self._stack, self._portal, self.client = self._stack, None, None, None
        self._loop = None
        if stack is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stack.close)

    async def call(self, function: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``function(client)`` on the client's loop; its result or its error.

        A cancellation here stops the wait, not the command: it completes or fails
        on the client's loop on its own.
        """
        loop = self._loop
        assert loop is not None, "the connection is open"
        call_soon, new_event = loop_caller()
        done = new_event()

        async def run() -> _T:
            return await function(self.client)

        # An empty context: the caller's (trio's sniffio marker, say) must not follow the
        # coroutine to the thread's asyncio loop.
        future: Future[_T] = contextvars.Context().run(
            asyncio.run_coroutine_threadsafe, run(), loop
        )
        future.add_done_callback(lambda _: call_soon(done.set))
        await done.wait()
        return future.result()


_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def _make(make_client: Callable[[], Any]) -> Any:
    return make_client()
