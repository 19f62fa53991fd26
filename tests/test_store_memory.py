"""MemoryStore: the reference fake passes the store conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.register_assert_rewrite("aevents.testing")

from aevents._event import make_event  # noqa: E402
from aevents._store import MemoryStore, Store  # noqa: E402
from aevents.testing import StoreConformance  # noqa: E402


class TestMemoryStore(StoreConformance):
    def make_store(self, directory: Path) -> Store:
        return MemoryStore()


def test_memory_store_satisfies_the_protocol() -> None:
    """MemoryStore is a Store at runtime."""
    assert isinstance(MemoryStore(), Store)


@pytest.mark.anyio
async def test_data_stays_with_the_object_across_close(anyio_backend: object) -> None:
    """Closing and reopening the same MemoryStore keeps its journal."""
    store = MemoryStore()
    await store.open()
    await store.append(make_event("a.b", {}, {}), ["r"])
    await store.close()
    await store.open()
    assert (await store.stats()).pending == 1
    await store.close()
