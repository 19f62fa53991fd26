"""The retry schedule: failed deliveries wait out their backoff here, holding no worker."""

from __future__ import annotations

import heapq
import itertools

import anyio

from ._buffer import DeliveryBuffer
from ._delivery import Delivery

__all__ = ["RetrySchedule"]


class RetrySchedule:
    """A heap of deliveries due again at a time; ``run`` moves them back into the buffer.

    A retry was accepted once already, so it re-enters the buffer past the bound.
    """

    def __init__(self, buffer: DeliveryBuffer) -> None:
        self._buffer = buffer
        self._due: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._wakeup: anyio.Event | None = None

    def __len__(self) -> int:
        """Deliveries waiting for their next attempt."""
        return len(self._due)

    def schedule(self, delivery: Delivery, delay: float) -> None:
        """Queue ``delivery`` again ``delay`` seconds from now."""
        heapq.heappush(self._due, (anyio.current_time() + delay, next(self._order), delivery))
        if self._wakeup is not None:
            self._wakeup.set()

    def waiting(self) -> list[Delivery]:
        """The deliveries waiting for their next attempt (for the stop's report)."""
        return [delivery for _, _, delivery in self._due]

    async def run(self) -> None:
        """Move deliveries back into the buffer as their backoff ends; runs until cancelled."""
        due = self._due
        while True:
            self._wakeup = wakeup = anyio.Event()
            if not due:
                await wakeup.wait()
                continue
            wait = due[0][0] - anyio.current_time()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await wakeup.wait()
                continue
            now = anyio.current_time()
            while due and due[0][0] <= now:
                self._buffer.readmit(heapq.heappop(due)[2])
