"""``EventRuntime.discard``: dead letters deleted for good, in memory and in a store."""

from __future__ import annotations

import anyio
import pytest

from aevents import (
    Event,
    EventRuntime,
    MemoryStore,
    Registry,
    RetryPolicy,
    RuntimeClosedError,
    StoreError,
)
from tests.journal_store import JournalMemoryStore

pytestmark = pytest.mark.anyio

ONCE = RetryPolicy(attempts=1)


def _failing(registry: Registry, delivered: list[Event], *, healthy: list[bool]) -> None:
    async def receiver(event: Event) -> None:
        if not healthy:
            raise ConnectionError("downstream is down")
        delivered.append(event)

    registry.subscribe("mail:send", receiver, id="mailer", retry=ONCE)


async def test_discarded_letters_leave_the_list_and_never_run(registry: Registry) -> None:
    """Without a store, discard() forgets the chosen letters; redeliver() cannot bring them back."""
    delivered: list[Event] = []
    healthy: list[bool] = []
    _failing(registry, delivered, healthy=healthy)
    async with EventRuntime(registry) as runtime:
        await runtime.publish("mail:send", payload={"to": "a"})
        second = await runtime.publish("mail:send", payload={"to": "b"})
        with anyio.fail_after(5):
            await runtime.drain()
        first_letter, second_letter = await runtime.dead_letters()
        assert await runtime.discard([first_letter, first_letter.id, "no-such-letter"]) == 1
        assert await runtime.discard(first_letter) == 0
        assert await runtime.dead_letters() == [second_letter]
        healthy.append(True)
        assert await runtime.redeliver() == 1
        with anyio.fail_after(5):
            await runtime.drain()
    assert delivered == [second]


async def test_discarding_a_letter_that_holds_its_key_lets_the_key_go_on(
    registry: Registry,
) -> None:
    """keyed_dead_letters="hold": discarding the holder runs the deliveries behind it."""
    delivered: list[int] = []

    async def receiver(event: Event) -> None:
        if event.payload["n"] == 1:
            raise ConnectionError("poison")
        delivered.append(event.payload["n"])

    registry.subscribe("order:paid", receiver, id="ledger", retry=ONCE)
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        await runtime.publish("order:paid", payload={"n": 1}, key="order-7")
        await runtime.publish("order:paid", payload={"n": 2}, key="order-7")
        with anyio.fail_after(5):
            await runtime.drain()
        assert delivered == []
        (letter,) = await runtime.dead_letters()
        assert await runtime.discard(letter.id) == 1
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.held_keys() == {}
    assert delivered == [2]


async def test_discard_deletes_letters_a_shared_store_holds(registry: Registry) -> None:
    """With a LeasedStore the letter goes from the store, and its delivery counts as done."""
    delivered: list[Event] = []
    _failing(registry, delivered, healthy=[])
    store = MemoryStore()
    async with EventRuntime(registry, store=store) as runtime:
        await runtime.publish("mail:send")
        with anyio.fail_after(5):
            await runtime.drain()
        (letter,) = await runtime.dead_letters()
        assert await runtime.discard([letter.id]) == 1
        assert await runtime.dead_letters() == []
        stats = await store.stats()
        assert (stats.done, stats.dead, stats.pending) == (1, 0, 0)


async def test_a_journal_store_cannot_discard(registry: Registry) -> None:
    """A journal-only store refuses with a StoreError naming it; the letter stays."""
    _failing(registry, [], healthy=[])
    async with EventRuntime(registry, store=JournalMemoryStore()) as runtime:
        await runtime.publish("mail:send")
        with anyio.fail_after(5):
            await runtime.drain()
        (letter,) = await runtime.dead_letters()
        with pytest.raises(StoreError, match="cannot discard dead letters"):
            await runtime.discard(letter)
        assert await runtime.dead_letters() == [letter]


async def test_discard_needs_a_running_runtime(registry: Registry) -> None:
    """Like redeliver(), discard() is refused once the runtime has stopped."""
    async with EventRuntime(registry) as runtime:
        pass
    with pytest.raises(RuntimeClosedError, match="discard"):
        await runtime.discard("any")
