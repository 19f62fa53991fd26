"""The publishes beside the plain ``await publish()``: waits, idempotency keys, hooks, nowait.

``publish`` → ``Intake.accept`` is the hot path and stays in the runtime; it
hands over to ``Publisher`` when a publish has to wait (for room, or for the
journal), carries an ``idempotency_key``, or meets publish middleware.
``publish_nowait`` never waits: it refuses when full, and with a store
journals in the background.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ._buffer import DeliveryBuffer
from ._catalog import is_declared
from ._delivery import Delivery, running_delivery
from ._event import Event
from ._exceptions import (
    KeyInFlightError,
    PayloadError,
    QueueFullError,
    RuntimeClosedError,
    UnknownEventError,
)
from ._fleet import Fleet
from ._idempotency import IDEMPOTENCY_KEY, IdempotencyWindow, claims_key, validate_idempotency_key
from ._intake import Batch, Intake, Waiting
from ._journal import Journal
from ._lanes import MAX_KEY_CHARS, bad_key
from ._middleware import Middleware, MiddlewareStack, PublishHooks, Publishing
from ._names import validate_name
from ._payload import encode_metadata, encode_payload
from ._state import STOPPED, Counters, RunState

__all__ = ["Accept", "Publisher"]

Accept = Callable[
    [str, Mapping[str, Any] | None, Mapping[str, str] | None, Delivery | None, str | None],
    Event | Waiting,
]
"""``Intake.accept``, or the runtime's wrapper of it (see ``RouteCheck.watch``)."""


class Publisher:
    """The waiting and the special cases of publishing, for one runtime."""

    def __init__(
        self,
        *,
        intake: Intake,
        accept: Accept,
        run: RunState,
        buffer: DeliveryBuffer,
        journal: Journal | None,
        fleet: Fleet | None,
        counters: Counters,
        middleware: MiddlewareStack,
        idempotency: IdempotencyWindow,
        strict: bool,
        max_payload_bytes: int,
    ) -> None:
        self._intake = intake
        self._accept = accept
        self._run = run
        self._buffer = buffer
        self._journal = journal
        self._fleet = fleet
        self._counters = counters
        self._middleware = middleware
        self._idempotency = idempotency
        self._strict = strict
        self._max_payload_bytes = max_payload_bytes
        self._first_publishes: dict[str, anyio.Event] = {}  # keys whose first publish waits
        self._tasks: anyio.abc.TaskGroup | None = None

    def started(self, tasks: anyio.abc.TaskGroup) -> None:
        """The runtime's task group, for the background journal writes of ``publish_nowait``."""
        self._tasks = tasks

    # ------------------------------------------------------------------ awaiting

    async def finish(self, name: str, waiting: Waiting, parent: Delivery | None) -> Event:
        """The waits of ``publish``: for room in the buffer, then for the journal."""
        if not waiting.reserved:
            await self._buffer.reserve(
                len(waiting.routes), in_delivery=self._intake.in_delivery(parent)
            )
            if self._run.state is STOPPED:
                raise RuntimeClosedError(name) from None
        if self._fleet is not None:
            event = await self._fleet.publish(waiting, self._intake.dispatch)
            if event is waiting.event:
                self._counters.published += 1
                if not waiting.routes:
                    self._counters.unrouted += 1
            return event
        if self._journal is not None:
            await self._journal.append(waiting.event, waiting.routes)
            if not waiting.routes:
                self._counters.unrouted += 1
            if self._run.state is STOPPED:
                # Shutdown closed the buffer during the (shielded) write: the event
                # is journaled, counted as left pending, and the next start delivers it.
                self._counters.published += 1
                return waiting.event
        self._counters.published += 1
        self._intake.dispatch(waiting.event, waiting.routes, waiting.epoch)
        return waiting.event

    async def publish_once(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
    ) -> Event:
        """``publish`` with an idempotency key: the first event for the key, or a new one."""
        idempotency_key = _checked_key(name, idempotency_key, "publish")
        while (first := self._repeat_of(idempotency_key)) is None:
            waiting = self._first_publishes.get(idempotency_key)
            if waiting is None:
                break
            await waiting.wait()  # the first publish of this key is under way
        if first is not None:
            return first
        self._first_publishes[idempotency_key] = done = anyio.Event()
        woke = False
        try:
            tagged = _tagged(metadata, idempotency_key)
            if self._middleware.publish:
                event = await self.publish_with_middleware(name, payload, tagged, key)
            else:
                parent = running_delivery()
                waking = self._buffer.waking
                accepted = self._accept(name, payload, tagged, parent, key)
                if isinstance(accepted, Waiting):
                    accepted = await self.finish(name, accepted, parent)
                else:
                    woke = self._buffer.waking and not waking
                event = accepted
            self._idempotency.add(idempotency_key, event)
        finally:
            del self._first_publishes[idempotency_key]
            done.set()
        if woke:
            await _let_the_woken_worker_start()
        return event

    async def publish_with_middleware(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
    ) -> Event:
        parent = running_delivery()
        waking = self._buffer.waking
        woke = False
        with PublishHooks(self._middleware.publish, name, payload, metadata, key) as publishing:
            accepted = self._accept_publishing(publishing, parent)
            if isinstance(accepted, Waiting):
                accepted = await self.finish(publishing.name, accepted, parent)
            else:
                woke = self._buffer.waking and not waking
            publishing.event = accepted
        if woke:
            await _let_the_woken_worker_start()
        return accepted

    def _accept_publishing(
        self, publishing: Publishing, parent: Delivery | None
    ) -> Event | Waiting:
        """``accept`` what the publish hooks left of a publish (they may change it)."""
        return self._accept(
            publishing.name,
            publishing.payload,
            publishing.metadata or None,
            parent,
            publishing.key,
        )

    # ------------------------------------------------------------------ never waiting

    def publish_nowait(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
    ) -> Event:
        """``publish_nowait`` once the thread is checked (see ``EventRuntime.publish_nowait``)."""
        if idempotency_key is not None or (metadata is not None and claims_key(metadata)):
            return self._publish_once_nowait(name, payload, metadata, key, idempotency_key)
        return self._publish_nowait(name, payload, metadata, key)

    def _publish_nowait(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
    ) -> Event:
        parent = running_delivery()
        if self._middleware.publish:
            with PublishHooks(self._middleware.publish, name, payload, metadata, key) as publishing:
                accepted = self._accept_publishing(publishing, parent)
                if isinstance(accepted, Waiting):
                    accepted = self._without_waiting(publishing.name, accepted)
                publishing.event = accepted
            return accepted
        accepted = self._accept(name, payload, metadata, parent, key)
        if isinstance(accepted, Waiting):
            return self._without_waiting(name, accepted)
        return accepted

    def _publish_once_nowait(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
    ) -> Event:
        """``publish_nowait`` with an idempotency key (see ``publish_once``)."""
        idempotency_key = _checked_key(name, idempotency_key, "publish_nowait")
        first = self._repeat_of(idempotency_key)
        if first is not None:
            return first
        if idempotency_key in self._first_publishes:
            raise KeyInFlightError(name, self._buffer.size, idempotency_key)
        event = self._publish_nowait(name, payload, _tagged(metadata, idempotency_key), key)
        self._idempotency.add(idempotency_key, event)
        return event

    def _without_waiting(self, name: str, waiting: Waiting) -> Event:
        """``publish_nowait`` when ``publish`` would wait: refuse, or journal in the background."""
        if not waiting.reserved:
            raise QueueFullError(name, self._buffer.size) from None
        assert self._tasks is not None
        self._counters.published += 1
        if self._fleet is not None:
            self._fleet.publish_in_background(self._tasks, waiting, self._intake.dispatch)
            return waiting.event
        assert self._journal is not None
        self._journal.append_in_background(
            self._tasks, waiting.event, waiting.routes, waiting.epoch, self._intake.dispatch
        )
        return waiting.event

    # ------------------------------------------------------------------ batches

    async def publish_many(
        self,
        name: str,
        payloads: Iterable[Mapping[str, Any] | None],
        keys: Iterable[str | None] | None,
        metadata: Mapping[str, str] | None,
    ) -> list[Event]:
        """``publish_many`` once the thread and cancellation are checked: all or none."""
        payloads, keys = _batch_input(name, payloads, keys, metadata, "publish_many")
        parent = running_delivery()
        if not self._middleware.publish:
            batch = self._intake.build_many(name, payloads, metadata, keys, parent)
            return await self._admit_many(name, batch, parent)
        with _BatchHooks(self._middleware.publish, name, payloads, metadata, keys) as hooks:
            batch = self._build_hooked(name, hooks, parent)
            hooks.accepted(await self._admit_many(name, batch, parent))
        return batch.events

    def publish_many_nowait(
        self,
        name: str,
        payloads: Iterable[Mapping[str, Any] | None],
        keys: Iterable[str | None] | None,
        metadata: Mapping[str, str] | None,
    ) -> list[Event]:
        """``publish_many_nowait`` once the thread is checked: all, or ``QueueFullError``."""
        payloads, keys = _batch_input(name, payloads, keys, metadata, "publish_many_nowait")
        parent = running_delivery()
        if not self._middleware.publish:
            batch = self._intake.build_many(name, payloads, metadata, keys, parent)
            return self._admit_many_nowait(name, batch)
        with _BatchHooks(self._middleware.publish, name, payloads, metadata, keys) as hooks:
            batch = self._build_hooked(name, hooks, parent)
            hooks.accepted(self._admit_many_nowait(name, batch))
        return batch.events

    def _build_hooked(self, name: str, hooks: _BatchHooks, parent: Delivery | None) -> Batch:
        names, payloads, metadatas, keys = hooks.columns()
        return self._intake.build_many(name, payloads, None, keys, parent, (names, metadatas))

    async def _admit_many(self, name: str, batch: Batch, parent: Delivery | None) -> list[Event]:
        """Take room for a built batch, journal it and dispatch it; or raise having taken none."""
        count = batch.deliveries
        if count and not self._buffer.try_reserve(count):  # one accounting update for the batch
            await self._buffer.reserve(count, in_delivery=self._intake.in_delivery(parent))
            if self._run.state is STOPPED:
                raise RuntimeClosedError(name) from None
        if self._fleet is not None and count:
            await self._fleet.publish_many(batch, self._intake.dispatch)
            self._count(batch)
            return batch.events
        if self._journal is not None and count:
            await self._journal.append_many(batch.events, batch.routes, count)
            if self._run.state is STOPPED:
                # Shutdown closed the buffer during the (shielded) write: the batch is
                # journaled, counted as left pending, and the next start delivers it.
                self._count(batch)
                return batch.events
        self._dispatch_many(batch)
        return batch.events

    def _admit_many_nowait(self, name: str, batch: Batch) -> list[Event]:
        """``_admit_many`` without waiting: refuse when full, journal in the background."""
        count = batch.deliveries
        if count and not self._buffer.try_reserve(count):
            raise QueueFullError(name, self._buffer.size) from None
        if (self._journal is None and self._fleet is None) or not count:
            self._dispatch_many(batch)
            return batch.events
        assert self._tasks is not None
        self._count(batch)
        if self._fleet is not None:
            self._fleet.publish_many_in_background(self._tasks, batch, self._intake.dispatch)
            return batch.events
        assert self._journal is not None
        self._journal.append_many_in_background(
            self._tasks, batch.events, batch.routes, count, batch.epoch, self._intake.dispatch
        )
        return batch.events

    def _count(self, batch: Batch) -> None:
        counters, shared = self._counters, batch.shared
        counters.published += len(batch.events)
        if shared is None:
            counters.unrouted += batch.routes.count(())
        elif not shared:
            counters.unrouted += len(batch.events)

    def _dispatch_many(self, batch: Batch) -> None:
        """Count an admitted batch and hand its deliveries over, in batch order."""
        self._count(batch)
        self._intake.dispatch_many(batch)

    # ------------------------------------------------------------------ checks

    def _repeat_of(self, idempotency_key: str) -> Event | None:
        """The event published with ``idempotency_key`` within the window, counted as
        repeated; None if there is none."""
        first = self._idempotency.get(idempotency_key, datetime.now(UTC))
        if first is not None:
            self._counters.repeated += 1
        return first

    def validated(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
    ) -> tuple[dict[str, Any], dict[str, str] | None, str | None]:
        """Check a publish that will be made later (``publish_on_commit``) as ``publish``
        would check it now; return the payload, metadata and idempotency key to make it with.

        Raises what ``publish`` raises for bad input, naming the event.
        """
        validate_name(name)
        if self._strict and not is_declared(name):
            raise UnknownEventError(name)
        body = encode_payload(name, payload, self._max_payload_bytes)
        if metadata is not None and claims_key(metadata):
            raise PayloadError(
                name,
                f"metadata[{IDEMPOTENCY_KEY!r}]",
                "is reserved: pass idempotency_key=... instead",
            )
        meta = None if metadata is None else encode_metadata(name, metadata)
        if key is not None and (type(key) is not str or not 0 < len(key) <= MAX_KEY_CHARS):
            raise bad_key(name, key)
        if idempotency_key is not None:
            idempotency_key = validate_idempotency_key(name, idempotency_key)
        return body, meta, idempotency_key


class _BatchHooks:
    """The publish hooks of a batch: one ``PublishHooks`` per event, entered in order.

    If a ``before_publish`` raises, the events entered so far see that error in
    their ``after_publish``, and nothing is accepted. Leaving runs every
    ``after_publish`` with the error that ended the batch, or with its event.
    """

    __slots__ = ("entered", "hooks", "input")

    def __init__(
        self,
        hooks: tuple[Middleware, ...],
        name: str,
        payloads: list[Mapping[str, Any] | None],
        metadata: Mapping[str, str] | None,
        keys: list[str | None],
    ) -> None:
        self.hooks = hooks
        self.input = (name, payloads, metadata, keys)
        self.entered: list[PublishHooks] = []

    def __enter__(self) -> _BatchHooks:
        name, payloads, metadata, keys = self.input
        try:
            for index, payload in enumerate(payloads):
                publish_hooks = PublishHooks(self.hooks, name, payload, metadata, keys[index])
                publish_hooks.__enter__()  # if a hook raises, it ran the afters of this event
                self.entered.append(publish_hooks)
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def columns(
        self,
    ) -> tuple[
        list[str], list[Mapping[str, Any] | None], list[Mapping[str, str] | None], list[str | None]
    ]:
        """The names, payloads, metadata and keys the hooks left, one entry per event."""
        publishings = [publish_hooks.publishing for publish_hooks in self.entered]
        return (
            [publishing.name for publishing in publishings],
            [publishing.payload for publishing in publishings],
            [publishing.metadata or None for publishing in publishings],
            [publishing.key for publishing in publishings],
        )

    def accepted(self, events: list[Event]) -> None:
        for publish_hooks, event in zip(self.entered, events, strict=True):
            publish_hooks.publishing.event = event

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for publish_hooks in self.entered:
            publish_hooks.__exit__(exc_type, error, traceback)


def _batch_input(
    name: str,
    payloads: Iterable[Mapping[str, Any] | None],
    keys: Iterable[str | None] | None,
    metadata: Mapping[str, str] | None,
    call: str,
) -> tuple[list[Mapping[str, Any] | None], list[str | None]]:
    """The payloads and keys of a batch as lists of one length, or ``PayloadError``."""
    if isinstance(payloads, Mapping | str | bytes) or not isinstance(payloads, Iterable):
        raise PayloadError(
            name,
            "payloads",
            f"expected a sequence of payload mappings, got {type(payloads).__name__}: "
            f"pass [payload] for one event, or use publish()",
        )
    payloads = list(payloads)
    if keys is None:
        key_list: list[str | None] = [None] * len(payloads)
    elif isinstance(keys, Mapping | str | bytes) or not isinstance(keys, Iterable):
        raise PayloadError(
            name,
            "keys",
            f"expected a sequence of one key (str or None) per payload, got {type(keys).__name__}",
        )
    else:
        key_list = list(keys)
        if len(key_list) != len(payloads):
            raise PayloadError(
                name,
                "keys",
                f"has {len(key_list)} entries for {len(payloads)} payloads; "
                "give one key (str or None) per payload",
            )
    if metadata is not None and claims_key(metadata):
        raise PayloadError(
            name,
            f"metadata[{IDEMPOTENCY_KEY!r}]",
            f"{call}() takes no idempotency keys: publish each event with "
            "publish(..., idempotency_key=...) instead",
        )
    return payloads, key_list


def _checked_key(name: str, idempotency_key: str | None, call: str) -> str:
    """A valid ``idempotency_key``; None means the caller's metadata claimed the entry."""
    if idempotency_key is None:
        raise PayloadError(
            name,
            f"metadata[{IDEMPOTENCY_KEY!r}]",
            f"is reserved: pass {call}(..., idempotency_key=...) instead",
        )
    return validate_idempotency_key(name, idempotency_key)


def _tagged(metadata: Mapping[str, str] | None, idempotency_key: str) -> dict[str, str]:
    """``metadata`` with the idempotency key in its reserved entry."""
    tagged = {} if metadata is None else dict(metadata)
    tagged[IDEMPOTENCY_KEY] = idempotency_key
    return tagged


async def _let_the_woken_worker_start() -> None:
    """The yield of a publish that woke an idle worker (see ``EventRuntime.publish``):
    shielded, as the publish has accepted its event, and once."""
    await anyio.lowlevel.cancel_shielded_checkpoint()
