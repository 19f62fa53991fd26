"""Routes here against the fleet's: who would receive an event that this process leaves out.

Receivers are chosen when an event is published, from the publishing
process's own subscriptions. A process that never imported the module that
subscribes a receiver publishes events that the receiver never gets, and the
store cannot tell. What the store does know is each live consumer's routes
(``Consumer.routes``), so a process can compare its own routes with them:

- ``left_out(name, routed_here, consumers)``: for one event name, the receiver
  ids some live consumer routes it to and this process does not, with which
  consumers and through which patterns.
- ``compare_routes(registry, consumers)``: the same for a whole registry,
  route by route (a pattern and a receiver id), and the other way round too:
  routes of this process that no live consumer runs, whose deliveries wait in
  the store until one does.

Both are pure functions of what they are given. ``RouteCheck`` is the
runtime's use of them: it keeps a snapshot of the live consumers (refreshed
with the heartbeat, never read from the store on a publish), checks each name
published against it, and logs a warning once per (name, receivers left out),
at most one a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs

from ._delivery import Delivery
from ._names import compile_pattern
from ._registry import Registry
from ._store._protocol import Consumer, ConsumerId, Route
from ._text import counted

__all__ = [
    "FleetRoutes",
    "LeftOut",
    "RouteCheck",
    "RouteDifference",
    "compare_routes",
    "fleet_routes",
    "left_out",
]

logger = logging.getLogger("aevents.fleet")

WARN_EVERY: Final = 1.0
"""Seconds at least between two warnings about a published name; a warning held back
by this is logged at a later publish of its name."""
MAX_NAMES: Final = 10_000
"""Names whose check is cached; the cache starts over past this many."""


@attrs.frozen(slots=True)
class LeftOut:
    """A receiver that live consumers route an event name to and this process does not."""

    receiver_id: str
    patterns: tuple[str, ...]
    """The patterns those consumers subscribed it with, sorted."""
    consumers: tuple[ConsumerId, ...]
    """The live consumers that route it, in the order they registered."""


@attrs.frozen(slots=True)
class RouteDifference:
    """A route (a pattern and the receiver id it delivers to) on one side only."""

    pattern: str
    receiver_id: str
    consumers: tuple[ConsumerId, ...] = ()
    """The live consumers that run it (none for a route that only this process has)."""


@attrs.frozen(slots=True)
class FleetRoutes:
    """How this process's routes compare with those of the live consumers.

    - ``missing_here``: routes live consumers run that this process does not
      have: the events they match, published here, do not reach that receiver.
    - ``unconsumed``: routes of this process that no live consumer runs: their
      deliveries wait in the store until a consumer that runs them starts.
    """

    consumers: int
    """How many live consumers were compared."""
    missing_here: tuple[RouteDifference, ...]
    unconsumed: tuple[RouteDifference, ...]

    @property
    def agree(self) -> bool:
        """True when no route is on one side only."""
        return not self.missing_here and not self.unconsumed

    def summary(self) -> str:
        """One line for a log: what differs, or that nothing does."""
        compared = counted(self.consumers, "live consumer")
        if not self.consumers and not self.unconsumed:
            return "no live consumer to compare routes with"
        if self.agree:
            return f"this process routes as they do ({compared})"
        parts = []
        if self.missing_here:
            routes = "; ".join(_route_text(each) for each in self.missing_here)
            parts.append(
                f"{counted(len(self.missing_here), 'route')} of the live consumers "
                f"({compared}) not subscribed here, so events published here do not "
                f"reach them: {routes}"
            )
        if self.unconsumed:
            routes = "; ".join(_route_text(each) for each in self.unconsumed)
            parts.append(
                f"{counted(len(self.unconsumed), 'route')} here that no live consumer runs, "
                f"so their deliveries wait in the store: {routes}"
            )
        return ". ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready structure with stable keys."""
        return {
            "consumers": self.consumers,
            "missing_here": [_difference_dict(each) for each in self.missing_here],
            "unconsumed": [_difference_dict(each) for each in self.unconsumed],
            "agree": self.agree,
        }


def _route_text(difference: RouteDifference) -> str:
    text = f"{difference.pattern} -> {difference.receiver_id}"
    if difference.consumers:
        text += " (" + ", ".join(str(each) for each in difference.consumers) + ")"
    return text


def _difference_dict(difference: RouteDifference) -> dict[str, Any]:
    return {
        "pattern": difference.pattern,
        "receiver_id": difference.receiver_id,
        "consumers": [str(each) for each in difference.consumers],
    }


def fleet_routes(registry: Registry) -> list[Route]:
    """The routes of ``registry`` that go through a shared store (``scope="fleet"``)."""
    return [
        Route(subscription.pattern, subscription.receiver_id)
        for subscription in registry.subscriptions()
        if subscription.scope == "fleet"
    ]


def left_out(
    name: str, routed_here: Collection[str], consumers: Iterable[Consumer]
) -> tuple[LeftOut, ...]:
    """The receivers live ``consumers`` route ``name`` to that are not in ``routed_here``.

    ``routed_here`` holds the receiver ids this process's fleet subscriptions
    route ``name`` to. Sorted by receiver id.
    """
    found: dict[str, tuple[set[str], list[ConsumerId]]] = {}
    for consumer in consumers:
        for route in consumer.routes:
            if route.receiver_id in routed_here or not compile_pattern(route.pattern)(name):
                continue
            patterns, holders = found.setdefault(route.receiver_id, (set(), []))
            patterns.add(route.pattern)
            if consumer.id not in holders:
                holders.append(consumer.id)
    return tuple(
        LeftOut(receiver_id, tuple(sorted(patterns)), tuple(holders))
        for receiver_id, (patterns, holders) in sorted(found.items())
    )


def compare_routes(registry: Registry, consumers: Sequence[Consumer]) -> FleetRoutes:
    """Compare the fleet routes of ``registry`` with those of the live ``consumers``."""
    here = set(fleet_routes(registry))
    theirs: dict[Route, list[ConsumerId]] = {}
    for consumer in consumers:
        for route in consumer.routes:
            holders = theirs.setdefault(route, [])
            if consumer.id not in holders:
                holders.append(consumer.id)
    missing = [
        RouteDifference(route.pattern, route.receiver_id, tuple(holders))
        for route, holders in theirs.items()
        if route not in here
    ]
    unconsumed = [
        RouteDifference(route.pattern, route.receiver_id) for route in here if route not in theirs
    ]

    def order(difference: RouteDifference) -> tuple[str, str]:
        return difference.receiver_id, difference.pattern

    return FleetRoutes(
        len(consumers), tuple(sorted(missing, key=order)), tuple(sorted(unconsumed, key=order))
    )


Accept = TypeVar("Accept", bound=Callable[..., Any])

_AGREES: Final[tuple[LeftOut, ...]] = ()
"""What ``RouteCheck`` caches for a name no live consumer routes elsewhere."""


class RouteCheck:
    """A publishing runtime's check of its routes against a snapshot of the live consumers."""

    def __init__(self, registry: Registry, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._clock = clock
        self._consumers: tuple[Consumer, ...] = ()
        self._left_out: dict[str, tuple[LeftOut, ...]] = {}  # by name, for this snapshot
        self._version = registry.version
        self._warned: set[tuple[str, frozenset[str]]] = set()
        self._last_warning = -WARN_EVERY
        self.warnings = 0
        """Warnings logged so far (one per name and set of receivers left out)."""

    def refresh(self, consumers: Sequence[Consumer]) -> None:
        """Take a new snapshot of the live consumers (read with the heartbeat)."""
        self._consumers = tuple(consumers)
        self._left_out.clear()  # in place: ``watch`` holds its ``get``
        self._version = self._registry.version

    def summary(self, consumers: Sequence[Consumer]) -> FleetRoutes:
        """Log how this process's routes compare with those of ``consumers``."""
        routes = compare_routes(self._registry, consumers)
        extra: Mapping[str, object] = {"fleet_routes": routes.to_dict()}
        if routes.missing_here:
            logger.warning("routes: %s", routes.summary(), extra=extra)
        else:
            logger.info("routes: %s", routes.summary(), extra=extra)
        return routes

    def watch(self, accept: Accept) -> Accept:
        """``accept`` followed by the check of the name it accepted (publish's first step)."""
        known = self._left_out.get
        check = self.check

        def accept_and_check(
            name: str,
            payload: Any,
            metadata: Any,
            parent: Delivery | None,
            key: str | None = None,
        ) -> Any:
            accepted = accept(name, payload, metadata, parent, key)
            if known(name) is not _AGREES:  # not checked yet, or receivers left out
                check(name)
            return accepted

        return accept_and_check  # type: ignore[return-value]

    def check(self, name: str) -> tuple[LeftOut, ...]:
        """What live consumers route ``name`` to that this process does not; warn about it."""
        if self._version != self._registry.version:
            self._left_out.clear()
            self._version = self._registry.version
        missing = self._left_out.get(name)
        if missing is None:
            here = {s.receiver_id for s in self._registry.route(name) if s.scope == "fleet"}
            missing = left_out(name, here, self._consumers) or _AGREES
            if len(self._left_out) >= MAX_NAMES:
                self._left_out.clear()
            self._left_out[name] = missing
        if missing:
            self._warn(name, missing)
        return missing

    def _warn(self, name: str, missing: tuple[LeftOut, ...]) -> None:
        receivers = frozenset(each.receiver_id for each in missing)
        if (name, receivers) in self._warned:
            return
        now = self._clock()
        if now - self._last_warning < WARN_EVERY:
            return  # held back: a later publish of the name logs it
        self._last_warning = now
        self._warned.add((name, receivers))
        self.warnings += 1
        logger.warning(
            "event %r is published here without the %s that live consumers route it to: "
            "%s; events published here do not reach them: import the modules that "
            "subscribe them in this process (during a rolling deploy, processes disagree "
            "until they all run the same code)",
            name,
            "receiver" if len(missing) == 1 else "receivers",
            "; ".join(
                f"{each.receiver_id} via {', '.join(each.patterns)} on "
                + ", ".join(str(consumer) for consumer in each.consumers)
                for each in missing
            ),
            extra={
                "event_name": name,
                "receiver_ids": sorted(receivers),
                "consumers": sorted({str(c) for each in missing for c in each.consumers}),
            },
        )
