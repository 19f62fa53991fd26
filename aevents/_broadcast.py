"""Broadcast: ``scope="process"`` receivers in every live process, from a tail of the store.

Every event a shared store keeps has a position in publish order
(``LeasedStore.events_after``). Each runtime on the store tails it from the
position it read at start: the events published after it started, by any
process. An event it published itself ran its process receivers from memory
when it was published, so the tail skips it; every other event is routed to
this runtime's ``scope="process"`` receivers and queued in the buffer, taking
room like a publish. Nothing of it is journaled: a process that stops or
crashes forgets what it had read and not run.

A runtime without process receivers only follows the newest position (one
cheap call each poll) and reads no event: reading costs each process a decode
per event published anywhere. A receiver subscribed while it runs gets the
events published from about then on. While it reads, the tail also teaches the
runtime's idempotency window the keys other processes recorded, so that
``publish_nowait`` answers a repeat of them.

The tail polls with a backoff (nothing local tells it another process
published); ``drain()`` wakes it and waits for a read that began after the
call and reached the newest event. A tail that fell behind pruning skips the
events pruned before it read them, and logs how many.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final

import anyio
import anyio.abc

from ._buffer import DeliveryBuffer
from ._event import Event
from ._exceptions import StoreError
from ._idempotency import IDEMPOTENCY_KEY, IdempotencyWindow
from ._intake import Dispatch
from ._registry import Registry, Subscription
from ._state import RUNNING, Epochs, RunState
from ._store._protocol import LeasedStore
from ._text import counted

__all__ = ["Broadcast"]

logger = logging.getLogger("aevents.fleet")

TAIL_BATCH: Final = 256
"""Events read at most in one call."""
POLL_MIN: Final = 0.005
POLL_MAX: Final = 0.5
"""The tail's backoff, in seconds, while it reads nothing new."""

_WRITING: Final = -1  # in ``Broadcast._own``: the write has not finished


class Broadcast:
    """A runtime's tail of the events of a shared store, for its process receivers."""

    def __init__(
        self,
        store: LeasedStore,
        *,
        run: RunState,
        buffer: DeliveryBuffer,
        epochs: Epochs,
        registry: Registry,
        idempotency: IdempotencyWindow | None,
    ) -> None:
        self._store = store
        self._run = run
        self._buffer = buffer
        self._epochs = epochs
        self._registry = registry
        self._idempotency = idempotency
        self.position = 0
        """The position of the last event read (or skipped)."""
        self.missed = 0
        """Events pruned before the tail read them, since the start."""
        # Events this process is writing or wrote, by id: the read number after which
        # the write finished (_WRITING until then). The tail skips them and forgets
        # each one it reads; a read to the newest event that began after a write
        # finished forgets that write's entry too (it was pruned, unread).
        self._own: dict[str, int] = {}
        self._reads = 0  # reads started
        self._caught_up = 0  # the number of the last read that reached the newest event
        self._tailing = False
        self._wanted = anyio.Event()
        self._read_done = anyio.Event()
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._routes_version = -1
        self._any = False  # whether the registry has a scope="process" receiver
        self._reading = False  # whether the tail reads events (it had one when it looked)

    async def open(self) -> None:
        """Read where the tail starts, the newest event: earlier ones are not this runtime's."""
        self.position = await self._store.event_position()
        self._reading = self._any_process_receiver()

    def start(self, tasks: anyio.abc.TaskGroup, dispatch: Dispatch) -> None:
        """Start the tail (it reads while the runtime runs)."""
        self._tailing = True
        tasks.start_soon(self._tail, dispatch)

    # ------------------------------------------------------------------ own events

    def writing(self, event: Event) -> None:
        """This process is about to add ``event``: the tail must not run it again.

        Not needed while there is no process receiver here: the tail reads
        nothing then, and when it starts reading it starts from the newest event.
        """
        if self._reading or self._any_process_receiver():
            self._own[event.id] = _WRITING

    def written(self, events: list[Event], standing: list[Event]) -> None:
        """The write of ``events`` finished; ``standing`` is what the store returned (the
        first event of a repeated key in place of the repeat, which was not added)."""
        own = self._own
        if not own:
            return
        for event, result in zip(events, standing, strict=True):
            if (event_id := event.id) in own:
                if result.id == event_id:
                    own[event_id] = self._reads
                else:
                    del own[event_id]

    def not_added(self, events: list[Event]) -> None:
        """The write of ``events`` failed: none of them was added."""
        if self._own:
            for event in events:
                self._own.pop(event.id, None)

    # ------------------------------------------------------------------ the tail

    async def _tail(self, dispatch: Dispatch) -> None:
        try:
            await self._tail_while_running(dispatch)
        finally:
            self._tailing = False
            self._read_done.set()  # a drain() waiting for a read waits no more

    async def _tail_while_running(self, dispatch: Dispatch) -> None:
        delay = POLL_MIN
        while self._run.state is RUNNING:
            self._wanted = anyio.Event()
            self._reads += 1
            read = self._reads
            reading = self._any_process_receiver()
            if not reading or not self._reading:
                # Nothing here to run them: follow the newest position without reading.
                # Or a first process receiver: read from the newest event on.
                try:
                    self.position = max(self.position, await self._store.event_position())
                except StoreError as error:
                    logger.warning("could not read the store's position (%s)", error)
                    await anyio.sleep(POLL_MAX)
                    continue
                self._reading = reading
                self._read_to_the_newest(read)
                if not reading:
                    with anyio.move_on_after(POLL_MAX):
                        await self._wanted.wait()
                continue
            try:
                page = await self._store.events_after(self.position, TAIL_BATCH)
            except StoreError as error:
                logger.warning("could not read the store's events (%s)", error)
                await anyio.sleep(POLL_MAX)
                continue
            if page.missed:
                self.missed += page.missed
                logger.warning(
                    "%s pruned from the store before this process read them: their "
                    'scope="process" receivers do not run here',
                    counted(page.missed, "event"),
                    extra={"missed": page.missed},
                )
            self.position = page.position
            for event in page.events:
                if self._own.pop(event.id, None) is not None:
                    continue  # published here: its process receivers ran at publish
                self._learn_key(event)
                routes = self._process_routes(event.name)
                if not routes:
                    continue
                if not self._buffer.try_reserve(len(routes)):
                    await self._buffer.reserve(len(routes))
                    if self._buffer.closed:
                        return
                if self._run.state is not RUNNING:
                    self._buffer.release(len(routes))
                    return
                dispatch(event, routes, self._epochs.current)
            if len(page.events) == TAIL_BATCH:
                delay = POLL_MIN
                continue  # more to read at once
            self._read_to_the_newest(read)
            if page.events:
                delay = POLL_MIN
            with anyio.move_on_after(delay):
                await self._wanted.wait()
            delay = POLL_MIN if self._wanted.is_set() else min(delay * 2, POLL_MAX)

    def _read_to_the_newest(self, read: int) -> None:
        """Read number ``read`` reached the newest event: tell ``catch_up``, and forget the
        writes finished before it began (read already, skipped, or pruned unread)."""
        self._caught_up = read
        if self._own:
            old = [id_ for id_, after in self._own.items() if 0 <= after < read]
            for event_id in old:
                del self._own[event_id]
        self._read_done.set()
        self._read_done = anyio.Event()

    def _any_process_receiver(self) -> bool:
        registry = self._registry
        if self._routes_version != registry.version:
            self._routes = {}
            self._routes_version = registry.version
            self._any = any(s.scope == "process" for s in registry.subscriptions())
        return self._any

    def _learn_key(self, event: Event) -> None:
        """Remember another process's idempotency key, so a repeat here returns its event."""
        key = event.metadata.get(IDEMPOTENCY_KEY)
        window = self._idempotency
        if key is None or window is None or window.get(key, datetime.now(UTC)) is not None:
            return
        window.add(key, event)

    def _process_routes(self, name: str) -> tuple[Subscription, ...]:
        self._any_process_receiver()  # empties the cache when the registry changed
        routes = self._routes.get(name)
        if routes is None:
            routes = tuple(s for s in self._registry.route(name) if s.scope == "process")
            if len(self._routes) >= 10_000:
                self._routes = {}
            self._routes[name] = routes
        return routes

    async def catch_up(self) -> None:
        """Wait for a read that began after this call to reach the newest event.

        What it read is queued by then (in the current epoch), so a ``drain()``
        that waits for the epochs next waits for it too.
        """
        started = self._reads
        self._wanted.set()
        while self._caught_up <= started and self._tailing:
            await self._read_done.wait()
