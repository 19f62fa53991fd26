"""The coredis client of a RedisStore, owned by a task of its own on the caller's event loop.

coredis (6.x) runs its connections in a task group that ``async with client``
opens, and anyio requires a task group to close in the task, and the nesting,
it was opened in. A store is opened by one part of a runtime and closed by
another, around the runtime's own task groups (and by tests, the CLI and the
dashboard from whatever task they run in), so no caller's task can hold it.

So ``open`` starts an owner task on the caller's event loop, outside every
task group of the caller (on asyncio a plain task, on trio a system task): it
enters the client, and a task group for the store's own background work (the
wake listener, the retention pass), then waits for ``close``, which it answers
by leaving both, in the task and the nesting it entered them in. Calls await
the client directly, from any task of that loop: no thread is crossed. The
owner runs in no caller's cancel scope, so cancelling a caller (a runtime
stopped by a cancellation, say) leaves the connections up for the shielded
calls that hand its claims back.

A store so opened belongs to the event loop it was opened on, as PostgreSQL and
SQLite stores do; it runs on asyncio, uvloop and trio alike, since coredis is
built on anyio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["RedisConnection"]

_T = TypeVar("_T")


class RedisConnection:
    """One coredis client, entered by an owner task while the store is open."""

    def __init__(self) -> None:
        self.client: Any = None
        self.tasks: anyio.abc.TaskGroup | None = None
        """The owner's task group, for the store's background tasks while it is open."""
        self._closing: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        self._owner: asyncio.Task[None] | None = None  # on asyncio: a reference, kept

    @property
    def is_open(self) -> bool:
        return self.client is not None

    async def open(self, make_client: Callable[[], Any]) -> None:
        """Start the owner task and wait until it entered a client ``make_client`` makes.

        The client's own errors come back here; a cancellation leaves nothing open.
        """
        opened, closing, closed = anyio.Event(), anyio.Event(), anyio.Event()
        failure: list[BaseException] = []

        async def own() -> None:
            try:
                client = make_client()
                async with client, anyio.create_task_group() as tasks:
                    self.client, self.tasks = client, tasks
                    opened.set()
                    await closing.wait()
                    tasks.cancel_scope.cancel()
            except Exception as error:  # reported to open(), or dropped after close()
                failure.append(error)
            finally:
                self.client = self.tasks = None
                self._owner = None
                opened.set()
                closed.set()

        self._closing, self._closed = closing, closed
        self._spawn(own)
        try:
            await opened.wait()
        except BaseException:
            await self.close()
            raise
        if failure:
            await self.close()
            raise failure[0]

    def _spawn(self, owner: Callable[[], Coroutine[Any, Any, None]]) -> None:
        native = anyio.lowlevel.current_token().native_token
        if isinstance(native, asyncio.AbstractEventLoop):
            self._owner = native.create_task(owner())
        else:  # trio: a system task runs outside every nursery of the caller
            import trio

            trio.lowlevel.spawn_system_task(owner)

    async def close(self) -> None:
        """Leave the client (its owner task ends). Idempotent."""
        closing, closed = self._closing, self._closed
        self._closing = self._closed = None
        self.client = None
        if closing is None or closed is None:
            return
        closing.set()
        with anyio.CancelScope(shield=True):
            await closed.wait()

    async def call(self, function: Callable[[Any], Awaitable[_T]]) -> _T:
        """``function(client)``: its result or its error."""
        return await function(self.client)
