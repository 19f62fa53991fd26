"""Intake: everything a publish does before it waits — check, build, admit, dispatch.

``Intake.accept`` is the hot path of ``publish``. It validates the name
(once per name, then cached with its routes), copies the payload through an
orjson round trip, builds the event, reserves room in the buffer for all of
its deliveries at once and dispatches them. When it cannot finish without
waiting (no room, or a journal write first) it returns a ``Waiting`` record
instead, and the caller does the waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any, NamedTuple

import orjson

from . import _catalog
from ._buffer import DeliveryBuffer
from ._delivery import Delivery, Queued
from ._event import NO_METADATA, Event, make_event
from ._exceptions import (
    AeventsError,
    CausationDepthError,
    PayloadError,
    RuntimeClosedError,
    RuntimeNotRunningError,
    UnknownEventError,
    WrongThreadError,
)
from ._idempotency import IDEMPOTENCY_KEY
from ._lanes import MAX_KEY_CHARS, Lanes, bad_key
from ._names import validate_name
from ._payload import encode_metadata, encode_payload, payload_json
from ._registry import Registry, Subscription
from ._state import DRAINING, NEW, RUNNING, Counters, Epoch, Epochs, RunState

__all__ = ["Batch", "Dispatch", "Intake", "Waiting"]

_dumps, _loads = orjson.dumps, orjson.loads
_new = tuple.__new__
_FIRST, _NEW = repeat(1), repeat(False)  # a first attempt's fields, for any number of tuples

Dispatch = Callable[[Event, tuple[Subscription, ...], Epoch], None]
"""Hands an accepted event's deliveries, their room reserved, to whoever runs them."""


class Waiting(NamedTuple):
    """An accepted-in-principle publish that must wait before it is accepted.

    ``reserved``: its room in the buffer is taken, and only the journal write
    is left; otherwise it waits for room first.
    """

    event: Event
    routes: tuple[Subscription, ...]
    epoch: Epoch
    reserved: bool


_CHUNK = 256  # payloads copied by one orjson call each way


def _round_trip_all(
    name: str,
    names: Sequence[str] | None,
    payloads: Sequence[Mapping[str, Any] | None],
    max_bytes: int,
) -> list[Any]:
    """The orjson round trip of every payload of a batch: one call each way per chunk.

    A chunk of plain dicts whose JSON is clean (no error, no ``null``, within
    ``max_bytes`` in all, so each one is too) is copied whole; any other goes
    payload by payload through the single publish's checks, which name the
    culprit (``payloads[3]['user']``). ``names``: each event's name, if they differ.
    """
    bodies: list[Any] = []
    for start in range(0, len(payloads), _CHUNK):
        chunk = payloads if len(payloads) <= _CHUNK else payloads[start : start + _CHUNK]
        data = None
        for payload in chunk:
            if type(payload) is not dict:
                break
        else:
            try:
                data = _dumps(chunk)
            except (TypeError, orjson.JSONEncodeError):
                data = None
            if data is not None and (len(data) > max_bytes or data.find(b"null") != -1):
                data = None
        if data is not None:
            bodies += _loads(data)
            continue
        for index, payload in enumerate(chunk, start):
            bodies.append(
                _copied(name if names is None else names[index], index, payload, max_bytes)
            )
    return bodies


def _copied(name: str, index: int, payload: Mapping[str, Any] | None, max_bytes: int) -> Any:
    """One payload of a batch through the single publish's copy and checks; an error
    names its index in the batch (``payloads[3]['user']['id']``)."""
    if payload is None:
        return {}
    try:
        return encode_payload(name, payload, max_bytes)
    except PayloadError as error:
        raise PayloadError(
            name, f"payloads[{index}]{error.path[len('payload') :]}", error.problem
        ) from None


class Batch(NamedTuple):
    """The events of one ``publish_many``, built and checked, not yet admitted.

    ``routes[i]`` are the receivers of ``events[i]``; ``deliveries`` is the number
    of deliveries they make together, the room the batch needs in the buffer.
    """

    events: list[Event]
    routes: list[tuple[Subscription, ...]]
    epoch: Epoch
    deliveries: int
    keyed: bool
    """Some event of the batch has an ordering key."""
    shared: tuple[Subscription, ...] | None = None
    """The receivers of every event, when they all have the same (one name)."""


class Intake:
    """Checks and admits publishes for one runtime (``owner``), and dispatches them."""

    def __init__(
        self,
        owner: object,
        *,
        run: RunState,
        registry: Registry,
        buffer: DeliveryBuffer,
        lanes: Lanes,
        epochs: Epochs,
        counters: Counters,
        durable: bool,
        strict: bool,
        max_payload_bytes: int,
        max_causation_depth: int,
        on_storm: Callable[[str, str], None],
    ) -> None:
        self._owner = owner
        self._run = run
        self._registry = registry
        self._buffer = buffer
        self._lanes = lanes
        self._epochs = epochs
        self._counters = counters
        self._durable = durable
        self._strict = strict
        self._max_payload_bytes = max_payload_bytes
        self._max_causation_depth = max_causation_depth
        self._on_storm = on_storm
        self._routes = registry.route_cache()
        self.dispatch: Dispatch = self.enqueue
        """Where accepted deliveries go: ``enqueue``, unless replaced by ``use_dispatch``."""

    def use_dispatch(self, dispatch: Dispatch) -> None:
        """Send accepted deliveries to ``dispatch`` instead of the buffer (eager delivery)."""
        self.dispatch = dispatch

    def accept(
        self,
        name: str,
        payload: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        parent: Delivery | None,
        key: str | None = None,
    ) -> Event | Waiting:
        """The whole of publishing but the waits: validate, build the event, admit, dispatch.

        Raises on bad input having admitted nothing. Returns the accepted
        event, or a ``Waiting`` when it has to wait for room or for the journal.
        """
        state = self._run.state
        if state is not RUNNING and not (
            state is DRAINING and parent is not None and parent.epoch.owner is self._owner
        ):
            raise self.not_accepting(name)
        routes = self._routes.get(name)
        if routes is None:
            routes = self._route(name)
        if payload is None:
            body: Any = {}
        elif type(payload) is dict:
            # encode_payload inlined for its common case; payload_json has the slow checks.
            try:
                data = _dumps(payload)
            except (TypeError, orjson.JSONEncodeError):
                data = payload_json(name, payload, self._max_payload_bytes)  # raises with the path
            if len(data) > self._max_payload_bytes or data.find(b"null") != -1:
                data = payload_json(name, payload, self._max_payload_bytes)
            body = _loads(data)
        else:
            body = encode_payload(name, payload, self._max_payload_bytes)
        if key is not None and (type(key) is not str or not 0 < len(key) <= MAX_KEY_CHARS):
            raise bad_key(name, key)
        if parent is None:
            meta = NO_METADATA if metadata is None else encode_metadata(name, metadata)
            event = make_event(name, body, meta, key)
            epoch = self._epochs.current
        else:
            event = make_event(name, body, self._child_metadata(name, metadata, parent), key)
            epoch = parent.epoch if parent.epoch.owner is self._owner else self._epochs.current
        count = len(routes)
        if not count:
            if self._durable and metadata is not None and IDEMPOTENCY_KEY in metadata:
                # No receiver, but its idempotency key must still reach the journal.
                return _new(Waiting, (event, routes, epoch, True))
            self._counters.published += 1
            self._counters.unrouted += 1
            return event
        if not self._buffer.try_reserve(count):
            return _new(Waiting, (event, routes, epoch, False))
        if self._durable:
            return _new(Waiting, (event, routes, epoch, True))
        self._counters.published += 1
        self.dispatch(event, routes, epoch)
        return event

    def build_many(
        self,
        name: str,
        payloads: Sequence[Mapping[str, Any] | None],
        metadata: Mapping[str, str] | None,
        keys: Sequence[str | None],
        parent: Delivery | None,
        hooked: tuple[Sequence[str], Sequence[Mapping[str, str] | None]] | None = None,
    ) -> Batch:
        """Check and build every event of a batch (``publish_many`` of ``name``); admit none.

        ``payloads`` and ``keys`` have one entry per event. ``hooked``: the
        names and metadata of each event, when publish hooks may have changed
        them, instead of ``name`` and ``metadata`` for all. Raises on the first
        bad entry, naming its index in the batch (``payloads[3]['user']``,
        ``keys[3]``), having admitted nothing. Taking room in the buffer and
        dispatching are the caller's: ``accept`` stays the single publish's
        hot path, untouched.
        """
        state = self._run.state
        if state is not RUNNING and not (
            state is DRAINING and parent is not None and parent.epoch.owner is self._owner
        ):
            raise self.not_accepting(name)
        if parent is not None and parent.epoch.owner is self._owner:
            epoch = parent.epoch
        else:
            epoch = self._epochs.current
        max_bytes = self._max_payload_bytes
        bodies = _round_trip_all(name, None if hooked is None else hooked[0], payloads, max_bytes)
        keyed = False
        for index, key in enumerate(keys):
            if key is not None:
                keyed = True
                if type(key) is not str or not 0 < len(key) <= MAX_KEY_CHARS:
                    problem = bad_key(name, key).problem
                    raise PayloadError(name, f"keys[{index}]", problem)
        if hooked is not None and payloads:
            return self._build_each(hooked[0], bodies, hooked[1], keys, parent, epoch, keyed)
        routes = self._routes.get(name)
        if routes is None:
            routes = self._route(name)
        if parent is not None:
            meta: Mapping[str, str] = self._child_metadata(name, metadata, parent)
        elif metadata is not None:
            meta = encode_metadata(name, metadata)
        else:
            meta = NO_METADATA
        if meta is NO_METADATA:
            events = [
                make_event(name, body, meta, key) for body, key in zip(bodies, keys, strict=True)
            ]
        else:  # each event its own copy, as publish gives
            events = [
                make_event(name, body, dict(meta), key)
                for body, key in zip(bodies, keys, strict=True)
            ]
        count = len(events)
        return Batch(events, [routes] * count, epoch, len(routes) * count, keyed, routes)

    def _build_each(
        self,
        names: Sequence[str],
        bodies: list[Any],
        metadatas: Sequence[Mapping[str, str] | None],
        keys: Sequence[str | None],
        parent: Delivery | None,
        epoch: Epoch,
        keyed: bool,
    ) -> Batch:
        """``build_many`` for a batch whose events may differ in name and metadata."""
        events: list[Event] = []
        routes_of: list[tuple[Subscription, ...]] = []
        count = 0
        for index, name in enumerate(names):
            routes = self._routes.get(name)
            if routes is None:
                routes = self._route(name)
            metadata = metadatas[index]
            if parent is not None:
                meta: Mapping[str, str] = self._child_metadata(name, metadata, parent)
            elif metadata is not None:
                meta = encode_metadata(name, metadata)
            else:
                meta = NO_METADATA
            events.append(make_event(name, bodies[index], meta, keys[index]))
            routes_of.append(routes)
            count += len(routes)
        return Batch(events, routes_of, epoch, count, keyed)

    def dispatch_many(self, batch: Batch) -> None:
        """Hand over the deliveries of an admitted batch, in order (see ``dispatch``).

        A batch without ordering keys going to the buffer takes one epoch
        update and one ``put_many``; otherwise each event goes to ``dispatch``.
        """
        events, routes, epoch, deliveries, keyed, shared = batch
        if not keyed and self.dispatch == self.enqueue:
            epoch.unfinished += deliveries
            # Plain tuples: a first attempt is queued as one (see Queued).
            if shared is not None and len(shared) == 1:  # made by zip, in C
                self._buffer.put_many(zip(events, repeat(shared[0]), _FIRST, repeat(epoch), _NEW))
                return
            queued: list[Queued] = [
                (event, subscription, 1, epoch, False)
                for index, event in enumerate(events)
                for subscription in routes[index]
            ]
            self._buffer.put_many(queued)
            return
        dispatch = self.dispatch
        for index, event in enumerate(events):
            receivers = routes[index]
            if receivers:
                dispatch(event, receivers, epoch)

    def enqueue(self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch) -> None:
        """Queue first attempts of deliveries whose room is already reserved."""
        epoch.unfinished += len(routes)
        if event.key is not None:
            admit = self._lanes.admit
            for subscription in routes:
                admit(_new(Delivery, (event, subscription, 1, epoch, False)))
            return
        # Plain tuples: a first attempt is queued as one (see Queued).
        if len(routes) == 1:
            self._buffer.put((event, routes[0], 1, epoch, False))
        else:  # fan-out: one call for all of them, the tuples made by zip, in C
            self._buffer.put_many(zip(repeat(event), routes, _FIRST, repeat(epoch), _NEW))

    def _route(self, name: str) -> tuple[Subscription, ...]:
        validate_name(name)
        if self._strict and not _catalog.is_declared(name):
            raise UnknownEventError(name)
        version = self._registry.version
        routes = self._registry.route(name)
        if len(self._routes) >= 10_000:
            self._routes.clear()
        if version == self._registry.version:  # not if another thread subscribed meanwhile
            self._routes[name] = routes
        return routes

    def _child_metadata(
        self, name: str, metadata: Mapping[str, str] | None, parent: Delivery
    ) -> dict[str, str]:
        parent_event = parent.event
        depth = int(parent_event.metadata.get("causation_depth", "0")) + 1
        if depth > self._max_causation_depth:
            self._on_storm(parent_event.id, parent.subscription.receiver_id)
            raise CausationDepthError(name, depth, self._max_causation_depth)
        child = {} if metadata is None else encode_metadata(name, metadata)
        child["causation_id"] = parent_event.id
        child["correlation_id"] = parent_event.metadata.get("correlation_id", parent_event.id)
        child["causation_depth"] = str(depth)
        return child

    def in_delivery(self, parent: Delivery | None) -> bool:
        """Whether ``parent`` is a delivery of this runtime (a receiver publishing)."""
        return parent is not None and parent.epoch.owner is self._owner

    def not_accepting(self, name: str) -> AeventsError:
        """The error of a publish the runtime cannot take in its state."""
        if self._run.state is NEW:
            return RuntimeNotRunningError(
                name,
                "enter this runtime first: `async with runtime:` around the code that publishes",
            )
        return RuntimeClosedError(name)

    def wrong_thread(self, name: str, call: str) -> AeventsError:
        """The error of a ``publish`` or ``publish_nowait`` made off the loop's thread."""
        if not self._run.accepting:
            return self.not_accepting(name)
        return WrongThreadError(name, call)
