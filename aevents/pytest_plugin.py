"""pytest fixtures for applications built on aevents, loaded through the ``pytest11`` entry point.

Every fixture is opt-in (nothing here is autouse):

* ``aevents_registry``: ``aevents.default_registry``, with whatever the test
  subscribes or unsubscribes undone afterwards.
* ``aevents_runtime``: a running runtime on that registry, so module-level
  ``aevents.publish`` reaches it. At teardown it drains, and fails the test if
  dead letters are left that the test never looked at (through
  ``runtime.dead_letters()`` or ``aevents.testing.assert_dead_lettered``).
* ``aevents_capture``: ``aevents.testing.capture()`` on that runtime, for the test.

``aevents_runtime`` is an async fixture run by anyio's pytest plugin: use it
from ``@pytest.mark.anyio`` tests. Configure it with a marker, on a test, a
class or a module (``pytestmark``); the closest one wins, key by key::

    @pytest.mark.aevents(eager=True, strict=True, workers=1)

``eager=True`` makes it an ``aevents.testing.EagerRuntime``;
``raise_errors=False`` (eager only) turns receiver failures into dead
letters; ``allow_dead_letters=True`` skips the teardown check;
``empty_registry=True`` starts the test with no subscriptions. Any other key
goes to the runtime (``workers``, ``buffer``, ``strict``, ``retry``,
``timeout``, ``middleware``, ...). Project-wide defaults go in an
``aevents_config`` fixture of your own (a dict; markers win over it).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

pytest.register_assert_rewrite("aevents.testing", "aevents._conformance")

from aevents import ConfigurationError, DeadLetter, EventRuntime, Registry  # noqa: E402
from aevents.testing import (  # noqa: E402
    Captured,
    EagerRuntime,
    _letters_listing,
    capture,
    isolated_registry,
)

__all__ = ["aevents_capture", "aevents_config", "aevents_registry", "aevents_runtime"]

_FIXTURE_OPTIONS = ("eager", "raise_errors", "allow_dead_letters", "empty_registry")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "aevents(**options): configure the aevents_runtime and aevents_registry fixtures: "
        "eager=, raise_errors=, allow_dead_letters=, empty_registry=, and any EventRuntime "
        "keyword (workers=, strict=, retry=, ...)",
    )


def _options(request: pytest.FixtureRequest, defaults: dict[str, Any]) -> dict[str, Any]:
    options = dict(defaults)
    markers = list(request.node.iter_markers("aevents"))  # closest first
    for marker in reversed(markers):
        if marker.args:
            pytest.fail(f"@pytest.mark.aevents takes keyword arguments only, got {marker.args!r}")
        options.update(marker.kwargs)
    return options


class _Watched(EventRuntime):
    """Remembers which dead letters the test has looked at."""

    def __init__(self, registry: Registry | None = None, **options: Any) -> None:
        super().__init__(registry, **options)
        self.seen_dead_letters: set[str] = set()

    async def dead_letters(self) -> list[DeadLetter]:
        letters = await super().dead_letters()
        self.seen_dead_letters.update(letter.id for letter in letters)
        return letters

    async def unseen_dead_letters(self) -> list[DeadLetter]:
        return [
            letter
            for letter in await EventRuntime.dead_letters(self)
            if letter.id not in self.seen_dead_letters
        ]


class _WatchedEager(_Watched, EagerRuntime):
    pass


@pytest.fixture
def aevents_config() -> dict[str, Any]:
    """Defaults for ``@pytest.mark.aevents`` options; override it in conftest.py."""
    return {}


@pytest.fixture
def aevents_registry(
    request: pytest.FixtureRequest, aevents_config: dict[str, Any]
) -> Iterator[Registry]:
    """``aevents.default_registry``, restored after the test (see ``isolated_registry``)."""
    empty = bool(_options(request, aevents_config).get("empty_registry", False))
    with isolated_registry(empty=empty) as registry:
        yield registry


@pytest.fixture
async def aevents_runtime(
    request: pytest.FixtureRequest,
    aevents_config: dict[str, Any],
    aevents_registry: Registry,
    anyio_backend: object,
) -> AsyncIterator[EventRuntime]:
    """A running runtime over ``aevents_registry``, which module-level ``publish`` uses.

    At teardown it drains (within the runtime's ``shutdown_timeout``), fails
    the test on dead letters it never looked at unless
    ``allow_dead_letters=True``, then stops the runtime.
    """
    if not inspect.iscoroutinefunction(getattr(request, "function", None)):
        pytest.fail("aevents_runtime is for async tests: mark the test @pytest.mark.anyio")
    options = _options(request, aevents_config)
    eager = bool(options.pop("eager", False))
    allow_dead_letters = bool(options.pop("allow_dead_letters", False))
    options.pop("empty_registry", None)
    if not eager and "raise_errors" in options:
        pytest.fail("@pytest.mark.aevents(raise_errors=...) applies to eager=True only")
    try:
        runtime = (_WatchedEager if eager else _Watched)(aevents_registry, **options)
    except ConfigurationError:
        raise
    except TypeError as error:  # an unknown keyword
        pytest.fail(f"@pytest.mark.aevents: {error}; fixture options are {_FIXTURE_OPTIONS}")
    async with runtime:
        yield runtime
        with anyio.move_on_after(runtime.shutdown_timeout):
            await runtime.drain()
        letters = await runtime.unseen_dead_letters()
        if letters and not allow_dead_letters:
            pytest.fail(
                "the test left dead letters it never looked at; inspect them with "
                "`await runtime.dead_letters()` or `aevents.testing.assert_dead_lettered()`, "
                "or mark the test @pytest.mark.aevents(allow_dead_letters=True)\n"
                + _letters_listing(letters),
                pytrace=False,
            )


@pytest.fixture
def aevents_capture(aevents_runtime: EventRuntime) -> Iterator[Captured]:
    """``aevents.testing.capture()`` on ``aevents_runtime`` for the whole test."""
    with capture(aevents_runtime) as captured:
        yield captured
