"""The store conformance suite's idempotency-key tests, as mixins.

``StoreConformance`` inherits ``IdempotencyConformance`` and
``PersistentStoreConformance`` inherits ``PersistentIdempotencyConformance``,
so every store that runs the suite runs these; they use those classes' ``store``
and ``store_factory`` fixtures. A module of its own to keep each file readable
in a sitting.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from ._event import Event, make_event, new_event_id
from ._exceptions import StoreError
from ._policy import DeadLetter
from ._store._protocol import PendingDelivery, Store

__all__ = ["IdempotencyConformance", "PersistentIdempotencyConformance"]

_T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
_EVER = datetime(2000, 1, 1, tzinfo=UTC)


def _keyed(key: str, occurred_at: datetime | None = None, **payload: Any) -> Event:
    """An event published with ``key``, now or at ``occurred_at``."""
    metadata = {"correlation_id": "c-1", "idempotency_key": key}
    if occurred_at is None:
        return make_event("conformance:keyed", payload, metadata)
    return Event(new_event_id(), "conformance:keyed", payload, occurred_at, metadata)


def _at(minutes: float) -> datetime:
    return _T0 + timedelta(minutes=minutes)


async def _pending(store: Store) -> list[PendingDelivery]:
    with anyio.fail_after(30):
        return [delivery async for delivery in store.pending()]


async def _recent(store: Store, since: datetime = _EVER, limit: int = 1000) -> list[Event]:
    with anyio.fail_after(30):
        return await store.recent_idempotency_keys(since, limit)


class IdempotencyConformance:
    """What every store does with ``metadata["idempotency_key"]``."""

    @pytest.mark.anyio
    async def test_append_records_the_key_of_a_keyed_event(self, store: Store) -> None:
        """Only events appended with a key come back from recent_idempotency_keys, whole."""
        keyed = _keyed("order-7-paid", order=7, nested={"list": [1, 2.5, None]})
        await store.append(make_event("conformance:plain", {}, {}), ["r"])
        await store.append(keyed, ["r"])
        assert await _recent(store) == [keyed]
        assert (await store.stats()).idempotency_keys == 1

    @pytest.mark.anyio
    async def test_a_key_recorded_keeps_its_first_event(self, store: Store) -> None:
        """A second event with the same key is journaled but does not replace the record."""
        first, second = _keyed("k", n=1), _keyed("k", n=2)
        await store.append(first, ["r"])
        await store.append(second, ["r"])
        assert await _recent(store) == [first]
        assert [d.event for d in await _pending(store)] == [first, second]

    @pytest.mark.anyio
    async def test_keys_from_an_event_with_no_receivers_are_recorded(self, store: Store) -> None:
        """An event appended without deliveries still records its key."""
        event = _keyed("nobody-listens")
        await store.append(event, [])
        assert await _recent(store) == [event]

    @pytest.mark.anyio
    async def test_recent_keys_are_the_newest_oldest_first(self, store: Store) -> None:
        """``since`` is inclusive, ``limit`` keeps the newest, and the answer is oldest first."""
        events = [_keyed(f"key-{minutes}", _at(minutes)) for minutes in (5, 1, 4, 2, 3)]
        for event in events:
            await store.append(event, ["r"])
        by_time = sorted(events, key=lambda event: event.occurred_at)
        assert await _recent(store) == by_time
        assert await _recent(store, since=_at(2)) == by_time[1:]
        assert await _recent(store, since=_at(2), limit=2) == by_time[3:]
        assert await _recent(store, since=_at(5)) == by_time[4:]
        assert await _recent(store, since=_at(5.5)) == []
        assert await _recent(store, limit=0) == []

    @pytest.mark.anyio
    async def test_records_of_the_same_time_keep_append_order(self, store: Store) -> None:
        """Events that occurred at the same instant come back in the order they were appended."""
        events = [_keyed(key, _at(0)) for key in ("c", "a", "b", "d")]
        for event in events:
            await store.append(event, [])
        assert await _recent(store) == events
        assert await _recent(store, limit=2) == events[2:]

    @pytest.mark.anyio
    async def test_keys_are_any_str_compared_exactly(self, store: Store) -> None:
        """Unicode, quotes, wildcards and 200 characters round-trip; near-equal keys stay apart."""
        keys = [
            "order-7-paid",
            "ORDER-7-PAID",
            "commande-7-payée",  # precomposed é
            "commande-7-paye\u0301",  # e + combining acute: the same text, not the same key
            "注文-7 👩‍💻",
            'it\'s "quoted"; DROP TABLE idempotency; --',
            "100%_",
            "1%_",
            "x" * 200,
            "é" * 200,
        ]
        events = [_keyed(key, _at(n)) for n, key in enumerate(keys)]
        for event in events:
            await store.append(event, ["r"])
        for key in keys:  # one more of each: none may be taken for another's
            await store.append(_keyed(key, _at(99)), ["r"])
        recent = await _recent(store)
        assert recent == events
        assert [event.metadata["idempotency_key"] for event in recent] == keys

    @pytest.mark.anyio
    async def test_a_refused_append_records_no_key(self, store: Store) -> None:
        """When an append fails (a duplicate event id) its key is not recorded either."""
        event = make_event("conformance:plain", {}, {})
        await store.append(event, ["r"])
        again = Event(event.id, event.name, {}, event.occurred_at, {"idempotency_key": "k"})
        with pytest.raises(StoreError):
            await store.append(again, ["r"])
        assert await _recent(store) == []
        later = _keyed("k")
        await store.append(later, ["r"])
        assert await _recent(store) == [later]

    @pytest.mark.anyio
    async def test_concurrent_appends_of_one_key_record_one_event(self, store: Store) -> None:
        """Racing appends with the same key all land, and exactly one of them holds the key."""
        racing = [_keyed("same", n=n) for n in range(40)]
        others = [_keyed(f"other-{n}", n=n) for n in range(40)]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for mine, other in zip(racing, others, strict=True):
                    group.start_soon(store.append, mine, ["r"])
                    group.start_soon(store.append, other, ["r"])
        recent = await _recent(store)
        assert len(recent) == 41
        assert sum(event in racing for event in recent) == 1
        assert (await store.stats()).pending == 80

    @pytest.mark.anyio
    async def test_forget_drops_records_older_than_the_cut(self, store: Store) -> None:
        """Records of events before ``before`` go (counted); the rest and all deliveries stay."""
        events = [_keyed(f"key-{minutes}", _at(minutes)) for minutes in range(5)]
        for event in events:
            await store.append(event, ["r"])
        assert await store.forget_idempotency_keys(_at(2)) == 2
        assert await _recent(store) == events[2:]
        assert await store.forget_idempotency_keys(_at(2)) == 0
        assert (await store.stats()).pending == 5
        assert (await store.stats()).idempotency_keys == 3
        assert await store.forget_idempotency_keys(_at(60)) == 3
        assert await _recent(store) == []

    @pytest.mark.anyio
    async def test_a_forgotten_key_can_be_recorded_again(self, store: Store) -> None:
        """Once forgotten, the next event appended with the key holds it."""
        old, new = _keyed("k", _at(0)), _keyed("k", _at(10))
        await store.append(old, ["r"])
        assert await store.forget_idempotency_keys(_at(5)) == 1
        await store.append(new, ["r"])
        assert await _recent(store) == [new]

    @pytest.mark.anyio
    async def test_key_records_outlive_delivery_state_and_prune(self, store: Store) -> None:
        """Completing, dead-lettering, redelivering and pruning an event leave its key record."""
        done, dead = _keyed("done", _at(0)), _keyed("dead", _at(1))
        await store.append(done, ["r"])
        await store.append(dead, ["r"])
        await store.complete([(done.id, "r")])
        failed_at = datetime.now(UTC)
        await store.dead_letter([DeadLetter(new_event_id(), dead, "r", 1, "E", "m", failed_at)])
        assert await store.prune() == 1
        assert (await store.stats()).events == 1
        assert await _recent(store) == [done, dead]
        assert await store.redeliver() == 1
        assert await _recent(store) == [done, dead]

    @pytest.mark.anyio
    async def test_key_calls_on_a_closed_store_raise(self, store: Store) -> None:
        """Reading or forgetting keys needs an open store, like every other call."""
        await store.close()
        with pytest.raises(StoreError):
            await store.recent_idempotency_keys(_EVER, 10)
        with pytest.raises(StoreError):
            await store.forget_idempotency_keys(_EVER)


class PersistentIdempotencyConformance(IdempotencyConformance):
    """``IdempotencyConformance`` plus: key records survive ``close()``."""

    @pytest.mark.anyio
    async def test_key_records_survive_reopening(
        self, store_factory: Callable[[], Store], anyio_backend: object
    ) -> None:
        """Recorded keys, forgotten keys and first-event-wins all hold across close and open."""
        first = [_keyed(f"key-{minutes}", _at(minutes)) for minutes in range(4)]
        store = store_factory()
        await store.open()
        try:
            for event in first:
                await store.append(event, ["r"])
            assert await store.forget_idempotency_keys(_at(1)) == 1
        finally:
            await store.close()
        again = store_factory()
        await again.open()
        try:
            assert await _recent(again) == first[1:]
            await again.append(_keyed("key-3", _at(9)), ["r"])  # still taken after reopening
            assert await _recent(again, limit=1) == first[3:]
            assert (await again.stats()).idempotency_keys == 3
        finally:
            await again.close()
