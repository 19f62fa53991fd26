"""RedisStore: the leased-store conformance suite on a real Redis 7, with consumers in
other processes; each test under its own key prefix, deleted afterwards."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

import aevents
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
        await store.delete_all()
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


# -- the runtime on Redis, and what Redis adds ----------------------------------------------


@pytest.fixture
async def redis_prefix(redis_url: str, anyio_backend: object) -> AsyncIterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    prefix = "aevents-test-" + os.urandom(6).hex()
    yield prefix
    await delete_prefix(redis_url, prefix)


@pytest.mark.anyio
async def test_a_runtime_on_redis_delivers_each_event_once_per_receiver(
    redis_url: str, redis_prefix: str
) -> None:
    """Two runtimes share one Redis store: every delivery runs once, a failure is retried."""
    seen: list[tuple[str, int, int]] = []

    def registry_of(tag: str) -> aevents.Registry:
        registry = aevents.Registry()

        @registry.subscribe("orders:*", id="audit", retry=aevents.RetryPolicy(attempts=2, initial_delay=0.01))
        async def audit(event: aevents.Event) -> None:
            delivery = aevents.current_delivery()
            assert delivery is not None
            if event.payload["n"] == 3 and delivery.attempt == 1:
                raise RuntimeError("first attempt fails")
            seen.append((tag, event.payload["n"], delivery.attempt))

        return registry

    one = RedisStore(redis_url, prefix=redis_prefix)
    two = RedisStore(redis_url, prefix=redis_prefix)
    with anyio.fail_after(30):
        async with (
            aevents.EventRuntime(registry_of("a"), store=one, workers=2, buffer=8) as a,
            aevents.EventRuntime(registry_of("b"), store=two, workers=2, buffer=8) as b,
        ):
            for n in range(10):
                await (a if n % 2 else b).publish("orders:placed", payload={"n": n})
            await a.drain()
            await b.drain()
            while len(seen) < 10:
                await anyio.sleep(0.01)
    assert sorted(n for _, n, _ in seen) == list(range(10))
    assert [attempt for _, n, attempt in seen if n == 3] == [2]
    check = RedisStore(redis_url, prefix=redis_prefix, retention=None)
    await check.open()
    try:
        stats = await check.stats()
    finally:
        await check.close()
    assert (stats.events, stats.pending, stats.done, stats.dead) == (10, 0, 10, 0)
