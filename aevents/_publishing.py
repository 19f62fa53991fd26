"""The other ways in: publish_nowait, publish_threadsafe, idempotency keys, publish hooks.

Mixed into ``EventRuntime``; the attributes annotated below are its own.
``publish`` → ``_accept`` is the hot path and stays in ``_runtime``; it
hands over to these only when a publish carries an ``idempotency_key`` or
the runtime has publish middleware. ``publish_nowait`` never waits (it
refuses when full, and with a store journals in the background), and
``publish_threadsafe`` runs ``publish`` on the event loop for another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.from_thread

from ._catalog import is_declared
from ._delivery import Item, delivery_var
from ._event import Event
from ._exceptions import (
    AeventsError,
    KeyInFlightError,
    PayloadError,
    QueueFullError,
    RuntimeClosedError,
    UnknownEventError,
    WrongThreadError,
)
from ._idempotency import IDEMPOTENCY_KEY, IdempotencyWindow, validate_idempotency_key
from ._middleware import MiddlewareStack, PublishHooks, Publishing
from ._names import validate_name
from ._ordering import MAX_KEY_CHARS, bad_key
from ._payload import encode_metadata, encode_payload
from ._state import _DRAINING, _RUNNING, _STOPPED, Epoch, _claims_key, _Deferred

if TYPE_CHECKING:
    from ._registry import Subscription

__all__ = ["PublishVariants"]

_get_ident = threading.get_ident


class PublishVariants:
    """Every publish but the plain ``await publish()``, for ``EventRuntime``."""

    buffer: int
    strict: bool
    max_payload_bytes: int
    _state: str
    _thread: int
    _portal: anyio.from_thread.BlockingPortal
    _tasks: anyio.abc.TaskGroup
    _middleware: MiddlewareStack
    _idempotency: IdempotencyWindow
    _first_publishes: dict[str, anyio.Event]
    _published: int
    _repeated: int
    _unjournaled: int

    if TYPE_CHECKING:  # provided by the other classes EventRuntime is made of; declared
        # here only for the type checker, so they can never shadow the real ones
        async def publish(
            self,
            name: str,
            /,
            *,
            payload: Mapping[str, Any] | None = None,
            metadata: Mapping[str, str] | None = None,
            key: str | None = None,
            idempotency_key: str | None = None,
        ) -> Event: ...
        def _accept(
            self,
            name: str,
            payload: Mapping[str, Any] | None,
            metadata: Mapping[str, str] | None,
            parent: Item | None,
            key: str | None = None,
        ) -> Event: ...
        async def _accept_deferred(
            self, name: str, deferred: _Deferred, parent: Item | None
        ) -> Event: ...
        def _not_accepting(self, name: str) -> AeventsError: ...
        def _wrong_thread(self, name: str, call: str) -> AeventsError: ...
        async def _append_then_enqueue(
            self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch
        ) -> None: ...

    async def _publish_once(
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
        try:
            tagged = _tagged(metadata, idempotency_key)
            if self._middleware.publish:
                event = await self._publish_with_middleware(name, payload, tagged, key)
            else:
                parent = delivery_var.get()
                try:
                    event = self._accept(name, payload, tagged, parent, key)
                except _Deferred as deferred:
                    event = await self._accept_deferred(name, deferred, parent)
            self._idempotency.add(idempotency_key, event)
            return event
        finally:
            del self._first_publishes[idempotency_key]
            done.set()

    async def _publish_with_middleware(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
    ) -> Event:
        parent = delivery_var.get()
        with PublishHooks(self._middleware.publish, name, payload, metadata, key) as publishing:
            try:
                event = self._accept_publishing(publishing, parent)
            except _Deferred as deferred:
                event = await self._accept_deferred(publishing.name, deferred, parent)
            publishing.event = event
        return event

    def _accept_publishing(self, publishing: Publishing, parent: Item | None) -> Event:
        """``_accept`` what the publish hooks left of a publish (they may change it)."""
        return self._accept(
            publishing.name,
            publishing.payload,
            publishing.metadata or None,
            parent,
            publishing.key,
        )

    def _validated(
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
        if self.strict and not is_declared(name):
            raise UnknownEventError(name)
        body = encode_payload(name, payload, self.max_payload_bytes)
        if metadata is not None and _claims_key(metadata):
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

    def publish_nowait(
        self,
        name: str,
        /,
        *,
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """Like ``publish`` but never waits: raises ``QueueFullError`` when full.

        For sync code running on the event loop's thread. With a store the
        event is journaled in the background before it is delivered, so it is
        not yet durable when this returns: a crash in that window loses it (its
        ``idempotency_key`` too). Use ``await publish()`` where that matters.

        Args:
            name: The event name (positional only).
            payload: A JSON-serialisable mapping, as for ``publish``.
            metadata: String entries carried with the event, as for ``publish``.
            key: The ordering key, as for ``publish``.
            idempotency_key: As for ``publish``: a repeat returns the first event.

        Returns:
            The accepted event.

        Raises:
            QueueFullError: The buffer has no room for the event's deliveries.
            KeyInFlightError: A repeat of an ``idempotency_key`` whose first
                publish still waits for room (a ``QueueFullError``).
            WrongThreadError: Called from a thread other than the event loop's:
                use ``publish_threadsafe()`` there.
            InvalidEventNameError: As for ``publish``.
            UnknownEventError: As for ``publish``.
            PayloadError: As for ``publish``.
            RuntimeNotRunningError: The runtime has not started.
            RuntimeClosedError: The runtime is shutting down or has stopped.
        """
        if _get_ident() != self._thread:
            raise self._wrong_thread(name, "publish_nowait")
        if idempotency_key is not None or (metadata is not None and _claims_key(metadata)):
            return self._publish_once_nowait(name, payload, metadata, key, idempotency_key)
        return self._publish_nowait(name, payload, metadata, key)

    def _publish_nowait(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
    ) -> Event:
        if self._middleware.publish:
            return self._publish_nowait_with_middleware(name, payload, metadata, key)
        try:
            return self._accept(name, payload, metadata, delivery_var.get(), key)
        except _Deferred as deferred:
            return self._accept_nowait_deferred(name, deferred)

    def _publish_once_nowait(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
    ) -> Event:
        """``publish_nowait`` with an idempotency key (see ``_publish_once``)."""
        idempotency_key = _checked_key(name, idempotency_key, "publish_nowait")
        first = self._repeat_of(idempotency_key)
        if first is not None:
            return first
        if idempotency_key in self._first_publishes:
            raise KeyInFlightError(name, self.buffer, idempotency_key)
        event = self._publish_nowait(name, payload, _tagged(metadata, idempotency_key), key)
        self._idempotency.add(idempotency_key, event)
        return event

    def _repeat_of(self, idempotency_key: str) -> Event | None:
        """The event published with ``idempotency_key`` within the window, counted as
        repeated; None if there is none."""
        first = self._idempotency.get(idempotency_key, datetime.now(UTC))
        if first is not None:
            self._repeated += 1
        return first

    def _accept_nowait_deferred(self, name: str, deferred: _Deferred) -> Event:
        """``publish_nowait`` when ``publish`` would wait: refuse, or journal in the background."""
        if not deferred.reserved:
            raise QueueFullError(name, self.buffer) from None
        self._published += 1
        self._unjournaled += len(deferred.routes)
        deferred.epoch.unfinished += 1  # drain() waits for the background write too
        self._tasks.start_soon(
            self._append_then_enqueue, deferred.event, deferred.routes, deferred.epoch
        )
        return deferred.event

    def _publish_nowait_with_middleware(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
    ) -> Event:
        parent = delivery_var.get()
        with PublishHooks(self._middleware.publish, name, payload, metadata, key) as publishing:
            try:
                event = self._accept_publishing(publishing, parent)
            except _Deferred as deferred:
                event = self._accept_nowait_deferred(publishing.name, deferred)
            publishing.event = event
        return event

    def publish_threadsafe(
        self,
        name: str,
        /,
        *,
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        """Publish from a thread that is not the event loop's; blocks until accepted.

        For sync views, ORM signal handlers and sync receivers on worker
        threads. It waits for room, and with a store until the event is
        journaled, as ``await publish()`` does on the loop.

        Args:
            name: The event name (positional only).
            payload: A JSON-serialisable mapping, as for ``publish``.
            metadata: String entries carried with the event, as for ``publish``.
            key: The ordering key, as for ``publish``.
            idempotency_key: As for ``publish``: a repeat returns the first event.

        Returns:
            The accepted event.

        Raises:
            WrongThreadError: Called on the event loop's own thread, where it
                would block the loop: use ``await publish()`` or ``publish_nowait()``.
            InvalidEventNameError: As for ``publish``.
            UnknownEventError: As for ``publish``.
            PayloadError: As for ``publish``.
            RuntimeClosedError: The runtime is shutting down or has stopped.
            StoreError: The journal could not record the event.
        """
        if self._state not in (_RUNNING, _DRAINING):
            raise self._not_accepting(name)
        if _get_ident() == self._thread:
            raise WrongThreadError(name, "publish_threadsafe")
        parent = delivery_var.get()  # worker threads inherit the receiver's context
        try:
            event: Event = self._portal.call(
                self._publish_for_thread, name, payload, metadata, key, idempotency_key, parent
            )
        except RuntimeError as error:
            # The portal stopped between our check and the call.
            if self._state is _STOPPED:
                raise RuntimeClosedError(name) from error
            raise
        return event

    async def _publish_for_thread(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        key: str | None,
        idempotency_key: str | None,
        parent: Item | None,
    ) -> Event:
        token = delivery_var.set(parent)
        try:
            return await self.publish(
                name, payload=payload, metadata=metadata, key=key, idempotency_key=idempotency_key
            )
        finally:
            delivery_var.reset(token)


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
