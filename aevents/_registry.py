"""Receivers, their ids, and routing a name to the receivers that match it.

References to receivers are strong. blinker and Django signals hold weak
references by default, so a receiver defined in a local scope or as a lambda
silently disappears when the garbage collector runs; here a receiver stays
subscribed until it is unsubscribed, which is what an event runtime that
promises delivery has to do.
"""

from __future__ import annotations

import enum
import functools
import inspect
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, TypeVar, overload

import attrs

from ._event import Event
from ._exceptions import ConfigurationError, DuplicateReceiverError
from ._names import compile_pattern, first_segment, is_pattern, validate_pattern
from ._policy import RetryPolicy

__all__ = [
    "SCOPES",
    "Receiver",
    "Registry",
    "Scope",
    "Subscription",
    "default_registry",
    "receiver_id_of",
]

Receiver = Callable[[Event], Any]
Scope = Literal["fleet", "process"]
"""Who runs a receiver when processes share a store: one of them per event, or every one."""
SCOPES: Final = ("fleet", "process")
R = TypeVar("R", bound=Callable[..., Any])


class _Missing(enum.Enum):
    """The type of ``MISSING``: ``subscribe`` was called without a receiver."""

    MISSING = enum.auto()


MISSING: Final = _Missing.MISSING
"""No receiver given: ``subscribe(pattern)`` is used as a decorator. Not ``None``,
so that ``subscribe(pattern, receiver=None)`` (a variable that was never set) raises."""


def _check_one_argument(pattern: str, receiver: Receiver, receiver_id: str) -> None:
    """Refuse a receiver that cannot be called with the event as its one positional argument."""
    try:
        signature = inspect.signature(receiver)
    except (TypeError, ValueError):  # no signature to check (some builtins, C callables)
        return
    try:
        signature.bind(None)
    except TypeError as error:
        raise ConfigurationError(
            f"subscribe({pattern!r}, id={receiver_id!r})",
            f"the receiver must accept the event as one positional argument, "
            f"but its signature is {signature} ({error})",
        ) from None


MAX_ROUTE_CACHE = 10_000
"""Distinct names whose routes are cached; past this the cache starts over."""


class RouteCache(dict[str, tuple["Subscription", ...]]):
    """A runtime's name -> subscriptions cache; its registry empties it on every change."""


@attrs.frozen(slots=True, eq=False)
class Subscription:
    """One receiver subscribed to one pattern, with its delivery policy."""

    pattern: str
    receiver: Receiver
    receiver_id: str
    is_async: bool
    inline: bool = False
    retry: RetryPolicy | None = None
    timeout: float | None = None
    scope: Scope = "fleet"
    """``"process"``: run in the publishing process from memory, never through a store."""
    fast: bool = attrs.field(init=False)
    """True for an async receiver without a timeout of its own: the worker calls it directly."""
    threaded: bool = attrs.field(init=False)
    """True for a sync receiver that runs on a thread (not ``inline``)."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "fast", self.is_async and self.timeout is None)
        object.__setattr__(self, "threaded", not self.is_async and not self.inline)


def receiver_id_of(receiver: Callable[..., Any]) -> str:
    """The default receiver id, ``"module:qualname"`` (bound methods and partials unwrapped)."""
    target: Any = receiver
    while isinstance(target, functools.partial):
        target = target.func
    target = getattr(target, "__func__", target)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if module is None or qualname is None:
        module, qualname = type(target).__module__, type(target).__qualname__
    return f"{module}:{qualname}"


def _is_async(receiver: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(receiver):
        return True
    call = getattr(type(receiver), "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)


class Registry:
    """Subscriptions by pattern, and a per-name route cache.

    Routing a name looks up exact subscriptions in a dict and runs the
    wildcard patterns once; the result is cached per name until the
    subscriptions change. Safe to subscribe from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._exact: dict[str, list[Subscription]] = {}
        # Wildcard patterns by their first segment when it is literal ("user:*" under
        # "user"), the rest (leading "*" or "**") apart: a name is only matched
        # against the patterns that can match it.
        self._wildcards: dict[str, list[tuple[Callable[[str], bool], Subscription]]] = {}
        self._keys: dict[tuple[str, str], Subscription] = {}  # (pattern, receiver id)
        self._order: dict[Subscription, int] = {}  # subscription -> when it was made (by identity)
        self._counter = itertools.count()
        self._by_id: dict[str, Receiver] = {}
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._caches: list[weakref.ref[RouteCache]] = []
        self._version = 0

    @overload
    def subscribe(
        self,
        pattern: str,
        *,
        id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        scope: Scope = "fleet",
    ) -> Callable[[R], R]: ...

    @overload
    def subscribe(
        self,
        pattern: str,
        receiver: R,
        *,
        id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        scope: Scope = "fleet",
    ) -> R: ...

    def subscribe(
        self,
        pattern: str,
        receiver: R | _Missing = MISSING,
        *,
        id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        inline: bool = False,
        scope: Scope = "fleet",
    ) -> R | Callable[[R], R]:
        """Subscribe ``receiver`` to ``pattern``; with no receiver, return a decorator.

        Subscribing the same receiver under the same id twice is a no-op. The
        registry holds receivers strongly: a receiver defined in a function keeps
        receiving until it is unsubscribed.

        Args:
            pattern: An event name, or a pattern where ``*`` matches one segment
                and ``**`` zero or more (``"user:*:created"``, ``"user:**"``).
            receiver: An async function, or a sync one (run on a worker thread),
                taking the ``Event`` as its one positional argument. Leave it
                out to get a decorator.
            id: The receiver's id, which a journal records. Default
                ``"module:qualname"`` of the receiver.
            retry: This receiver's ``RetryPolicy``. Default ``None``: the runtime's.
            timeout: Seconds one attempt may run. Default ``None``: the runtime's
                ``timeout``.
            inline: Run a cheap sync receiver on the event loop instead of a worker
                thread; it must not block. Default ``False``.
            scope: With a store that processes share, ``"fleet"`` (the default)
                runs each event once across every process that consumes from
                the store; ``"process"`` runs it in the process that published
                it, from memory, never through the store (a local cache, say).
                Without a store both run in memory; with a journal that one
                process owns (a third-party ``Store``) both are journaled.

        Returns:
            The receiver unchanged, or a decorator that subscribes the function it
                decorates and returns it unchanged.

        Raises:
            InvalidEventNameError: ``pattern`` is not a valid pattern.
            ConfigurationError: An option has a wrong type or value, ``receiver``
                is ``None``, or the receiver cannot be called with the event as
                its one positional argument (checked here, not at its first
                delivery). ``ConfigurationError`` is also a ``TypeError``.
            DuplicateReceiverError: Another callable already uses ``id``.
        """
        if receiver is MISSING:

            def decorate(function: R) -> R:
                self.subscribe(
                    pattern,
                    function,
                    id=id,
                    retry=retry,
                    timeout=timeout,
                    inline=inline,
                    scope=scope,
                )
                return function

            return decorate
        if receiver is None:
            raise ConfigurationError(
                f"subscribe({pattern!r})",
                "receiver is None; pass a callable, or leave the receiver out to use "
                f"@subscribe({pattern!r}) as a decorator",
            )
        self._add(pattern, receiver, id, retry, timeout, inline, scope)
        return receiver

    def _add(
        self,
        pattern: str,
        receiver: Receiver,
        receiver_id: str | None,
        retry: RetryPolicy | None,
        timeout: float | None,
        inline: bool,
        scope: Scope = "fleet",
    ) -> None:
        validate_pattern(pattern)
        if not callable(receiver):
            raise ConfigurationError(
                f"subscribe({pattern!r})",
                f"receiver must be callable, got {type(receiver).__name__}",
            )
        if receiver_id is None:
            receiver_id = receiver_id_of(receiver)
        elif not isinstance(receiver_id, str) or not receiver_id.strip():
            raise ConfigurationError(
                f"subscribe({pattern!r})", f"id must be a non-empty str, got {receiver_id!r}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(
                f"subscribe({pattern!r})", f"retry must be a RetryPolicy, got {retry!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise ConfigurationError(
                f"subscribe({pattern!r})", f"timeout must be > 0 seconds, got {timeout!r}"
            )
        if scope not in SCOPES:
            raise ConfigurationError(
                f"subscribe({pattern!r}, id={receiver_id!r})",
                f"scope must be 'fleet' or 'process', got {scope!r}",
            )
        _check_one_argument(pattern, receiver, receiver_id)
        is_async = _is_async(receiver)
        if inline and is_async:
            raise ConfigurationError(
                f"subscribe({pattern!r})",
                "inline=True is for sync receivers; async ones already run on the loop",
            )
        subscription = Subscription(
            pattern, receiver, receiver_id, is_async, inline, retry, timeout, scope
        )
        matcher = compile_pattern(pattern)
        with self._lock:
            existing = self._by_id.get(receiver_id)
            if existing is not None and existing != receiver:
                raise DuplicateReceiverError(receiver_id, pattern)
            if (pattern, receiver_id) in self._keys:
                return  # the same receiver, subscribed again: a no-op
            for other in self._subscriptions:
                if other.receiver_id == receiver_id and other.scope != scope:
                    raise ConfigurationError(
                        f"subscribe({pattern!r}, id={receiver_id!r})",
                        f"scope={scope!r}, but the receiver is already subscribed "
                        f"to {other.pattern!r} with scope={other.scope!r}; "
                        "a receiver id has one scope",
                    )
            self._by_id[receiver_id] = receiver
            self._subscriptions.append(subscription)
            self._keys[pattern, receiver_id] = subscription
            self._order[subscription] = next(self._counter)
            if is_pattern(pattern):
                self._wildcards.setdefault(_bucket(pattern), []).append((matcher, subscription))
            else:
                self._exact.setdefault(pattern, []).append(subscription)
            self._changed()

    def unsubscribe(
        self,
        pattern: str,
        receiver: Receiver | None = None,
        *,
        id: str | None = None,
    ) -> bool:
        """Remove the subscriptions of ``receiver`` (or of ``id``) to ``pattern``.

        Deliveries already queued still run.

        Args:
            pattern: The pattern as it was subscribed.
            receiver: The receiver to remove.
            id: Or its id, instead of the receiver.

        Returns:
            Whether anything was removed.

        Raises:
            ConfigurationError: Neither ``receiver`` nor ``id`` was given.
        """
        if receiver is None and id is None:
            raise ConfigurationError(f"unsubscribe({pattern!r})", "give the receiver or its id")
        with self._lock:
            removed = [
                subscription
                for subscription in self._subscriptions
                if subscription.pattern == pattern
                and (receiver is None or subscription.receiver == receiver)
                and (id is None or subscription.receiver_id == id)
            ]
            if not removed:
                return False
            for subscription in removed:
                self._subscriptions.remove(subscription)
                del self._keys[pattern, subscription.receiver_id]
                del self._order[subscription]
                if is_pattern(pattern):
                    bucket = _bucket(pattern)
                    left = [pair for pair in self._wildcards[bucket] if pair[1] is not subscription]
                    if left:
                        self._wildcards[bucket] = left
                    else:
                        del self._wildcards[bucket]
                else:
                    remaining = [s for s in self._exact[pattern] if s is not subscription]
                    if remaining:
                        self._exact[pattern] = remaining
                    else:
                        del self._exact[pattern]
            live = {subscription.receiver_id for subscription in self._subscriptions}
            for subscription in removed:
                if subscription.receiver_id not in live:
                    self._by_id.pop(subscription.receiver_id, None)
            self._changed()
            return True

    def _changed(self) -> None:
        self._version += 1
        self._routes.clear()
        live = []
        for reference in self._caches:
            cache = reference()
            if cache is not None:
                cache.clear()
                live.append(reference)
        self._caches = live

    def route_cache(self) -> RouteCache:
        """A name -> routes dict for a runtime's own use, emptied whenever subscriptions change.

        It lets the publish path look a name up with one dict access and no
        version check; the runtime fills it (through ``route``) on a miss.
        """
        cache = RouteCache()
        with self._lock:
            self._caches.append(weakref.ref(cache))
        return cache

    def route(self, name: str) -> tuple[Subscription, ...]:
        """The subscriptions a (valid) name is delivered to, one per receiver id, cached."""
        routes = self._routes.get(name)
        if routes is not None:
            return routes
        version = self._version
        found: dict[str, Subscription] = {}
        for subscription in self._exact.get(name, ()):
            found.setdefault(subscription.receiver_id, subscription)
        wildcards = self._wildcards
        for bucket in (first_segment(name), _ANY):
            for matches, subscription in wildcards.get(bucket, ()):
                if matches(name):
                    found.setdefault(subscription.receiver_id, subscription)
        # Keep subscription order, whichever index found it.
        order = self._order
        routes = tuple(sorted(found.values(), key=lambda s: order.get(s, 0)))
        with self._lock:
            if version == self._version:  # a concurrent subscribe would make this stale
                if len(self._routes) >= MAX_ROUTE_CACHE:
                    self._routes.clear()
                self._routes[name] = routes
        return routes

    def receiver(self, receiver_id: str, name: str | None = None) -> Subscription | None:
        """The subscription a receiver id's deliveries of ``name`` run under.

        This is how a journal's record or a dead letter is resolved. With
        ``name``, it is the subscription ``route(name)`` picks for that id (the
        exact pattern before a wildcard), so a replayed or redelivered delivery
        runs with the same retry policy and timeout as a live one. Without
        ``name``, or when none of the id's patterns matches ``name`` any more,
        it is the id's first subscription. ``None`` if the id is not subscribed.
        """
        if name is not None:
            for subscription in self.route(name):
                if subscription.receiver_id == receiver_id:
                    return subscription
        for subscription in self._subscriptions:
            if subscription.receiver_id == receiver_id:
                return subscription
        return None

    def subscriptions(self) -> list[Subscription]:
        """Every subscription, in the order they were made."""
        return list(self._subscriptions)

    def __iter__(self) -> Iterator[Subscription]:
        return iter(self.subscriptions())

    def __len__(self) -> int:
        return len(self._subscriptions)

    @property
    def version(self) -> int:
        """Bumped on every change; callers caching routes compare it."""
        return self._version

    def clear(self) -> None:
        """Remove every subscription (handy in tests)."""
        with self._lock:
            self._subscriptions.clear()
            self._exact.clear()
            self._wildcards.clear()
            self._keys.clear()
            self._order.clear()
            self._by_id.clear()
            self._changed()


_ANY = "*"  # the bucket of patterns whose first segment is a wildcard


def _bucket(pattern: str) -> str:
    first = first_segment(pattern)
    return _ANY if first in ("*", "**") else first


default_registry = Registry()
"""The registry that module-level ``subscribe`` and ``EventRuntime()`` use by default."""
