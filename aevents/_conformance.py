"""The store protocol's conformance suite; public as ``aevents.testing.StoreConformance``.

Any store runs it by subclassing and saying how to make one::

    from aevents.testing import PersistentStoreConformance

    class TestMyStore(PersistentStoreConformance):  # StoreConformance if it forgets on close

        def make_store(self, directory):
            return MyStore(directory / "journal")

Its tests are ``@pytest.mark.anyio`` tests, so they run on every backend the
``anyio_backend`` fixture offers. ``make_store`` may be called more than once in
a test: for a persistent store, each call must return a store over the same
journal (the test closes one before opening the next).

The idempotency-key tests live in ``_conformance_idempotency`` and are mixed in here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from ._event import Event, make_event, new_event_id
from ._exceptions import StoreError
from ._policy import DeadLetter
from ._store._protocol import PendingDelivery, Store, StoreStats

pytest.register_assert_rewrite("aevents._conformance_idempotency")  # before the import
from ._conformance_idempotency import (  # noqa: E402
    IdempotencyConformance,
    PersistentIdempotencyConformance,
)

__all__ = ["PersistentStoreConformance", "StoreConformance"]

_LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def _event(
    name: str = "conformance:event", occurred_at: datetime | None = None, **payload: Any
) -> Event:
    if occurred_at is None:
        return make_event(name, payload, {"correlation_id": "c-1"})
    return Event(new_event_id(), name, payload, occurred_at, {})


def _letter(event: Event, receiver_id: str, *, failed_at: datetime | None = None) -> DeadLetter:
    return DeadLetter(
        id=new_event_id(),
        event=event,
        receiver_id=receiver_id,
        attempts=3,
        error_type="builtins.ValueError",
        error_message=f"{receiver_id} failed: ünïcode ✓",
        failed_at=failed_at or datetime.now(UTC),
    )


async def _pending(store: Store) -> list[PendingDelivery]:
    with anyio.fail_after(30):
        return [delivery async for delivery in store.pending()]


async def _keys(store: Store) -> list[tuple[str, str, int]]:
    return [(d.event.id, d.receiver_id, d.attempts) for d in await _pending(store)]


class StoreConformance(IdempotencyConformance):
    """The store protocol's tests; subclass it and implement ``make_store``."""

    def make_store(self, directory: Path) -> Store:
        """A new, unopened store keeping its journal (if any) under ``directory``."""
        raise NotImplementedError

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Callable[[], Store]:
        """Makes unopened stores over this test's journal."""
        return lambda: self.make_store(tmp_path)

    @pytest.fixture
    async def store(
        self, store_factory: Callable[[], Store], anyio_backend: object
    ) -> AsyncIterator[Store]:
        """An open store, closed after the test."""
        store = store_factory()
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    @pytest.mark.anyio
    async def test_append_without_receivers_records_only_the_event(self, store: Store) -> None:
        """An event with no receivers is counted but nothing is pending."""
        await store.append(_event(), [])
        assert await _pending(store) == []
        assert await store.stats() == StoreStats(events=1, pending=0, done=0, dead=0)

    @pytest.mark.anyio
    async def test_append_with_one_receiver_is_pending(self, store: Store) -> None:
        """One receiver gives one pending delivery with no attempts."""
        event = _event(user_id=1)
        await store.append(event, ["r"])
        assert await _pending(store) == [PendingDelivery(event, "r", 0)]

    @pytest.mark.anyio
    async def test_append_with_many_receivers_is_pending_once_each(self, store: Store) -> None:
        """Each distinct receiver id gets one delivery, in receiver id order."""
        event = _event()
        await store.append(event, ["b", "a", "c", "a"])
        assert await _pending(store) == [PendingDelivery(event, r, 0) for r in ("a", "b", "c")]
        assert (await store.stats()).pending == 3

    @pytest.mark.anyio
    async def test_pending_round_trips_the_event(self, store: Store) -> None:
        """Payload, metadata, name, id and time come back equal."""
        event = make_event(
            "user:account-primary-email:changed",
            {"nested": {"list": [1, 2.5, None, True], "text": "ünïcode ✓ \x00"}, "big": 2**62},
            {"correlation_id": "abc", "causation_id": "def", "traceparent": "00-1-2-01"},
        )
        await store.append(event, ["r"])
        (delivery,) = await _pending(store)
        assert delivery.event == event
        assert delivery.event.occurred_at == event.occurred_at

    @pytest.mark.anyio
    async def test_pending_follows_publish_order(self, store: Store) -> None:
        """Deliveries come back in the order their events were appended."""
        events = [_event(n=n) for n in range(30)]
        for n, event in enumerate(events):
            await store.append(event, [f"r{n % 3}"])
        assert [d.event for d in await _pending(store)] == events

    @pytest.mark.anyio
    async def test_pending_streams_more_than_a_page(self, store: Store) -> None:
        """Thousands of deliveries all come back, in order."""
        events = [_event(n=n) for n in range(700)]
        for event in events:
            await store.append(event, ["a", "b"])
        keys = await _keys(store)
        assert keys == [(event.id, r, 0) for event in events for r in ("a", "b")]

    @pytest.mark.anyio
    async def test_start_attempts_are_seen_by_pending(self, store: Store) -> None:
        """The highest attempt started is what pending reports."""
        event = _event()
        await store.append(event, ["a", "b"])
        await store.start_attempts([(event.id, "a", 1)])
        await store.start_attempts([(event.id, "a", 2), (event.id, "b", 1)])
        await store.start_attempts([(event.id, "a", 1)])  # late and lower: ignored
        assert await _keys(store) == [(event.id, "a", 2), (event.id, "b", 1)]

    @pytest.mark.anyio
    async def test_unknown_deliveries_are_ignored(self, store: Store) -> None:
        """Starting or completing a delivery the journal does not hold changes nothing."""
        event = _event()
        await store.append(event, ["a"])
        await store.start_attempts([(event.id, "nobody", 1), ("no-such-event", "a", 1)])
        await store.complete([(event.id, "nobody"), ("no-such-event", "a")])
        await store.start_attempts([])
        await store.complete([])
        assert await _keys(store) == [(event.id, "a", 0)]

    @pytest.mark.anyio
    async def test_complete_removes_from_pending(self, store: Store) -> None:
        """A completed delivery is done, the event's others stay pending."""
        event = _event()
        await store.append(event, ["a", "b"])
        await store.start_attempts([(event.id, "a", 1)])
        await store.complete([(event.id, "a")])
        assert await _keys(store) == [(event.id, "b", 0)]
        assert await store.stats() == StoreStats(events=1, pending=1, done=1, dead=0)

    @pytest.mark.anyio
    async def test_dead_letter_keeps_every_field(self, store: Store) -> None:
        """A dead letter comes back equal and its delivery leaves pending."""
        event = _event(order=7)
        await store.append(event, ["a", "b"])
        letter = _letter(event, "a")
        await store.dead_letter([letter])
        assert await store.dead_letters() == [letter]
        assert await _keys(store) == [(event.id, "b", 0)]
        assert await store.stats() == StoreStats(events=1, pending=1, done=0, dead=1)

    @pytest.mark.anyio
    async def test_dead_letter_for_an_unknown_event_records_it(self, store: Store) -> None:
        """A letter whose event was never appended is kept whole."""
        letter = _letter(_event(), "a")
        await store.dead_letter([letter])
        assert await store.dead_letters() == [letter]
        assert await store.stats() == StoreStats(events=1, pending=0, done=0, dead=1)

    @pytest.mark.anyio
    async def test_dead_letters_are_oldest_first_and_limited(self, store: Store) -> None:
        """Letters are ordered by failure time and ``limit`` caps them."""
        now = datetime.now(UTC)
        letters = [_letter(_event(), "r", failed_at=now - timedelta(minutes=m)) for m in (1, 3, 2)]
        await store.dead_letter(letters)
        expected = [letters[1], letters[2], letters[0]]
        assert await store.dead_letters() == expected
        assert await store.dead_letters(limit=2) == expected[:2]
        assert await store.dead_letters(limit=0) == []

    @pytest.mark.anyio
    async def test_a_new_letter_replaces_the_old_one_for_a_delivery(self, store: Store) -> None:
        """A delivery holds at most one dead letter: the latest."""
        event = _event()
        await store.append(event, ["a"])
        await store.dead_letter([_letter(event, "a")])
        newer = _letter(event, "a")
        await store.dead_letter([newer])
        assert await store.dead_letters() == [newer]

    @pytest.mark.anyio
    async def test_redeliver_some(self, store: Store) -> None:
        """Chosen letters become pending with no attempts; the rest stay dead."""
        first, second = _event(), _event()
        await store.append(first, ["a"])
        await store.append(second, ["a"])
        letters = [_letter(first, "a"), _letter(second, "a")]
        await store.dead_letter(letters)
        assert await store.redeliver([letters[1].id, "no-such-letter"]) == 1
        assert await _keys(store) == [(second.id, "a", 0)]
        assert await store.dead_letters() == [letters[0]]

    @pytest.mark.anyio
    async def test_redeliver_all(self, store: Store) -> None:
        """With no ids every letter becomes pending, in publish order."""
        events = [_event(), _event()]
        for event in events:
            await store.append(event, ["a", "b"])
            await store.start_attempts([(event.id, "a", 3)])
        await store.dead_letter([_letter(event, "a") for event in events])
        assert await store.redeliver() == 2
        assert await store.redeliver() == 0
        assert await _keys(store) == [(e.id, r, 0) for e in events for r in ("a", "b")]
        assert await store.dead_letters() == []

    @pytest.mark.anyio
    async def test_prune_drops_done_deliveries_of_old_events(self, store: Store) -> None:
        """Only done deliveries of events older than the cut go, and emptied events too."""
        old, recent = _event(occurred_at=_LONG_AGO), _event()
        for event in (old, recent):
            await store.append(event, ["done", "pending", "dead"])
            await store.complete([(event.id, "done")])
            await store.dead_letter([_letter(event, "dead")])
        gone = _event(occurred_at=_LONG_AGO)
        await store.append(gone, ["done"])
        await store.complete([(gone.id, "done")])
        assert await store.prune(older_than=_LONG_AGO + timedelta(days=1)) == 2
        assert await store.stats() == StoreStats(events=2, pending=2, done=1, dead=2)
        assert await store.prune() == 1
        assert await store.stats() == StoreStats(events=2, pending=2, done=0, dead=2)
        assert len(await store.dead_letters()) == 2
        assert [d.event.id for d in await _pending(store)] == [old.id, recent.id]

    @pytest.mark.anyio
    async def test_prune_drops_old_events_without_receivers(self, store: Store) -> None:
        """An old event that never had a delivery is pruned and counts nothing."""
        await store.append(_event(occurred_at=_LONG_AGO), [])
        await store.append(_event(), [])
        assert await store.prune(older_than=_LONG_AGO + timedelta(days=1)) == 0
        assert (await store.stats()).events == 1

    @pytest.mark.anyio
    async def test_a_duplicate_event_is_refused_alone(self, store: Store) -> None:
        """Appending an id twice raises StoreError and concurrent appends still land."""
        event = _event()
        await store.append(event, ["a"])
        others = [_event(n=n) for n in range(20)]
        failures: list[BaseException] = []

        async def append_duplicate() -> None:
            try:
                await store.append(event, ["b"])
            except StoreError as error:
                failures.append(error)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for other in others[:10]:
                    group.start_soon(store.append, other, ["a"])
                group.start_soon(append_duplicate)
                for other in others[10:]:
                    group.start_soon(store.append, other, ["a"])
        assert len(failures) == 1
        assert sorted(await _keys(store)) == sorted((e.id, "a", 0) for e in [event, *others])

    @pytest.mark.anyio
    async def test_concurrent_appends_are_all_visible(self, store: Store) -> None:
        """500 appends made at once are all pending afterwards."""
        events = [_event(n=n) for n in range(500)]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for event in events:
                    group.start_soon(store.append, event, ["r"])
        assert sorted(d.event.id for d in await _pending(store)) == sorted(e.id for e in events)
        assert await store.stats() == StoreStats(events=500, pending=500, done=0, dead=0)

    @pytest.mark.anyio
    async def test_concurrent_mixed_calls_settle(self, store: Store) -> None:
        """Appends, attempts and completions racing each other end consistent."""
        events = [_event(n=n) for n in range(200)]
        for event in events[:100]:
            await store.append(event, ["r"])

        async def finish(event: Event) -> None:
            await store.start_attempts([(event.id, "r", 1)])
            await store.complete([(event.id, "r")])

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for old, new in zip(events[:100], events[100:], strict=True):
                    group.start_soon(finish, old)
                    group.start_soon(store.append, new, ["r"])
                    group.start_soon(store.stats)
        assert sorted(await _keys(store)) == sorted((event.id, "r", 0) for event in events[100:])
        assert await store.stats() == StoreStats(events=200, pending=100, done=100, dead=0)

    @pytest.mark.anyio
    async def test_writes_while_iterating_pending_are_safe(self, store: Store) -> None:
        """Completing deliveries while streaming pending neither fails nor repeats any."""
        events = [_event(n=n) for n in range(600)]
        for event in events:
            await store.append(event, ["r"])
        seen = []
        with anyio.fail_after(30):
            async for delivery in store.pending():
                seen.append(delivery.event.id)
                await store.complete([(delivery.event.id, "r")])
        assert seen == [event.id for event in events]
        assert await _pending(store) == []

    @pytest.mark.anyio
    async def test_stats_count_each_state(self, store: Store) -> None:
        """Stats count events and deliveries by state."""
        event = _event()
        await store.append(event, ["a", "b", "c", "d"])
        await store.append(_event(), [])
        await store.complete([(event.id, "a"), (event.id, "b")])
        await store.dead_letter([_letter(event, "c")])
        assert await store.stats() == StoreStats(events=2, pending=1, done=2, dead=1)

    @pytest.mark.anyio
    async def test_close_is_idempotent_and_final(self, store: Store) -> None:
        """Closing twice is fine; using a closed store raises StoreError."""
        await store.close()
        await store.close()
        with pytest.raises(StoreError):
            await store.append(_event(), ["r"])
        with pytest.raises(StoreError):
            await store.stats()

    @pytest.mark.anyio
    async def test_a_store_is_unusable_before_open(
        self, store_factory: Callable[[], Store], anyio_backend: object
    ) -> None:
        """Calls before ``open`` raise StoreError; ``close`` is a no-op."""
        store = store_factory()
        with pytest.raises(StoreError):
            await store.append(_event(), ["r"])
        with pytest.raises(StoreError):
            await _pending(store)
        await store.close()

    @pytest.mark.anyio
    async def test_pending_is_a_snapshot_taken_when_iteration_begins(
        self, store: Store, anyio_backend: object
    ) -> None:
        """Events appended while pending() streams are not yielded by it, however many pages."""
        before = [_event(n=n) for n in range(1_100)]  # more than one page of any sane size
        for event in before:
            await store.append(event, ["r"])
        stream = store.pending().__aiter__()
        first = await stream.__anext__()
        after = [_event(n=n) for n in range(5)]
        for event in after:
            await store.append(event, ["r"])
        with anyio.fail_after(30):
            rest = [delivery async for delivery in stream]
        seen = [first.event.id, *(delivery.event.id for delivery in rest)]
        assert seen == [event.id for event in before]
        assert [d.event.id for d in await _pending(store)][-5:] == [e.id for e in after]


class PersistentStoreConformance(StoreConformance, PersistentIdempotencyConformance):
    """``StoreConformance`` plus what a store that survives ``close()`` must do.

    Each ``make_store()`` call must return a store over the same journal.
    """

    @pytest.mark.anyio
    async def test_reopening_keeps_everything(
        self, store_factory: Callable[[], Store], anyio_backend: object
    ) -> None:
        """A persistent journal holds events, attempts, completions and letters across close."""
        store = store_factory()
        await store.open()
        try:
            events = [_event(n=n) for n in range(3)]
            for event in events:
                await store.append(event, ["a", "b"])
            await store.start_attempts([(events[0].id, "a", 2)])
            await store.complete([(events[1].id, "a")])
            letter = _letter(events[2], "b")
            await store.dead_letter([letter])
            before = (await _pending(store), await store.stats())
        finally:
            await store.close()
        again = store_factory()
        await again.open()
        try:
            assert (await _pending(again), await again.stats()) == before
            assert await again.dead_letters() == [letter]
            more = _event()
            await again.append(more, ["a"])  # sequence numbers carry on after a reopen
            assert (await _pending(again))[-1].event == more
        finally:
            await again.close()
