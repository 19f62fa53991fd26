"""MemoryStore as a shared queue: the leased-store conformance suite, and sharing in a process."""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

import anyio
import pytest

pytest.register_assert_rewrite("aevents._conformance_leases")

from aevents import StoreError  # noqa: E402
from aevents._conformance_leases import (  # noqa: E402
    LeasedStoreConformance,
    ManualClock,
    PublishAndClaimConformance,
    claim_in_another_process,
)
from aevents._event import make_event  # noqa: E402
from aevents._store import (  # noqa: E402
    Clock,
    Completed,
    LeasedStore,
    MemoryStore,
    Route,
    SQLiteStore,
    Store,
    new_consumer_id,
)


def leased_memory_store(directory: Path, clock: Clock) -> LeasedStore:
    """A memory store over nothing shared: what a child process makes for the harness test."""
    return MemoryStore(clock=clock)


class TestLeasedMemoryStore(PublishAndClaimConformance, LeasedStoreConformance):
    def make_leased_store(self, directory: Path, clock: Clock) -> LeasedStore:
        return leased_memory_store(directory, clock)


def test_memory_store_satisfies_both_protocols_and_sqlite_still_the_journal_one() -> None:
    """MemoryStore is a Store and a LeasedStore; SQLiteStore stays a Store."""
    leased: LeasedStore = MemoryStore()  # checked statically by mypy too
    journal: Store = MemoryStore()
    assert isinstance(leased, Store)
    assert isinstance(journal, LeasedStore)
    assert isinstance(SQLiteStore("unused.db"), Store)


def test_a_consumer_id_names_host_process_and_a_random_part() -> None:
    """Each new consumer id differs, and prints as host:pid:token."""
    first, second = new_consumer_id(), new_consumer_id()
    assert first != second
    assert (first.host, first.pid) == (second.host, second.pid)
    assert str(first) == f"{first.host}:{first.pid}:{first.token}"


@pytest.mark.anyio
async def test_runtimes_on_two_threads_share_one_memory_store(anyio_backend: object) -> None:
    """Two event loops on two threads claim from one store, and no delivery goes to both."""
    store = MemoryStore()
    await store.open()
    events = [make_event("shared:event", {"n": n}, {}) for n in range(400)]
    await store.publish([(event, ["r"]) for event in events])
    taken: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def consume(index: int) -> None:
        async def claim_all() -> None:
            consumer = new_consumer_id()
            await store.open()
            await store.register(consumer, [Route("shared:*", "r")], ttl=60)
            start.wait(timeout=10)
            while claims := await store.claim(consumer, 3, lease=60):
                taken[index].extend(claim.event.id for claim in claims)
                await store.settle(consumer, [Completed(claim) for claim in claims])
            await store.close()

        anyio.run(claim_all)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for index in range(2):
                group.start_soon(anyio.to_thread.run_sync, consume, index)
    assert sorted(taken[0] + taken[1]) == sorted(event.id for event in events)
    assert (await store.stats()).done == 400
    await store.close()


@pytest.mark.anyio
async def test_a_memory_store_stays_usable_until_every_opener_closed_it(
    anyio_backend: object,
) -> None:
    """Each open is matched by a close; the store refuses calls only after the last."""
    store = MemoryStore()
    await store.open()
    await store.open()
    await store.close()
    assert (await store.stats()).events == 0
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.stats()


@pytest.mark.anyio
async def test_the_child_process_harness_reports_what_the_child_claimed(
    anyio_backend: object, tmp_path: Path
) -> None:
    """The two-process harness starts a consumer, lets it claim, and reads its id back."""
    now = ManualClock()()
    consumer, claims = await claim_in_another_process(
        f"{__name__}:leased_memory_store", tmp_path, now, ["r"], limit=5, until_empty=True
    )
    assert claims == []  # its memory store is its own, and empty
    host, pid, token = consumer.split(":")
    assert (host, int(pid)) != (new_consumer_id().host, os.getpid())
    assert len(token) == 8


@pytest.mark.anyio
async def test_the_child_process_harness_sees_a_child_killed_holding_its_leases(
    anyio_backend: object, tmp_path: Path
) -> None:
    """A child told to die ends by SIGKILL after printing its claims."""
    consumer, claims = await claim_in_another_process(
        f"{__name__}:leased_memory_store",
        tmp_path,
        datetime.now().astimezone(),
        ["r"],
        limit=5,
        die=True,
    )
    assert claims == []
    assert int(consumer.split(":")[1]) != os.getpid()
