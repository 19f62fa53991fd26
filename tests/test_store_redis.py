"""RedisStore: the leased-store conformance suite on a real Redis 7, with consumers in
other processes; each test under its own key prefix, deleted afterwards."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

pytest.register_assert_rewrite("aevents._conformance_leases")

from aevents._conformance_leases import TwoProcessLeasedConformance  # noqa: E402
from aevents._store import Clock, LeasedStore  # noqa: E402
from aevents._store._redis import RedisStore  # noqa: E402

from .services import REDIS  # noqa: E402


def prefix_of(directory: Path) -> str:
    """A key prefix of its own for each test directory (the child process derives it too)."""
    return "aevents-test-" + hashlib.sha1(str(directory).encode()).hexdigest()[:12]


def leased(directory: Path, clock: Clock) -> LeasedStore:
    """The store the suite and its child processes open, with no retention pass."""
    return RedisStore(REDIS.url, prefix=prefix_of(directory), clock=clock, retention=None)


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key of a store's prefix."""
    store = RedisStore(url, prefix=prefix)
    await store.open()
    try:
        client = store._client
        keys = [key async for key in client.scan_iter(match=store.keys.pattern)]
        if keys:
            await client.delete(keys)
    finally:
        await store.close()


class TestLeasedRedisStore(TwoProcessLeasedConformance):
    @pytest.fixture(autouse=True)
    def _clean(self, redis_url: str, tmp_path: Path) -> Iterator[None]:
        yield
        anyio.run(delete_prefix, redis_url, prefix_of(tmp_path))

    def make_leased_store(self, directory: Path, clock: Clock) -> LeasedStore:
        return leased(directory, clock)

    def child_store_factory(self) -> str:
        return f"{__name__}:leased"
