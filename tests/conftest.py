"""Every async test runs on asyncio, asyncio with uvloop, and trio."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

import aevents

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
