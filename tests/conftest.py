"""Every async test runs on asyncio, asyncio with uvloop, and trio."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

import aevents

from .services import POSTGRES, REDIS, Service, required

_BACKENDS: list[Any] = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("trio", {}), id="trio"),
]
if sys.platform != "win32":
    _BACKENDS.insert(1, pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture
def registry() -> aevents.Registry:
    """A fresh registry, so tests never see each other's receivers."""
    return aevents.Registry()


@pytest.fixture(autouse=True)
def _clean_default_registry() -> Iterator[None]:
    """Tests that use the module-level subscribe must not leak receivers."""
    yield
    aevents.default_registry.clear()


_SKIPPED: dict[str, int] = {}


def _service(service: Service) -> str:
    """The URL of ``service``; skip the test (or fail it, when required) if it is down."""
    if service.reachable():
        return service.url
    if required():
        pytest.fail(service.how_to_enable(), pytrace=False)
    _SKIPPED[service.name] = _SKIPPED.get(service.name, 0) + 1
    pytest.skip(service.how_to_enable())


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The PostgreSQL server to test against (``AEVENTS_POSTGRES_DSN``)."""
    return _service(POSTGRES)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server to test against (``AEVENTS_REDIS_URL``)."""
    return _service(REDIS)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per server that was missing, saying how to enable its tests."""
    for service in (POSTGRES, REDIS):
        if service.name in _SKIPPED:
            terminalreporter.write_line(
                f"aevents: tests needing {service.name} were skipped: {service.how_to_enable()}"
            )
