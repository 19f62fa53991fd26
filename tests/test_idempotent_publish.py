"""publish(..., idempotency_key=...): the first publish counts, repeats return it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked

import aevents
from aevents import Event, EventRuntime, MemoryStore, Registry, SQLiteStore

pytestmark = pytest.mark.anyio


def counting(registry: Registry) -> list[Event]:
    """Subscribe a receiver to order:paid and return the list it fills."""
    seen: list[Event] = []

    async def receiver(event: Event) -> None:
        seen.append(event)

    registry.subscribe("order:paid", receiver, id="receiver")
    return seen


async def test_a_repeat_returns_the_first_event_and_publishes_nothing(registry: Registry) -> None:
    """The second publish with the key is a no-op that returns the original event."""
    seen = counting(registry)
    async with EventRuntime(registry) as runtime:
        first = await runtime.publish(
            "order:paid", payload={"order": 7}, idempotency_key="order-7-paid"
        )
        again = await runtime.publish(
            "order:paid", payload={"order": 7}, idempotency_key="order-7-paid"
        )
        other = await runtime.publish(
            "order:paid", payload={"order": 8}, idempotency_key="order-8-paid"
        )
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert again is first
    assert other.id != first.id
    assert first.metadata["idempotency_key"] == "order-7-paid"
    assert [event.id for event in seen] == [first.id, other.id]
    assert (stats.published, stats.repeated) == (2, 1)


async def test_a_repeat_made_while_the_first_waits_for_room_waits_for_it(
    registry: Registry,
) -> None:
    """Concurrent repeats of one key publish once, even when the first has to wait."""
    release = anyio.Event()
    seen: list[Event] = []

    async def slow(event: Event) -> None:
        seen.append(event)
        with anyio.fail_after(5):
            await release.wait()

    registry.subscribe("order:paid", slow, id="slow")
    results: list[Event] = []
    async with EventRuntime(registry, workers=1, buffer=1) as runtime:
        await runtime.publish("order:paid", payload={"order": 1})  # taken by the worker
        await runtime.publish("order:paid", payload={"order": 2})  # fills the buffer
        await wait_all_tasks_blocked()

        async def pay() -> None:
            results.append(
                await runtime.publish("order:paid", payload={"order": 3}, idempotency_key="o-3")
            )

        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(pay)
            await wait_all_tasks_blocked()
            release.set()
        with anyio.fail_after(5):
            await runtime.drain()
    assert len(results) == 3
    assert len({event.id for event in results}) == 1
    assert [event.payload["order"] for event in seen] == [1, 2, 3]


async def test_a_failed_first_publish_leaves_the_key_free(registry: Registry) -> None:
    """A first publish that raised accepted nothing, so the key can be used again."""
    seen = counting(registry)
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError):
            await runtime.publish("order:paid", payload={"at": object()}, idempotency_key="k")
        event = await runtime.publish("order:paid", payload={"ok": True}, idempotency_key="k")
        with anyio.fail_after(5):
            await runtime.drain()
    assert seen == [event]


async def test_a_key_is_forgotten_after_the_window(registry: Registry) -> None:
    """Past idempotency_window seconds, the same key publishes a new event."""
    seen = counting(registry)
    async with EventRuntime(registry, idempotency_window=0.05) as runtime:
        first = await runtime.publish("order:paid", idempotency_key="k")
        await anyio.sleep(0.1)  # the window is wall-clock time: let it pass
        second = await runtime.publish("order:paid", idempotency_key="k")
        with anyio.fail_after(5):
            await runtime.drain()
    assert first.id != second.id
    assert len(seen) == 2


async def test_the_window_keeps_at_most_max_idempotency_keys(registry: Registry) -> None:
    """Memory is bounded: beyond the limit the oldest key is forgotten first."""
    counting(registry)
    async with EventRuntime(registry, max_idempotency_keys=2) as runtime:
        first = await runtime.publish("order:paid", idempotency_key="a")
        await runtime.publish("order:paid", idempotency_key="b")
        await runtime.publish("order:paid", idempotency_key="c")
        assert (await runtime.publish("order:paid", idempotency_key="c")).metadata[
            "idempotency_key"
        ] == "c"
        again = await runtime.publish("order:paid", idempotency_key="a")
        with anyio.fail_after(5):
            await runtime.drain()
    assert again.id != first.id


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (7, "expected a str, got int"),
        ("", "must not be empty"),
        ("a\nb", "contains a control character"),
    ],
)
async def test_a_bad_idempotency_key_fails_at_the_call_site(
    registry: Registry, key: object, problem: str
) -> None:
    """The PayloadError names the event and the idempotency_key."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError, match=f"'order:paid': idempotency_key: {problem}"):
            await runtime.publish("order:paid", idempotency_key=key)  # type: ignore[arg-type]


async def test_the_metadata_entry_is_reserved_for_the_argument(registry: Registry) -> None:
    """Setting metadata["idempotency_key"] by hand is refused, pointing at the argument."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError, match=r"idempotency_key=\.\.\."):
            await runtime.publish("order:paid", metadata={"idempotency_key": "k"})
        with pytest.raises(aevents.PayloadError, match=r"idempotency_key=\.\.\."):
            runtime.publish_nowait("order:paid", metadata={"idempotency_key": "k"})


async def test_module_level_and_threadsafe_publish_take_the_key(registry: Registry) -> None:
    """aevents.publish and publish_threadsafe pass idempotency_key through."""
    seen = counting(registry)
    async with EventRuntime(registry) as runtime:
        first = await aevents.publish("order:paid", idempotency_key="k")
        again = await anyio.to_thread.run_sync(
            lambda: aevents.publish_threadsafe("order:paid", idempotency_key="k")
        )
        with anyio.fail_after(5):
            await runtime.drain()
    assert again.id == first.id
    assert seen == [first]


async def test_repeats_stay_no_ops_across_a_restart_with_a_store(
    registry: Registry, tmp_path: Path
) -> None:
    """With a SQLite journal, a retry after a restart returns the event of the first run."""
    seen = counting(registry)
    path = tmp_path / "events.db"
    async with EventRuntime(registry, store=SQLiteStore(path)) as runtime:
        first = await runtime.publish("order:paid", payload={"n": 1}, idempotency_key="pay-1")
        with anyio.fail_after(5):
            await runtime.drain()
    async with EventRuntime(registry, store=SQLiteStore(path)) as runtime:
        again = await runtime.publish("order:paid", payload={"n": 1}, idempotency_key="pay-1")
        fresh = await runtime.publish("order:paid", payload={"n": 2}, idempotency_key="pay-2")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().repeated == 1
    assert again == first
    assert [event.id for event in seen] == [first.id, fresh.id]


async def test_a_restart_forgets_keys_older_than_the_window(registry: Registry) -> None:
    """Keys past the window are not remembered on start, and leave the journal."""
    store = MemoryStore()
    counting(registry)
    async with EventRuntime(registry, store=store) as runtime:
        first = await runtime.publish("order:paid", idempotency_key="old")
    await anyio.sleep(0.1)
    async with EventRuntime(registry, store=store, idempotency_window=0.05) as runtime:
        again = await runtime.publish("order:paid", idempotency_key="old")
        assert runtime.stats().repeated == 0
    assert again.id != first.id


async def test_a_key_of_an_event_no_receiver_matched_is_journaled_too(registry: Registry) -> None:
    """With a store, an unrouted event's key still makes a repeat after a restart a no-op."""
    store = MemoryStore()
    async with EventRuntime(registry, store=store) as runtime:
        first = await runtime.publish("order:unheard", idempotency_key="quiet")
        assert runtime.stats().unrouted == 1
    async with EventRuntime(registry, store=store) as runtime:
        again = await runtime.publish("order:unheard", idempotency_key="quiet")
        assert runtime.stats().repeated == 1
    assert again == first


async def test_the_journal_forgets_keys_past_the_window_while_running(registry: Registry) -> None:
    """A running runtime drops expired key records from its journal, not only at start."""
    store = MemoryStore()
    async with EventRuntime(registry, store=store, idempotency_window=0.05) as runtime:
        await runtime.publish("order:unheard", idempotency_key="brief")
        assert (await store.stats()).idempotency_keys == 1
        for _ in range(500):  # polls the journal, which has no event to wait on
            if not (await store.stats()).idempotency_keys:
                break
            await anyio.sleep(0.01)
        else:
            pytest.fail("the expired key record was never forgotten")


@pytest.mark.parametrize("metadata", [5, "idempotency_key", ["idempotency_key"]])
async def test_metadata_that_is_not_a_mapping_is_still_a_payload_error(
    registry: Registry, metadata: object
) -> None:
    """The reserved-entry check leaves bad metadata to the usual PayloadError."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError, match="metadata: expected a mapping"):
            await runtime.publish("order:paid", metadata=metadata)  # type: ignore[arg-type]
        with pytest.raises(aevents.PayloadError, match="metadata: expected a mapping"):
            runtime.publish_nowait("order:paid", metadata=metadata)  # type: ignore[arg-type]


async def test_publish_nowait_takes_the_key_too(registry: Registry) -> None:
    """publish_nowait shares the window with publish: a repeat either way is the first event."""
    seen = counting(registry)
    async with EventRuntime(registry) as runtime:
        first = runtime.publish_nowait("order:paid", payload={"n": 1}, idempotency_key="a")
        again = runtime.publish_nowait("order:paid", payload={"n": 1}, idempotency_key="a")
        awaited = await runtime.publish("order:paid", idempotency_key="a")
        second = await runtime.publish("order:paid", payload={"n": 2}, idempotency_key="b")
        module_level = aevents.publish_nowait("order:paid", idempotency_key="b")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert again is first
    assert awaited is first
    assert module_level is second
    assert first.metadata["idempotency_key"] == "a"
    assert seen == [first, second]
    assert (stats.published, stats.repeated) == (2, 3)


async def test_publish_nowait_refuses_a_key_whose_first_publish_still_waits(
    registry: Registry,
) -> None:
    """It cannot wait for the first publish of the key, so it raises KeyInFlightError, a
    QueueFullError naming the event and the key; nothing is published twice."""
    release = anyio.Event()
    seen: list[Event] = []

    async def slow(event: Event) -> None:
        seen.append(event)
        with anyio.fail_after(5):
            await release.wait()

    registry.subscribe("order:paid", slow, id="slow")
    async with EventRuntime(registry, workers=1, buffer=1) as runtime:
        await runtime.publish("order:paid", payload={"order": 1})  # taken by the worker
        await runtime.publish("order:paid", payload={"order": 2})  # fills the buffer
        await wait_all_tasks_blocked()
        results: list[Event] = []

        async def pay() -> None:
            results.append(
                await runtime.publish("order:paid", payload={"order": 3}, idempotency_key="o-3")
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pay)
            await wait_all_tasks_blocked()
            with pytest.raises(aevents.KeyInFlightError) as refused:
                runtime.publish_nowait("order:paid", payload={"order": 3}, idempotency_key="o-3")
            release.set()
        assert isinstance(refused.value, aevents.QueueFullError)
        assert refused.value.key == "o-3"
        assert "'order:paid' with idempotency_key 'o-3'" in str(refused.value)
        again = runtime.publish_nowait("order:paid", payload={"order": 3}, idempotency_key="o-3")
        with anyio.fail_after(5):
            await runtime.drain()
    assert again is results[0]
    assert [event.payload["order"] for event in seen] == [1, 2, 3]


async def test_publish_nowait_journals_its_key_for_the_next_start(
    registry: Registry, tmp_path: Path
) -> None:
    """With a SQLite journal, the key of a publish_nowait is written with its event in the
    background, so a repeat after a restart returns that event."""
    seen = counting(registry)
    path = tmp_path / "events.db"
    async with EventRuntime(registry, store=SQLiteStore(path)) as runtime:
        first = runtime.publish_nowait("order:paid", payload={"n": 1}, idempotency_key="pay-1")
        with anyio.fail_after(5):
            await runtime.drain()
    async with EventRuntime(registry, store=SQLiteStore(path)) as runtime:
        again = runtime.publish_nowait("order:paid", payload={"n": 1}, idempotency_key="pay-1")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().repeated == 1
    assert again == first
    assert [event.id for event in seen] == [first.id]


async def test_publish_nowait_checks_the_key_at_the_call_site(registry: Registry) -> None:
    """A bad key, or the reserved metadata entry, is refused before anything is accepted."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError, match="'order:paid': idempotency_key"):
            runtime.publish_nowait("order:paid", idempotency_key="")
        with pytest.raises(aevents.PayloadError, match=r"publish_nowait\(\.\.\., idempotency_key"):
            runtime.publish_nowait("order:paid", metadata={"idempotency_key": "k"})
        assert runtime.stats().published == 0
