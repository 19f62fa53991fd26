"""Helpers for testing code that publishes and receives events (this module imports pytest).

* ``capture()`` records what is published: ``assert_published`` and ``assert_not_published``.
* ``EagerRuntime`` runs receivers inline, so ``await publish()`` returns once they all ran.
* ``isolated_registry()`` undoes whatever a test subscribes to ``aevents.default_registry``.
* ``assert_no_dead_letters()`` and ``assert_dead_lettered()`` drain a runtime, then check.
* ``Recorder`` and ``recording()``: a receiver that keeps what it receives.
* ``StoreConformance`` and ``PersistentStoreConformance``: the store protocol's test suite.

The pytest plugin (``aevents.pytest_plugin``, registered through the ``pytest11``
entry point) offers these as the ``aevents_registry``, ``aevents_runtime`` and
``aevents_capture`` fixtures, configured by ``@pytest.mark.aevents(...)``.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from ._delivery import DeliveryInfo, current_delivery
from ._eager import EagerRuntime
from ._event import Event
from ._exceptions import ConfigurationError
from ._middleware import Middleware, Publishing
from ._names import compile_pattern, validate_pattern
from ._policy import DeadLetter
from ._registry import Receiver, Registry, default_registry, receiver_id_of
from ._runtime import EventRuntime, current_runtime
from ._text import counted

pytest.register_assert_rewrite("aevents._conformance")  # before the import, so asserts explain
from ._conformance import PersistentStoreConformance, StoreConformance  # noqa: E402

__all__ = [
    "Captured",
    "EagerRuntime",
    "PersistentStoreConformance",
    "Recorder",
    "StoreConformance",
    "assert_dead_lettered",
    "assert_no_dead_letters",
    "capture",
    "isolated_registry",
    "recording",
    "subset",
]

_MAX_LISTED = 20  # events or letters an assertion message lists before "... and N more"


# ---------------------------------------------------------------------- the registry


@contextmanager
def isolated_registry(*, empty: bool = False) -> Iterator[Registry]:
    """Yield ``aevents.default_registry``; whatever changes it inside the block is undone after.

    Subscriptions made at import time stay (the application as wired); those a
    test adds go, and those it removes come back. Receivers subscribed while a
    module is first imported *inside* the block go too, and that module is not
    imported again: import your receivers' modules before the tests (from
    conftest.py).

    Args:
        empty: Start the block with no subscriptions at all. Default ``False``.

    Returns:
        A context manager yielding the default registry.
    """
    registry = default_registry
    saved = registry.subscriptions()
    if empty:
        registry.clear()
    try:
        yield registry
    finally:
        now = registry.subscriptions()
        kept = set(now)
        if all(subscription in kept for subscription in saved):
            added = set(now) - set(saved)  # Subscriptions compare by identity
            for subscription in added:
                registry.unsubscribe(subscription.pattern, id=subscription.receiver_id)
        else:  # something was removed: rebuild, keeping the original order
            registry.clear()
            for each in saved:
                registry.subscribe(
                    each.pattern,
                    each.receiver,
                    id=each.receiver_id,
                    retry=each.retry,
                    timeout=each.timeout,
                    inline=each.inline,
                )


# ---------------------------------------------------------------------- capture()


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET


class subset:  # lower case: it reads as a function, payload=subset({...})
    """Matches any mapping holding at least these keys with equal values.

    ``captured.assert_published("user:created", payload=subset({"user_id": 1}))``.
    """

    def __init__(self, expected: Mapping[str, Any]) -> None:
        self.expected = _normalise(dict(expected))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return all(key in other and other[key] == value for key, value in self.expected.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"subset({self.expected!r})"


def _normalise(value: Any) -> Any:
    """What ``value`` becomes after the orjson round trip every payload goes through.

    Values orjson cannot write (``unittest.mock.ANY``, ``subset``) are kept as
    they are, so they can take part in the comparison.
    """
    if isinstance(value, Mapping) and not isinstance(value, subset):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    try:
        return orjson.loads(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        return value


def _describe(event: Event, metadata: bool) -> str:
    text = f"{event.name} {dict(event.payload)!r}"
    if metadata:
        text += f" metadata={dict(event.metadata)!r}"
    return text if len(text) <= 300 else text[:299] + "…"


class Captured:
    """The events published through a runtime while ``capture()`` was active, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        """Every event accepted by publish, publish_nowait, publish_threadsafe or
        publish_many (each event of a batch), in order."""

    @property
    def names(self) -> list[str]:
        """The names of ``events``, in order."""
        return [event.name for event in self.events]

    def find(
        self,
        name: str,
        *,
        payload: Mapping[str, Any] | subset | _Unset = UNSET,
        metadata: Mapping[str, str] | None = None,
    ) -> list[Event]:
        """The captured events whose name matches ``name`` (a name or a pattern such as
        ``user:**``), whose payload equals ``payload`` if given, and whose metadata
        holds the items of ``metadata`` if given."""
        matches = compile_pattern(validate_pattern(name))
        expected = payload if payload is UNSET else _normalise(payload)
        wanted = dict(metadata or {}).items()
        return [
            event
            for event in self.events
            if matches(event.name)
            and (expected is UNSET or event.payload == expected)
            and wanted <= event.metadata.items()
        ]

    def assert_published(
        self,
        name: str,
        *,
        payload: Mapping[str, Any] | subset | _Unset = UNSET,
        metadata: Mapping[str, str] | None = None,
        times: int | None = None,
    ) -> list[Event]:
        """Assert that a matching event was published (exactly ``times`` times if given);
        return the matching events.

        ``payload`` is compared for equality after the same orjson round trip the
        published payload went through (tuples compare as lists); wrap it in
        ``subset(...)`` to match some keys only, and use ``unittest.mock.ANY`` for a
        value that does not matter. ``metadata`` matches if the event's metadata
        holds those items. A failure lists everything that was published.
        """
        __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
        found = self.find(name, payload=payload, metadata=metadata)
        if (times is None and found) or len(found) == times:
            return found
        expected = "at least once" if times is None else f"{times} time{'s' * (times != 1)}"
        raise AssertionError(
            f"expected {self._criteria(name, payload, metadata)} to be published {expected}, "
            f"but it was published {len(found)} time{'s' * (len(found) != 1)}\n"
            + self._listing(self.events, metadata is not None)
        )

    def assert_not_published(
        self,
        name: str,
        *,
        payload: Mapping[str, Any] | subset | _Unset = UNSET,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Assert that no matching event was published (same matching as ``assert_published``)."""
        __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
        found = self.find(name, payload=payload, metadata=metadata)
        if found:
            raise AssertionError(
                f"expected {self._criteria(name, payload, metadata)} not to be published, "
                f"but it was published {len(found)} time{'s' * (len(found) != 1)}\n"
                + self._listing(found, metadata is not None, label="matching events")
            )

    def clear(self) -> None:
        """Forget the events captured so far."""
        self.events.clear()

    @staticmethod
    def _criteria(name: str, payload: object, metadata: Mapping[str, str] | None) -> str:
        text = repr(name)
        if payload is not UNSET:
            text += f" with payload {payload!r}"
        if metadata is not None:
            text += f" with metadata holding {dict(metadata)!r}"
        return text

    @staticmethod
    def _listing(events: list[Event], metadata: bool, label: str = "published events") -> str:
        if not events:
            return "no events were published"
        lines = [f"{label} ({len(events)}):"]
        lines += [f"  {_describe(event, metadata)}" for event in events[:_MAX_LISTED]]
        if len(events) > _MAX_LISTED:
            lines.append(f"  ... and {len(events) - _MAX_LISTED} more")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Captured {counted(len(self.events), 'event')}: {self.names!r}>"


class _Capturing(Middleware):
    """Appends each accepted event to a ``Captured``."""

    def __init__(self, captured: Captured) -> None:
        self.captured = captured

    def after_publish(
        self, publishing: Publishing, state: Any, error: BaseException | None
    ) -> None:
        if error is None and publishing.event is not None:
            self.captured.events.append(publishing.event)


def _running(runtime: EventRuntime | None, what: str) -> EventRuntime:
    if runtime is None:
        runtime = current_runtime()
        if runtime is None:
            raise ConfigurationError(
                what,
                "no event runtime is running here; start one (`async with "
                "aevents.EventRuntime():`, or the aevents_runtime fixture) or pass runtime=",
            )
    return runtime


@contextmanager
def capture(runtime: EventRuntime | None = None) -> Iterator[Captured]:
    """Record the events published through a runtime while the block runs.

        with capture() as captured:
            await aevents.publish("user:account:created", payload={"user_id": 1})
        captured.assert_published("user:account:created", payload={"user_id": 1})

    It is a middleware added for the block's duration: it sees every publish,
    publish_nowait and publish_threadsafe call, and each event of a
    publish_many batch, receivers' publishes included, and records each
    accepted event when its publish returns. Refused publishes (bad names or
    payloads, a refused batch) are not recorded. Use it on the event
    loop's thread.

    Args:
        runtime: The runtime to watch. Default ``None``: the current one.

    Returns:
        A context manager yielding the ``Captured`` events.

    Raises:
        ConfigurationError: No runtime was given and none is running here.
    """
    target = _running(runtime, "capture()")
    captured = Captured()
    middleware = _Capturing(captured)
    target.add_middleware(middleware)
    try:
        yield captured
    finally:
        target.remove_middleware(middleware)


# ---------------------------------------------------------------------- dead letters


def _error_name(error: type[BaseException]) -> tuple[str, ...]:
    qualified = f"{error.__module__}.{error.__qualname__}"
    return (qualified, error.__qualname__) if error.__module__ == "builtins" else (qualified,)


def _describe_letter(letter: DeadLetter) -> str:
    return (
        f"  receiver {letter.receiver_id!r} on {letter.event.name!r} "
        f"after {counted(letter.attempts, 'attempt')}: "
        f"{letter.error_type}: {letter.error_message[:300]}"
    )


def _letters_listing(letters: list[DeadLetter]) -> str:
    if not letters:
        return "there are no dead letters"
    lines = [f"dead letters ({len(letters)}):"]
    lines += [_describe_letter(letter) for letter in letters[:_MAX_LISTED]]
    if len(letters) > _MAX_LISTED:
        lines.append(f"  ... and {len(letters) - _MAX_LISTED} more")
    return "\n".join(lines)


async def assert_no_dead_letters(runtime: EventRuntime | None = None) -> None:
    """Drain ``runtime``, then assert that it holds no dead letters.

    Like ``drain()``, it waits for retries still in their backoff; cancelling
    it leaves the runtime as it was.

    Args:
        runtime: The runtime to check. Default ``None``: the current one.

    Raises:
        AssertionError: There are dead letters; the message lists them.
        ConfigurationError: No runtime was given and none is running here.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
    target = _running(runtime, "assert_no_dead_letters()")
    await target.drain()
    letters = await target.dead_letters()
    if letters:
        raise AssertionError("expected no dead letters\n" + _letters_listing(letters))


async def assert_dead_lettered(
    name: str = "**",
    *,
    receiver: Receiver | str | None = None,
    error: type[BaseException] | str | None = None,
    times: int | None = None,
    runtime: EventRuntime | None = None,
) -> list[DeadLetter]:
    """Drain ``runtime``, assert that it holds matching dead letters, and return them.

    Args:
        name: An event name or pattern. Default ``"**"``: any event.
        receiver: A receiver or its id. Default ``None``: any receiver.
        error: An exception class (matched by its qualified name, not by
            subclass) or the name as ``DeadLetter.error_type`` spells it.
            Default ``None``: any error.
        times: Exactly this many must match. Default ``None``: at least one.
        runtime: The runtime to check. Default ``None``: the current one.

    Returns:
        The matching dead letters, oldest first.

    Raises:
        AssertionError: Too few or too many match; the message lists every
            dead letter.
        ConfigurationError: No runtime was given and none is running here.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
    target = _running(runtime, "assert_dead_lettered()")
    await target.drain()
    letters = await target.dead_letters()
    matches = compile_pattern(validate_pattern(name))
    receiver_id = receiver if isinstance(receiver, str | None) else receiver_id_of(receiver)
    error_names = (error,) if isinstance(error, str | None) else _error_name(error)
    found = [
        letter
        for letter in letters
        if matches(letter.event.name)
        and receiver_id in (None, letter.receiver_id)
        and (error is None or letter.error_type in error_names)
    ]
    if (times is None and found) or len(found) == times:
        return found
    criteria = repr(name)
    if receiver_id is not None:
        criteria += f" for receiver {receiver_id!r}"
    if error is not None:
        criteria += f" with error {error_names[0]}"
    expected = "at least one dead letter" if times is None else counted(times, "dead letter")
    raise AssertionError(
        f"expected {expected} of {criteria}, found {len(found)}\n" + _letters_listing(letters)
    )


# ---------------------------------------------------------------------- a recording receiver

_recorder_numbers = itertools.count(1)


class Recorder:
    """An async receiver that keeps what it receives; subscribe it, publish, drain, look.

    Each recorder has a receiver id of its own (``aevents.testing:Recorder[n]``,
    or ``aevents.testing:Recorder[name]``), so several can be subscribed at once.
    """

    def __init__(self, name: str | None = None) -> None:
        self.__qualname__ = f"Recorder[{name if name is not None else next(_recorder_numbers)}]"
        self.events: list[Event] = []
        """The events received, in order (an event twice if it was delivered twice)."""
        self.deliveries: list[DeliveryInfo] = []
        """What ``current_delivery()`` said on each call a runtime made (attempt, pattern...)."""

    @property
    def id(self) -> str:
        """The receiver id it subscribes under."""
        return receiver_id_of(self)

    async def __call__(self, event: Event) -> None:
        self.events.append(event)
        delivery = current_delivery()
        if delivery is not None:  # None when called directly rather than by a runtime
            self.deliveries.append(delivery)

    def __repr__(self) -> str:
        return f"<Recorder {self.id!r}: {counted(len(self.deliveries), 'delivery')}>"


@contextmanager
def recording(pattern: str, *, registry: Registry | None = None) -> Iterator[Recorder]:
    """Subscribe a new ``Recorder`` to ``pattern`` for the block (blinker's ``connected_to``).

    Args:
        pattern: The name or pattern to record.
        registry: Default ``None``: ``aevents.default_registry``.

    Returns:
        A context manager yielding the recorder.
    """
    target = registry if registry is not None else default_registry
    recorder = Recorder()
    target.subscribe(pattern, recorder)
    try:
        yield recorder
    finally:
        target.unsubscribe(pattern, recorder)
