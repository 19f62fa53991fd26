"""Small records the runtime's parts share: its run state, drain epochs and counters.

At the bottom of the runtime's import graph: it imports nothing of aevents.
"""

from __future__ import annotations

from typing import Final

import anyio

__all__ = ["DRAINING", "NEW", "RUNNING", "STOPPED", "Counters", "Epoch", "Epochs", "RunState"]

NEW: Final = "new"
RUNNING: Final = "running"
DRAINING: Final = "draining"
STOPPED: Final = "stopped"


class RunState:
    """Where the runtime is in its life: ``new``, ``running``, ``draining``, ``stopped``.

    The runtime changes it; its parts read it. ``thread`` is the event loop's
    thread while it runs.
    """

    __slots__ = ("state", "thread")

    def __init__(self) -> None:
        self.state: str = NEW
        self.thread = 0

    @property
    def accepting(self) -> bool:
        """Running or draining: publishes from receivers are still taken."""
        return self.state is RUNNING or self.state is DRAINING


class Counters:
    """The totals ``stats()`` reports; each part adds to those it is told about."""

    __slots__ = (
        "dead",
        "delivered",
        "dropped",
        "failed",
        "published",
        "repeated",
        "retried",
        "unrouted",
    )

    def __init__(self) -> None:
        self.published = self.unrouted = self.delivered = self.failed = 0
        self.retried = self.dead = self.dropped = self.repeated = 0


class Epoch:
    """Deliveries accepted between two ``drain()`` calls, and everything they publish.

    ``owner`` is the runtime that accepted them: a receiver's publish counts
    in its parent's epoch only when the parent is that runtime's own delivery.
    """

    __slots__ = ("done", "owner", "unfinished")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.unfinished = 0
        self.done: anyio.Event | None = None

    def finish(self, count: int = 1) -> None:
        """``count`` deliveries ended: delivered, dead-lettered or set aside."""
        self.unfinished -= count
        if not self.unfinished and self.done is not None:
            self.done.set()


class Epochs:
    """The current epoch and the closed ones a ``drain()`` still waits for."""

    __slots__ = ("_closed", "_owner", "current")

    def __init__(self, owner: object) -> None:
        self._owner = owner
        self.current = Epoch(owner)
        self._closed: list[Epoch] = []

    def unfinished(self) -> int:
        """Deliveries accepted and not yet ended, in every epoch."""
        return self.current.unfinished + sum(epoch.unfinished for epoch in self._closed)

    async def wait_for_all(self, run: RunState) -> None:
        """Close the current epoch, then wait until every closed epoch has ended."""
        closed = self.current
        self.current = Epoch(self._owner)
        self._closed = [epoch for epoch in self._closed if epoch.unfinished]
        self._closed.append(closed)
        for epoch in list(self._closed):
            if epoch.unfinished and run.state is not STOPPED:
                if epoch.done is None:
                    epoch.done = anyio.Event()
                await epoch.done.wait()

    def wake_all(self) -> None:
        """Stopping: nobody waits for anything more."""
        for epoch in (*self._closed, self.current):
            if epoch.done is not None:
                epoch.done.set()
