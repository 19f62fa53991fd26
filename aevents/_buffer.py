"""The buffer: the bound on admitted deliveries, and the queue the workers take them from.

``queued`` counts deliveries admitted and not yet taken by a worker: those in
the queue, and those that hold their room while they wait in a key's lane or
for the journal. A publish reserves room for all of an event's deliveries at
once, or waits (in arrival order) until there is room for all of them, so an
event is never half accepted. One event larger than the whole buffer is let
in when the buffer is empty, so it cannot wait forever.

The queue is a ``deque`` of the buffer's own, with public anyio events to park
idle workers and waiting publishers: putting and taking never yield, and cost
a list operation, so the hot path pays for waiting only when it waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import anyio

from ._delivery import Delivery, Queued, named
from ._lowlevel import Waitable

__all__ = ["DeliveryBuffer"]


class _RoomWaiter:
    """A publish waiting for room for ``needed`` deliveries."""

    __slots__ = ("granted", "needed", "ready")

    def __init__(self, needed: int, ready: Waitable) -> None:
        self.needed = needed
        self.ready = ready
        self.granted = False


class DeliveryBuffer:
    """Room for ``size`` waiting deliveries, and the queue of those ready to run.

    ``items`` is the queue itself: workers take from its left end through
    ``take``; anyone with reserved room adds to its right end through ``put``.
    The plain worker loop inlines ``take`` (``items``, ``queued``,
    ``room_waiters`` and ``grant``), as the call costs 4% of a fan-out.
    """

    __slots__ = (
        "_blocked_in_delivery",
        "_idle_workers",
        "closed",
        "items",
        "new_event",
        "queued",
        "room_waiters",
        "size",
        "waking",
        "workers",
    )

    def __init__(self, size: int, workers: int) -> None:
        self.size = size
        self.workers = workers
        self.queued = 0
        self.items: deque[Queued] = deque()
        self.closed = False
        self._idle_workers: deque[Waitable] = deque()
        self.room_waiters: deque[_RoomWaiter] = deque()
        """The publishes waiting for room, first come first served (see ``grant``)."""
        self._blocked_in_delivery = 0
        self.waking = False
        """Whether an idle worker was woken to take a queued delivery and has not run yet
        (read it; the buffer sets it)."""
        self.new_event: Callable[[], Waitable] = anyio.Event
        """What parked workers and waiting publishers wait on: the runtime sets the
        loop's own (``native_event``) once it runs, as making ``anyio.Event`` costs 5x."""

    # ------------------------------------------------------------------ room

    def try_reserve(self, count: int) -> bool:
        """Take room for ``count`` deliveries if there is some now, and nobody waits first."""
        if self.room_waiters or (self.queued + count > self.size and self.queued):
            return False
        self.queued += count
        return True

    async def reserve(self, count: int, *, in_delivery: bool = False) -> None:
        """Take room for ``count`` deliveries, waiting in line for it if need be.

        ``in_delivery``: the caller is a receiver of this runtime. When every
        other worker already waits inside a receiver for room, waiting too
        would deadlock the runtime, so this one overshoots the bound instead.
        Cancelled while waiting, it takes nothing; a room granted at that very
        moment is passed on. After ``close()`` it returns having taken
        nothing: the caller checks ``closed``.
        """
        if self.try_reserve(count):
            return
        if in_delivery and self._blocked_in_delivery + 1 >= self.workers:
            self.queued += count
            return
        waiter = _RoomWaiter(count, self.new_event())
        self.room_waiters.append(waiter)
        if in_delivery:
            self._blocked_in_delivery += 1
        try:
            await waiter.ready.wait()
        except BaseException:
            if waiter.granted:
                self.release(count)
            else:
                self.room_waiters.remove(waiter)
            raise
        finally:
            if in_delivery:
                self._blocked_in_delivery -= 1

    def release(self, count: int) -> None:
        """Give back room for ``count`` deliveries that will not be queued; wake who fits."""
        self.queued -= count
        self.grant()

    def grant(self) -> None:
        """Wake the publishes waiting for room, in arrival order, while the first one fits."""
        waiters = self.room_waiters
        while waiters:
            waiter = waiters[0]
            if self.queued + waiter.needed > self.size and self.queued:
                return
            waiters.popleft()
            self.queued += waiter.needed
            waiter.granted = True
            waiter.ready.set()

    # ------------------------------------------------------------------ the queue

    def put(self, delivery: Queued) -> None:
        """Queue a delivery whose room is reserved."""
        self.items.append(delivery)
        if self._idle_workers and not self.waking:
            self._wake()

    def put_many(self, deliveries: Iterable[Queued]) -> None:
        """Queue deliveries whose room is reserved, in order."""
        self.items.extend(deliveries)
        if self._idle_workers and not self.waking:
            self._wake()

    def _wake(self) -> None:
        """Wake one idle worker. One at a time: once it runs, it wakes the next if there is
        more than it can take, so a burst of trivial deliveries does not wake every idle
        worker only for most of them to find the queue empty."""
        self.waking = True
        self._idle_workers.popleft().set()

    def readmit(self, delivery: Delivery) -> None:
        """Queue a delivery accepted once already (a retry): past the bound if need be."""
        self.queued += 1
        self.put(delivery)

    def give_back(self, deliveries: list[Delivery]) -> None:
        """Queue again, first in line and in order, deliveries taken but not run."""
        self.queued += len(deliveries)
        self.items.extendleft(reversed(deliveries))
        if self._idle_workers and not self.waking:
            self._wake()

    def take(self) -> Queued | None:
        """The next queued delivery, its room given back; None if the queue is empty."""
        if not self.items:
            return None
        self.queued -= 1
        if self.room_waiters:
            self.grant()
        return self.items.popleft()

    def take_threaded(self, into: list[Delivery], limit: int) -> None:
        """Move the deliveries to sync receivers at the head of the queue to ``into``, up to
        ``limit`` in it, their room given back at once (a worker's thread hop)."""
        items = self.items
        before = len(into)
        room = limit - before
        while room > 0 and items and items[0][1].threaded:  # [1]: its subscription
            into.append(named(items.popleft()))
            room -= 1
        taken = len(into) - before
        if taken:
            self.queued -= taken
            if self.room_waiters:
                self.grant()

    async def wait(self) -> bool:
        """Park an idle worker until a delivery is queued; False once closed and empty.

        Cancelled while parked, a wake-up meant for it goes to the next idle worker.
        """
        while not self.items:
            if self.closed:
                return False
            ready = self.new_event()
            self._idle_workers.append(ready)
            try:
                await ready.wait()
            except BaseException:
                if ready.is_set():
                    self.waking = False
                    if self.items and self._idle_workers:
                        self._wake()
                else:
                    self._idle_workers.remove(ready)
                raise
            self.waking = False
            if len(self.items) > 1 and self._idle_workers:
                self._wake()  # more than this worker takes at once: the next one helps
        return True

    def close(self) -> None:
        """Stop: wake the idle workers and the waiting publishers.

        What is still queued stays in ``items``, counted in ``queued``, for the
        report of deliveries the stop left unrun.
        """
        self.closed = True
        while self._idle_workers:
            self._idle_workers.popleft().set()
        while self.room_waiters:
            self.room_waiters.popleft().ready.set()
