"""The conformance suite of ``LeasedStore``, the queue that several processes share.

A store runs it by subclassing and saying how to make one that reads the time
from the clock the suite gives it, so that leases, retries and registrations
run out on cue, never by sleeping::

    class TestMyStoreLeases(LeasedStoreConformance):
        def make_leased_store(self, directory, clock):
            return MyStore(directory / "journal", clock=clock)

A store that several processes can open inherits ``TwoProcessLeasedConformance``
instead, and also says, as a Python expression, how a fresh interpreter makes
the same store: its cases run a consumer in a child process, one that dies
holding leases and one that claims while this process claims too. The memory
store holds its data in one process and cannot run them; ``SQLiteStore`` will.

Its tests are ``@pytest.mark.anyio`` tests, so they run on every backend the
``anyio_backend`` fixture offers.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from ._event import Event, make_event, new_event_id
from ._exceptions import StoreError
from ._policy import DeadLetter
from ._store._protocol import (
    Backlog,
    Claim,
    Clock,
    Completed,
    ConsumerId,
    DeadLettered,
    Lease,
    LeasedStore,
    Outcome,
    Released,
    Rescheduled,
    Route,
    StoreStats,
    new_consumer_id,
)

__all__ = [
    "ClaimAndStartConformance",
    "LeasedStoreConformance",
    "ManualClock",
    "PublishAndClaimConformance",
    "TwoProcessLeasedConformance",
    "claim_in_another_process",
]

LEASE = 30.0  # seconds a claim holds its deliveries
TTL = 60.0  # seconds a registration lasts without a heartbeat
_T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
_LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


class ManualClock:
    """A clock that moves only when told: what a store under test reads the time from."""

    def __init__(self, start: datetime = _T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the time on by ``seconds``."""
        self.now += timedelta(seconds=seconds)


def _event(n: int = 0, key: str | None = None, *, at: datetime | None = None) -> Event:
    if at is None:
        return make_event("conformance:event", {"n": n}, {"correlation_id": "c-1"}, key)
    return Event(new_event_id(), "conformance:event", {"n": n}, at, {}, key)


def _keyed(n: int, idempotency_key: str) -> Event:
    return make_event("conformance:keyed", {"n": n}, {"idempotency_key": idempotency_key})


def _routes(*receiver_ids: str) -> list[Route]:
    return [Route("conformance:**", receiver_id) for receiver_id in receiver_ids]


def _seen(claims: Sequence[Claim]) -> list[tuple[str, str, int, bool]]:
    """``(event id, receiver id, attempt, lease expired)`` of each claim."""
    return [(c.event.id, c.receiver_id, c.attempt, c.lease_expired) for c in claims]


async def _publish(store: LeasedStore, events: Sequence[Event], *receivers: str) -> list[Event]:
    return await store.publish([(event, receivers) for event in events])


async def _consumer(store: LeasedStore, *receiver_ids: str) -> ConsumerId:
    consumer = new_consumer_id()
    await store.register(consumer, _routes(*receiver_ids), ttl=TTL)
    return consumer


async def _claim(store: LeasedStore, consumer: ConsumerId, limit: int = 100) -> list[Claim]:
    return await store.claim(consumer, limit, lease=LEASE)


def _capability(store: LeasedStore, name: str) -> Callable[..., Awaitable[Any]]:
    """The store's optional call ``name`` (``publish_and_claim``, ``claim_and_start``),
    which a store whose tests mix in that call's cases must offer."""
    method = getattr(store, name, None)
    assert callable(method), f"{type(store).__name__} has no {name}, yet its tests check it"
    return cast("Callable[..., Awaitable[Any]]", method)


async def _publish_and_claim(
    store: LeasedStore,
    consumer: ConsumerId,
    events: Sequence[Event],
    *receivers: str,
    limit: int = 100,
    start: int = 0,
) -> tuple[list[Event], list[Claim], list[Claim]]:
    method = _capability(store, "publish_and_claim")
    result: tuple[list[Event], list[Claim], list[Claim]] = await method(
        [(event, receivers) for event in events], consumer, limit=limit, lease=LEASE, start=start
    )
    return result


def _letter(claim: Claim, attempts: int, now: datetime) -> DeadLetter:
    return DeadLetter(
        id=new_event_id(),
        event=claim.event,
        receiver_id=claim.receiver_id,
        attempts=attempts,
        error_type="builtins.RuntimeError",
        error_message="its process stopped during every attempt",
        failed_at=now,
    )


class LeasedStoreConformance:
    """The leased-delivery tests; subclass it and implement ``make_leased_store``."""

    def make_leased_store(self, directory: Path, clock: Clock) -> LeasedStore:
        """A new, unopened store under ``directory`` that reads the time from ``clock``."""
        raise NotImplementedError

    @pytest.fixture
    def clock(self) -> ManualClock:
        """The time every store of the test reads."""
        return ManualClock()

    @pytest.fixture
    async def leased_store(
        self, tmp_path: Path, clock: ManualClock, anyio_backend: object
    ) -> AsyncIterator[LeasedStore]:
        """An open store, closed after the test."""
        store = self.make_leased_store(tmp_path, clock)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    # ------------------------------------------------------------------ claim and settle

    @pytest.mark.anyio
    async def test_a_claimed_delivery_is_done_once_completed(
        self, leased_store: LeasedStore
    ) -> None:
        """Claims come in receiver id order with attempt 1, and completing them finishes them."""
        event = _event(key="k")
        await _publish(leased_store, [event], "b", "a")
        consumer = await _consumer(leased_store, "a", "b")
        claims = await _claim(leased_store, consumer)
        assert [(c.event, c.receiver_id, c.attempt, c.lease_expired) for c in claims] == [
            (event, "a", 1, False),
            (event, "b", 1, False),
        ]
        assert await leased_store.settle(consumer, [Completed(c) for c in claims]) == []
        assert await _claim(leased_store, consumer) == []
        assert await leased_store.stats() == StoreStats(events=1, pending=0, done=2, dead=0)

    @pytest.mark.anyio
    async def test_a_consumer_claims_only_the_receivers_it_registered(
        self, leased_store: LeasedStore
    ) -> None:
        """Deliveries to receivers a consumer does not run are left for the ones that do."""
        event = _event()
        await _publish(leased_store, [event], "mine", "theirs")
        mine, theirs = await _consumer(leased_store, "mine"), await _consumer(leased_store, "x")
        assert _seen(await _claim(leased_store, mine)) == [(event.id, "mine", 1, False)]
        assert await _claim(leased_store, theirs) == []

    @pytest.mark.anyio
    async def test_claiming_without_registering_raises_store_error(
        self, leased_store: LeasedStore
    ) -> None:
        """A consumer the store does not know cannot claim."""
        await _publish(leased_store, [_event()], "r")
        with pytest.raises(StoreError):
            await _claim(leased_store, new_consumer_id())

    @pytest.mark.anyio
    async def test_a_claim_takes_at_most_limit_deliveries_in_publish_order(
        self, leased_store: LeasedStore
    ) -> None:
        """Batches hold ``limit`` claims or fewer, oldest first, and never the same one twice."""
        events = [_event(n) for n in range(25)]
        await _publish(leased_store, events, "r")
        consumer = await _consumer(leased_store, "r")
        batches = [await _claim(leased_store, consumer, 10) for _ in range(4)]
        assert [len(batch) for batch in batches] == [10, 10, 5, 0]
        assert [c.event for batch in batches for c in batch] == events
        assert await _claim(leased_store, consumer, 0) == []

    @pytest.mark.anyio
    async def test_concurrent_claims_never_hand_out_a_delivery_twice(
        self, leased_store: LeasedStore
    ) -> None:
        """Two consumers claiming from many tasks at once share the deliveries without overlap."""
        events = [_event(n) for n in range(150)]
        await _publish(leased_store, events, "a", "b")
        consumers = [await _consumer(leased_store, "a", "b") for _ in range(2)]
        taken: list[tuple[str, str]] = []

        async def claim_until_empty(consumer: ConsumerId) -> None:
            while claims := await _claim(leased_store, consumer, 7):
                taken.extend((c.event.id, c.receiver_id) for c in claims)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for consumer in consumers * 3:
                    group.start_soon(claim_until_empty, consumer)
        assert sorted(taken) == sorted((e.id, r) for e in events for r in ("a", "b"))

    @pytest.mark.anyio
    async def test_a_batch_of_starts_and_settles_returns_exactly_the_claims_not_held(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Among many claims started or settled in one call, those another consumer took
        come back, in the order given, and change nothing; the others take effect."""
        events = [_event(n) for n in range(6)]
        await _publish(leased_store, events, "r")
        first = await _consumer(leased_store, "r")
        claims = await leased_store.claim(first, 6, lease=1.0)
        clock.advance(2.0)
        second = await _consumer(leased_store, "r")
        taken = await leased_store.claim(second, 2, lease=LEASE)  # the first two
        assert [c.event for c in taken] == events[:2]
        assert await leased_store.start(first, claims) == claims[:2]
        assert await leased_store.renew(first, claims[2:], lease=LEASE) == []
        outcomes = [Completed(c) for c in claims[:4]] + [Released(c) for c in claims[4:]]
        assert await leased_store.settle(first, outcomes) == claims[:2]
        assert await leased_store.start(second, taken) == []
        assert await leased_store.settle(second, [Completed(c) for c in taken]) == []
        assert await leased_store.stats() == StoreStats(events=6, pending=2, done=4, dead=0)
        again = await _claim(leased_store, first)
        assert _seen(again) == [(event.id, "r", 1, False) for event in events[4:]]  # uncounted

    @pytest.mark.anyio
    async def test_claims_carry_the_event_as_published(self, leased_store: LeasedStore) -> None:
        """Payload, metadata, key, id and time come back equal."""
        event = make_event(
            "user:account-primary-email:changed",
            {"nested": {"list": [1, 2.5, None, True], "text": "ünïcode ✓"}, "big": 2**62},
            {"correlation_id": "abc", "causation_id": "def"},
            "user-7",
        )
        await leased_store.publish([(event, ["r"])])
        consumer = new_consumer_id()
        await leased_store.register(consumer, [Route("user:**", "r")], ttl=TTL)
        (claim,) = await _claim(leased_store, consumer)
        assert claim.event == event
        assert (claim.event.key, claim.event.occurred_at) == (event.key, event.occurred_at)

    @pytest.mark.anyio
    async def test_settling_a_claim_not_held_returns_it(self, leased_store: LeasedStore) -> None:
        """Settling or renewing what the consumer does not hold changes nothing and says so."""
        event = _event()
        await _publish(leased_store, [event], "r")
        consumer = await _consumer(leased_store, "r")
        stranger = Claim(_event(), "r", 1, False)
        wrong_attempt = Claim(event, "r", 2, False)
        (claim,) = await _claim(leased_store, consumer)
        assert await leased_store.renew(consumer, [stranger], lease=LEASE) == [stranger]
        outcomes = [Completed(stranger), Completed(wrong_attempt)]
        assert await leased_store.settle(consumer, outcomes) == [stranger, wrong_attempt]
        assert await leased_store.settle(consumer, []) == []
        assert await leased_store.settle(consumer, [Completed(claim)]) == []
        assert await leased_store.settle(consumer, [Completed(claim)]) == [claim]

    @pytest.mark.anyio
    async def test_a_lost_claim_among_held_ones_is_returned_and_the_rest_applied(
        self, leased_store: LeasedStore
    ) -> None:
        """One call that starts or settles several claims treats each on its own: the
        one not held is returned, unchanged, and the held ones before and after it are
        started or settled (a store that writes a batch at once must not fail them all)."""
        events = [_event() for _ in range(3)]
        await _publish(leased_store, events, "r")
        consumer = await _consumer(leased_store, "r")
        first, second, third = await _claim(leased_store, consumer)
        lost = Claim(second.event, "r", 2, False)  # not the attempt held
        assert await leased_store.start(consumer, [first, lost, third]) == [lost]
        assert await leased_store.start(consumer, [second]) == []
        outcomes: list[Outcome] = [Completed(first), Completed(lost), Rescheduled(third, 0.0)]
        assert await leased_store.settle(consumer, outcomes) == [lost]
        leases = await leased_store.leases()
        assert [(lease.event_id, lease.attempt) for lease in leases] == [(second.event.id, 1)]
        assert await leased_store.settle(consumer, [Released(second)]) == []
        again = await _claim(leased_store, consumer)
        assert sorted((c.event.id, c.attempt) for c in again) == sorted(
            [(second.event.id, 1), (third.event.id, 2)]
        )

    # --------------------------------------------------------------------- leases and time

    @pytest.mark.anyio
    async def test_an_expired_lease_passes_to_another_consumer_with_its_attempt_counted(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """A started attempt whose lease ran out is claimed again as attempt 2, marked as
        expired; its first holder lost it."""
        event = _event()
        await _publish(leased_store, [event], "r")
        first, second = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        (lost,) = await _claim(leased_store, first)
        assert await leased_store.start(first, [lost]) == []
        clock.advance(LEASE - 1)
        assert await _claim(leased_store, second) == []
        clock.advance(2)
        (taken,) = await _claim(leased_store, second)
        assert _seen([taken]) == [(event.id, "r", 2, True)]
        assert await leased_store.start(first, [lost]) == [lost]
        assert await leased_store.settle(first, [Completed(lost)]) == [lost]
        assert await leased_store.settle(second, [Completed(taken)]) == []
        assert (await leased_store.stats()).done == 1

    @pytest.mark.anyio
    async def test_a_lease_that_ran_out_is_found_behind_live_leases_of_earlier_deliveries(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """A claim of one takes the delivery whose short lease ran out, even when earlier
        deliveries are held under live leases that end a moment later."""
        events = [_event(n) for n in range(3)]
        await _publish(leased_store, events, "r")
        live, dead, third = [await _consumer(leased_store, "r") for _ in range(3)]
        held = await leased_store.claim(live, 2, lease=1.5)
        assert [claim.event for claim in held] == events[:2]
        (lost,) = await leased_store.claim(dead, 1, lease=1.0)
        clock.advance(1.0)
        (taken,) = await leased_store.claim(third, 1, lease=LEASE)
        assert _seen([taken]) == [(events[2].id, "r", 1, False)]
        assert await leased_store.renew(live, held, lease=LEASE) == []
        assert await leased_store.renew(dead, [lost], lease=LEASE) == [lost]

    @pytest.mark.anyio
    async def test_a_claim_never_started_costs_no_attempt_when_its_lease_runs_out(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Only a started attempt counts: a claim whose holder died before starting it
        (prefetched, say) is claimed again as attempt 1, not marked as expired."""
        event = _event()
        await _publish(leased_store, [event], "r")
        first, second = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        (lost,) = await _claim(leased_store, first)
        clock.advance(LEASE + 1)
        (taken,) = await _claim(leased_store, second)
        assert _seen([taken]) == [(event.id, "r", 1, False)]
        assert await leased_store.start(first, [lost]) == [lost]  # not held any more
        assert await leased_store.start(second, [taken]) == []
        assert await leased_store.settle(second, [Completed(taken)]) == []
        assert (await leased_store.stats()).done == 1

    @pytest.mark.anyio
    async def test_starting_counts_an_attempt_once_and_only_for_its_holder(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """``start`` is idempotent, refuses claims not held, and the attempt stays counted."""
        event = _event()
        await _publish(leased_store, [event], "r")
        holder, other = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, holder)
        stranger = Claim(_event(), "r", 1, False)
        wrong_attempt = Claim(event, "r", 2, False)
        assert await leased_store.start(holder, []) == []
        assert await leased_store.start(other, [claim]) == [claim]
        assert await leased_store.start(holder, [stranger, wrong_attempt]) == [
            stranger,
            wrong_attempt,
        ]
        assert await leased_store.start(holder, [claim]) == []
        assert await leased_store.start(holder, [claim]) == []  # twice: counted once
        assert await leased_store.renew(holder, [claim], lease=LEASE) == []
        assert [lease.attempt for lease in await leased_store.leases()] == [1]
        assert await leased_store.settle(holder, [Rescheduled(claim, 0.0)]) == []
        (again,) = await _claim(leased_store, other)
        assert _seen([again]) == [(event.id, "r", 2, False)]
        assert [lease.attempt for lease in await leased_store.leases()] == [2]

    @pytest.mark.anyio
    async def test_a_renewed_lease_keeps_live_work_from_being_stolen(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Renewal moves the expiry on; only past the renewed expiry may another claim it."""
        await _publish(leased_store, [_event()], "r")
        holder, other = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, holder)
        assert await leased_store.start(holder, [claim]) == []
        clock.advance(LEASE - 10)
        assert await leased_store.renew(holder, [claim], lease=LEASE) == []
        clock.advance(LEASE - 1)  # past the first expiry, before the renewed one
        assert await _claim(leased_store, other) == []
        clock.advance(2)
        (taken,) = await _claim(leased_store, other)
        assert taken.attempt == 2
        assert await leased_store.renew(holder, [claim], lease=LEASE) == [claim]

    @pytest.mark.anyio
    async def test_the_holder_of_a_lease_that_ran_out_may_settle_it_until_it_is_taken(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """An expired lease nobody claimed yet still belongs to its holder."""
        await _publish(leased_store, [_event()], "r")
        holder, other = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, holder)
        clock.advance(LEASE + 1)
        assert await leased_store.renew(holder, [claim], lease=LEASE) == []
        assert await _claim(leased_store, other) == []
        assert await leased_store.settle(holder, [Completed(claim)]) == []
        assert (await leased_store.stats()).done == 1

    @pytest.mark.anyio
    async def test_a_rescheduled_delivery_waits_for_its_time_and_keeps_its_attempts(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """A retry is claimable from its time on, as the next attempt."""
        event = _event()
        await _publish(leased_store, [event], "r")
        consumer = await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, consumer)
        assert await leased_store.start(consumer, [claim]) == []
        assert await leased_store.settle(consumer, [Rescheduled(claim, 20.0)]) == []
        clock.advance(19)
        assert await _claim(leased_store, consumer) == []
        clock.advance(2)
        assert _seen(await _claim(leased_store, consumer)) == [(event.id, "r", 2, False)]

    @pytest.mark.anyio
    async def test_a_released_claim_is_ready_again_with_its_attempt_uncounted(
        self, leased_store: LeasedStore
    ) -> None:
        """Releasing undoes the claim, started or not: the next one is attempt 1 again."""
        event = _event()
        await _publish(leased_store, [event], "r")
        consumer = await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, consumer)
        assert await leased_store.settle(consumer, [Released(claim)]) == []
        (claim,) = await _claim(leased_store, consumer)
        assert _seen([claim]) == [(event.id, "r", 1, False)]
        assert await leased_store.start(consumer, [claim]) == []
        assert await leased_store.settle(consumer, [Released(claim)]) == []
        assert _seen(await _claim(leased_store, consumer)) == [(event.id, "r", 1, False)]

    @pytest.mark.anyio
    async def test_a_delivery_whose_process_dies_on_every_attempt_ends_as_one_dead_letter(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Attempts carry across consumers; the claimer of attempt attempts+1 buries it unrun."""
        attempts = 3
        event = _event()
        await _publish(leased_store, [event], "poison", "fine")
        for attempt in range(1, attempts + 1):
            process = await _consumer(leased_store, "poison")  # a new process each time
            claims = await _claim(leased_store, process)
            assert _seen(claims) == [(event.id, "poison", attempt, attempt > 1)]
            assert await leased_store.start(process, claims) == []
            clock.advance(LEASE + 1)  # it died mid-receiver: the lease runs out
        survivor = await _consumer(leased_store, "poison")
        (claim,) = await _claim(leased_store, survivor)
        assert (claim.attempt, claim.lease_expired) == (attempts + 1, True)
        letter = _letter(claim, attempts, clock())
        assert await leased_store.settle(survivor, [DeadLettered(claim, letter)]) == []
        assert await leased_store.dead_letters() == [letter]
        assert await _claim(leased_store, survivor) == []
        assert await leased_store.stats() == StoreStats(events=1, pending=1, done=0, dead=1)

    @pytest.mark.anyio
    async def test_a_poison_delivery_costs_the_claims_prefetched_beside_it_nothing(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Each process claims the poison delivery and others, starts only the poison one,
        and dies: the others come back at attempt 1 every time, the poison one runs out."""
        attempts = 3
        poison, *others = [_event(n) for n in range(5)]
        await _publish(leased_store, [poison, *others], "r")
        for attempt in range(1, attempts + 1):
            process = await _consumer(leased_store, "r")
            claims = await _claim(leased_store, process)
            assert _seen(claims) == [(poison.id, "r", attempt, attempt > 1)] + [
                (e.id, "r", 1, False) for e in others
            ]
            assert await leased_store.start(process, claims[:1]) == []
            clock.advance(LEASE + 1)  # it died in the poison receiver
        survivor = await _consumer(leased_store, "r")
        claims = await _claim(leased_store, survivor)
        assert _seen(claims) == [(poison.id, "r", attempts + 1, True)] + [
            (e.id, "r", 1, False) for e in others
        ]

    # ----------------------------------------------------------------------- per-key order

    @pytest.mark.anyio
    async def test_a_key_is_claimed_one_delivery_at_a_time_in_publish_order(
        self, leased_store: LeasedStore
    ) -> None:
        """The next delivery of a key is claimable once the one before it is done."""
        k1, j1, k2, free, k3 = (
            _event(1, "k"),
            _event(2, "j"),
            _event(3, "k"),
            _event(4),
            _event(5, "k"),
        )
        await _publish(leased_store, [k1, j1, k2, free, k3], "r")
        consumer = await _consumer(leased_store, "r")
        first = await _claim(leased_store, consumer)
        assert [c.event for c in first] == [k1, j1, free]
        await leased_store.settle(consumer, [Completed(first[0])])
        second = await _claim(leased_store, consumer)
        assert [c.event for c in second] == [k2]
        await leased_store.settle(consumer, [Completed(c) for c in [*first[1:], *second]])
        assert [c.event for c in await _claim(leased_store, consumer)] == [k3]

    @pytest.mark.anyio
    async def test_each_receiver_has_its_own_order_for_a_key(
        self, leased_store: LeasedStore
    ) -> None:
        """A key that one receiver finished moves on for it while another receiver still runs it."""
        k1, k2 = _event(1, "k"), _event(2, "k")
        await _publish(leased_store, [k1, k2], "a", "b")
        consumer = await _consumer(leased_store, "a", "b")
        claims = await _claim(leased_store, consumer)
        assert [(c.event, c.receiver_id) for c in claims] == [(k1, "a"), (k1, "b")]
        await leased_store.settle(consumer, [Completed(claims[0])])
        assert [(c.event, c.receiver_id) for c in await _claim(leased_store, consumer)] == [
            (k2, "a")
        ]

    @pytest.mark.anyio
    async def test_per_key_order_holds_across_consumers_and_a_lease_handover(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """When a key's lease passes to another consumer, it runs that one before the next."""
        k1, k2 = _event(1, "k"), _event(2, "k")
        await _publish(leased_store, [k1, k2], "r")
        first, second = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        (lost,) = await _claim(leased_store, first)
        assert await leased_store.start(first, [lost]) == []
        assert await _claim(leased_store, second) == []
        clock.advance(LEASE + 1)
        (again,) = await _claim(leased_store, second)
        assert _seen([again]) == [(k1.id, "r", 2, True)]
        assert await _claim(leased_store, first) == []
        assert await leased_store.settle(first, [Completed(lost)]) == [lost]
        assert await _claim(leased_store, first) == []  # a lost settlement frees nothing
        await leased_store.settle(second, [Completed(again)])
        assert _seen(await _claim(leased_store, first)) == [(k2.id, "r", 1, False)]

    @pytest.mark.anyio
    async def test_a_scheduled_retry_keeps_the_later_deliveries_of_its_key_waiting(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """While a key's delivery waits for its retry, the next one of the key is not claimable."""
        k1, k2 = _event(1, "k"), _event(2, "k")
        await _publish(leased_store, [k1, k2], "r")
        consumer = await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, consumer)
        await leased_store.settle(consumer, [Rescheduled(claim, 10.0)])
        assert await _claim(leased_store, consumer) == []
        clock.advance(11)
        assert [c.event for c in await _claim(leased_store, consumer)] == [k1]

    @pytest.mark.anyio
    async def test_a_dead_letter_that_skips_lets_the_next_delivery_of_its_key_go(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """``keyed_dead_letters="skip"``: the key moves on past its dead letter."""
        k1, k2 = _event(1, "k"), _event(2, "k")
        await _publish(leased_store, [k1, k2], "r")
        consumer = await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, consumer)
        await leased_store.settle(consumer, [DeadLettered(claim, _letter(claim, 1, clock()))])
        assert [c.event for c in await _claim(leased_store, consumer)] == [k2]
        assert await leased_store.held_keys() == {}

    @pytest.mark.anyio
    async def test_a_dead_letter_that_holds_its_key_keeps_the_later_ones_waiting(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """``keyed_dead_letters="hold"``: the key waits until it is released; others flow."""
        k1, k2, free = _event(1, "k"), _event(2, "k"), _event(3)
        await _publish(leased_store, [k1, k2, free], "r")
        consumer = await _consumer(leased_store, "r")
        claim, other = await _claim(leased_store, consumer)
        letter = _letter(claim, 1, clock())
        await leased_store.settle(consumer, [DeadLettered(claim, letter, holds_key=True)])
        await leased_store.settle(consumer, [Completed(other)])
        assert await _claim(leased_store, consumer) == []
        assert await leased_store.held_keys() == {("r", "k"): k1.id}
        assert await leased_store.release_key("r", "k") is True
        assert await leased_store.release_key("r", "k") is False
        assert [c.event for c in await _claim(leased_store, consumer)] == [k2]
        assert await leased_store.dead_letters() == [letter]

    @pytest.mark.anyio
    async def test_a_redelivered_letter_that_held_its_key_runs_before_the_rest(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Redelivery gives the held key's letter fresh attempts, and it goes first."""
        k1, k2 = _event(1, "k"), _event(2, "k")
        await _publish(leased_store, [k1, k2], "r")
        consumer = await _consumer(leased_store, "r")
        (claim,) = await _claim(leased_store, consumer)
        letter = _letter(claim, 1, clock())
        await leased_store.settle(consumer, [DeadLettered(claim, letter, holds_key=True)])
        assert await leased_store.redeliver([letter.id]) == 1
        assert await leased_store.held_keys() == {}
        (again,) = await _claim(leased_store, consumer)
        assert _seen([again]) == [(k1.id, "r", 1, False)]
        await leased_store.settle(consumer, [Completed(again)])
        assert [c.event for c in await _claim(leased_store, consumer)] == [k2]

    # ------------------------------------------------------------ dead letters, redelivery

    @pytest.mark.anyio
    async def test_redelivery_makes_dead_letters_claimable_with_fresh_attempts(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Chosen letters come back first, then all of them; each starts at attempt 1."""
        events = [_event(n) for n in range(3)]
        await _publish(leased_store, events, "r")
        consumer = await _consumer(leased_store, "r")
        claims = await _claim(leased_store, consumer)
        letters = [_letter(claim, 1, clock()) for claim in claims]
        await leased_store.settle(
            consumer, [DeadLettered(c, x) for c, x in zip(claims, letters, strict=True)]
        )
        assert await leased_store.redeliver([letters[1].id, "no-such-letter"]) == 1
        assert _seen(await _claim(leased_store, consumer)) == [(events[1].id, "r", 1, False)]
        assert await leased_store.redeliver() == 2
        assert await leased_store.redeliver() == 0
        assert [c.event for c in await _claim(leased_store, consumer)] == [events[0], events[2]]
        assert await leased_store.dead_letters() == []

    @pytest.mark.anyio
    async def test_discarded_letters_are_gone_and_their_deliveries_never_run(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """A discarded letter leaves the list and the counts of dead; a key it held goes on."""
        k1, k2, free = _event(1, "k"), _event(2, "k"), _event(3)
        await _publish(leased_store, [k1, k2, free], "r")
        consumer = await _consumer(leased_store, "r")
        held, other = await _claim(leased_store, consumer)
        held_letter, other_letter = _letter(held, 1, clock()), _letter(other, 1, clock())
        await leased_store.settle(
            consumer,
            [DeadLettered(held, held_letter, holds_key=True), DeadLettered(other, other_letter)],
        )
        assert await leased_store.held_keys() == {("r", "k"): k1.id}
        assert await leased_store.discard([held_letter.id, held_letter.id, "no-such-letter"]) == 1
        assert await leased_store.discard([held_letter.id]) == 0
        assert await leased_store.dead_letters() == [other_letter]
        assert await leased_store.held_keys() == {}
        assert [c.event for c in await _claim(leased_store, consumer)] == [k2]
        assert await leased_store.redeliver([held_letter.id]) == 0
        stats = await leased_store.stats()
        assert (stats.pending, stats.done, stats.dead) == (1, 1, 1)

    # ------------------------------------------------------------------------ idempotency

    @pytest.mark.anyio
    async def test_a_repeated_idempotency_key_returns_the_first_event(
        self, leased_store: LeasedStore
    ) -> None:
        """A second event with a recorded key adds nothing; the first stands in for it."""
        first, second = _keyed(1, "order-7-paid"), _keyed(2, "order-7-paid")
        assert await _publish(leased_store, [first], "r") == [first]
        assert await _publish(leased_store, [second], "r") == [first]
        assert await _publish(leased_store, [first], "r") == [first]  # a retried publish
        consumer = await _consumer(leased_store, "r")
        assert [c.event for c in await _claim(leased_store, consumer)] == [first]
        assert await leased_store.stats() == StoreStats(
            events=1, pending=1, done=0, dead=0, idempotency_keys=1
        )

    @pytest.mark.anyio
    async def test_one_key_published_by_many_publishers_at_once_adds_one_event(
        self, leased_store: LeasedStore
    ) -> None:
        """Concurrent publishes of one idempotency key all get the same, single event."""
        events = [_keyed(n, "once") for n in range(20)]
        results: list[Event] = []

        async def publish(event: Event) -> None:
            results.extend(await _publish(leased_store, [event], "r"))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for event in events:
                    group.start_soon(publish, event)
        assert len(results) == 20
        assert set(results) == {results[0]}
        assert results[0] in events
        assert (await leased_store.stats()).events == 1

    @pytest.mark.anyio
    async def test_a_batch_repeating_a_key_adds_its_first_event_once(
        self, leased_store: LeasedStore
    ) -> None:
        """Within one batch, a repeat of a key is answered with the batch's first event."""
        first, plain, second = _keyed(1, "k"), _event(), _keyed(2, "k")
        assert await _publish(leased_store, [first, plain, second], "r") == [first, plain, first]
        assert (await leased_store.stats()).events == 2

    @pytest.mark.anyio
    async def test_a_batch_with_an_event_already_published_adds_nothing(
        self, leased_store: LeasedStore
    ) -> None:
        """Publishing is all or nothing: a duplicate event id refuses the whole batch."""
        known, new = _event(1), _event(2)
        await _publish(leased_store, [known], "r")
        with pytest.raises(StoreError):
            await _publish(leased_store, [new, known], "r")
        assert (await leased_store.stats()).events == 1

    @pytest.mark.anyio
    async def test_a_forgotten_idempotency_key_publishes_anew(
        self, leased_store: LeasedStore
    ) -> None:
        """Once its record is forgotten, a key's next event is added."""
        first, second = _keyed(1, "k"), _keyed(2, "k")
        await _publish(leased_store, [first], "r")
        far_future = datetime(9999, 1, 1, tzinfo=UTC)
        assert await leased_store.forget_idempotency_keys(far_future) == 1
        assert await _publish(leased_store, [second], "r") == [second]

    # ----------------------------------------------------------------------------- pruning

    @pytest.mark.anyio
    async def test_pruning_goes_in_bounded_batches_and_keeps_what_is_not_done(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Each call deletes at most ``limit`` done deliveries of old events, nothing else."""
        old = [_event(n, at=_LONG_AGO) for n in range(25)]
        waiting, dead, recent = _event(at=_LONG_AGO), _event(at=_LONG_AGO), _event()
        await _publish(leased_store, [*old, waiting, dead, recent], "r")
        consumer = await _consumer(leased_store, "r")
        claims = {c.event.id: c for c in await _claim(leased_store, consumer)}
        done = [Completed(claims[e.id]) for e in [*old, recent]]
        letter = _letter(claims[dead.id], 1, clock())
        await leased_store.settle(consumer, [*done, DeadLettered(claims[dead.id], letter)])
        cut = _LONG_AGO + timedelta(days=1)
        assert [await leased_store.prune(older_than=cut, limit=10) for _ in range(4)] == [
            10,
            10,
            5,
            0,
        ]
        assert await leased_store.stats() == StoreStats(events=3, pending=1, done=1, dead=1)
        assert await leased_store.prune(limit=10) == 1
        assert await leased_store.dead_letters() == [letter]

    # ------------------------------------------------------------ consumers and what they hold

    @pytest.mark.anyio
    async def test_consumers_are_listed_with_their_routes_and_leases(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """The registry shows each live consumer, its routes, times and lease count."""
        await _publish(leased_store, [_event(1), _event(2)], "a")
        first = await _consumer(leased_store, "a")
        clock.advance(5)
        second = new_consumer_id()
        routes = [Route("orders:*", "billing"), Route("audit:**", "audit")]
        await leased_store.register(second, routes, ttl=TTL)
        await _claim(leased_store, first)
        listed = await leased_store.consumers()
        assert [(c.id, c.routes, c.leases) for c in listed] == [
            (first, tuple(_routes("a")), 2),
            (second, tuple(routes), 0),
        ]
        assert listed[0].registered_at == _T0
        assert (listed[1].registered_at, listed[1].last_seen) == (clock(), clock())
        assert listed[1].expires_at == clock() + timedelta(seconds=TTL)

    @pytest.mark.anyio
    async def test_a_consumer_without_heartbeats_stops_being_live(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Heartbeats keep a registration; one that ran out is gone until registered again."""
        steady, silent = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        clock.advance(TTL / 2)
        assert await leased_store.heartbeat(steady, ttl=TTL) is True
        clock.advance(TTL / 2 + 1)
        assert [c.id for c in await leased_store.consumers()] == [steady]
        assert await leased_store.heartbeat(silent, ttl=TTL) is False
        with pytest.raises(StoreError):
            await _claim(leased_store, silent)
        await leased_store.register(silent, _routes("r"), ttl=TTL)
        listed = {c.id: c for c in await leased_store.consumers()}
        assert listed.keys() == {steady, silent}
        assert listed[silent].registered_at == clock()
        assert await leased_store.heartbeat(new_consumer_id(), ttl=TTL) is False

    @pytest.mark.anyio
    async def test_registering_again_replaces_the_routes(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """A live consumer that registers again keeps its start time and runs its new routes."""
        event = _event()
        await _publish(leased_store, [event], "new")
        consumer = await _consumer(leased_store, "old")
        assert await _claim(leased_store, consumer) == []
        clock.advance(1)
        await leased_store.register(consumer, _routes("new"), ttl=TTL)
        (listed,) = await leased_store.consumers()
        assert (listed.routes, listed.registered_at) == (tuple(_routes("new")), _T0)
        assert [c.event for c in await _claim(leased_store, consumer)] == [event]

    @pytest.mark.anyio
    async def test_unregistering_releases_what_the_consumer_holds(
        self, leased_store: LeasedStore
    ) -> None:
        """A consumer that leaves hands its claims back uncounted, at once, started or not."""
        events = [_event(n) for n in range(3)]
        await _publish(leased_store, events, "r")
        leaving, staying = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        held = await _claim(leased_store, leaving)
        assert await leased_store.start(leaving, held[:2]) == []
        assert await leased_store.unregister(leaving) == 3
        assert [c.id for c in await leased_store.consumers()] == [staying]
        claims = await _claim(leased_store, staying)
        assert _seen(claims) == [(e.id, "r", 1, False) for e in events]

    @pytest.mark.anyio
    async def test_leases_are_listed_with_their_holder_and_expiry(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Each held delivery is listed, leases that ran out too, soonest expiry first."""
        late, early = _event(1, "k"), _event(2)
        await _publish(leased_store, [late, early], "r")
        consumer = await _consumer(leased_store, "r")
        first, second = await _claim(leased_store, consumer)
        clock.advance(LEASE + 1)
        await leased_store.renew(consumer, [first], lease=LEASE)
        assert await leased_store.leases() == [
            Lease(early.id, early.name, "r", None, 1, consumer, _T0 + timedelta(seconds=LEASE)),
            Lease(late.id, late.name, "r", "k", 1, consumer, clock() + timedelta(seconds=LEASE)),
        ]
        await leased_store.settle(consumer, [Completed(first), Completed(second)])
        assert await leased_store.leases() == []

    @pytest.mark.anyio
    async def test_the_backlog_counts_each_receivers_deliveries_by_state_and_age(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Ready, scheduled, leased and dead deliveries per receiver, with the oldest event."""
        events = [_event(n, at=_T0 + timedelta(minutes=n)) for n in range(5)]
        await _publish(leased_store, events, "a")
        await _publish(leased_store, [_event(9, at=_LONG_AGO)], "b")
        consumer = await _consumer(leased_store, "a")
        done, retry, dead, leased = await _claim(leased_store, consumer, 4)
        await leased_store.settle(
            consumer,
            [Completed(done), Rescheduled(retry, 60.0), DeadLettered(dead, _letter(dead, 1, _T0))],
        )
        assert await leased_store.backlog() == [
            Backlog("a", ready=1, scheduled=1, leased=1, dead=1, oldest=events[1].occurred_at),
            Backlog("b", ready=1, scheduled=0, leased=0, dead=0, oldest=_LONG_AGO),
        ]
        assert leased.event == events[3]

    @pytest.mark.anyio
    async def test_the_oldest_in_the_backlog_is_the_earliest_occurred_at_not_done(
        self, leased_store: LeasedStore
    ) -> None:
        """``oldest`` is the earliest ``occurred_at`` among the deliveries not done, whatever
        the order they were published in; a dead one does not count."""
        late = _event(0, at=_T0 + timedelta(minutes=5))
        early = _event(1, at=_T0)
        earliest = _event(2, at=_T0 - timedelta(minutes=5))
        await _publish(leased_store, [late, early, earliest], "a")
        consumer = await _consumer(leased_store, "a")
        first, second, third = await _claim(leased_store, consumer)
        assert [claim.event for claim in (first, second, third)] == [late, early, earliest]
        assert [row.oldest for row in await leased_store.backlog()] == [earliest.occurred_at]
        await leased_store.settle(consumer, [DeadLettered(third, _letter(third, 1, _T0))])
        assert [row.oldest for row in await leased_store.backlog()] == [early.occurred_at]
        await leased_store.settle(consumer, [Completed(second)])
        assert [row.oldest for row in await leased_store.backlog()] == [late.occurred_at]

    # --------------------------------------------------------------------------- routing

    @pytest.mark.anyio
    async def test_a_name_a_live_consumer_handles_but_this_process_routes_nowhere_shows(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """Registered routes let a publisher see which receivers its own routing leaves out."""
        worker = new_consumer_id()
        await leased_store.register(
            worker, [Route("orders:*", "billing"), Route("audit:**", "audit")], ttl=TTL
        )
        web = new_consumer_id()  # a process that imported only the mailer's module
        await leased_store.register(web, [Route("orders:placed", "mailer")], ttl=TTL)

        async def left_out(name: str, routed_here: set[str]) -> set[str]:
            live = await leased_store.consumers()
            return {r for consumer in live for r in consumer.receivers_of(name)} - routed_here

        assert await left_out("orders:paid", set()) == {"billing"}
        assert await left_out("orders:placed", {"mailer"}) == {"billing"}
        assert await left_out("orders:placed", {"mailer", "billing"}) == set()
        assert await left_out("audit:orders:placed", set()) == {"audit"}
        assert await left_out("users:created", set()) == set()
        clock.advance(TTL + 1)  # neither heartbeats: they are no longer live
        assert await left_out("orders:paid", set()) == set()

    # -------------------------------------------------------------------------- lifecycle

    @pytest.mark.anyio
    async def test_a_closed_store_refuses_calls(self, leased_store: LeasedStore) -> None:
        """After close, publishing and claiming raise StoreError; closing again is fine."""
        consumer = await _consumer(leased_store, "r")
        await leased_store.close()
        await leased_store.close()
        with pytest.raises(StoreError):
            await _publish(leased_store, [_event()], "r")
        with pytest.raises(StoreError):
            await _claim(leased_store, consumer)
        await leased_store.open()  # the fixture closes it once more

    # ------------------------------------------------- reading every event in publish order

    @pytest.mark.anyio
    async def test_events_are_read_in_publish_order_after_a_position(
        self, leased_store: LeasedStore
    ) -> None:
        """Every added event, with receivers or none, is read once, in order, page by page."""
        start = await leased_store.event_position()
        first, bare, third = _event(1), _event(2), _event(3, "k")
        await _publish(leased_store, [first], "r")
        await leased_store.publish([(bare, []), (third, ["r", "s"])])
        assert await leased_store.event_position() == start + 3
        page = await leased_store.events_after(start, 2)
        assert (page.events, page.position, page.missed) == ((first, bare), start + 2, 0)
        page = await leased_store.events_after(page.position, 2)
        assert (page.events, page.position, page.missed) == ((third,), start + 3, 0)
        page = await leased_store.events_after(page.position, 2)
        assert (page.events, page.position, page.missed) == ((), start + 3, 0)

    @pytest.mark.anyio
    async def test_a_tail_started_at_the_newest_position_reads_only_later_events(
        self, leased_store: LeasedStore
    ) -> None:
        """``event_position`` marks where a new tail starts: earlier events are not read."""
        await _publish(leased_store, [_event(1), _event(2)], "r")
        start = await leased_store.event_position()
        later = _event(3)
        await leased_store.publish([(later, [])])
        assert (await leased_store.events_after(start, 10)).events == (later,)

    @pytest.mark.anyio
    async def test_a_repeated_idempotency_key_adds_nothing_to_read(
        self, leased_store: LeasedStore
    ) -> None:
        """A repeat returns the first event and takes no position: tails never see it twice."""
        start = await leased_store.event_position()
        first = _keyed(1, "k")
        await leased_store.publish([(first, [])])
        assert await leased_store.publish([(_keyed(2, "k"), ["r"])]) == [first]
        page = await leased_store.events_after(start, 10)
        assert (page.events, page.position) == ((first,), start + 1)

    @pytest.mark.anyio
    async def test_a_tail_behind_pruning_skips_what_went_and_counts_it(
        self, leased_store: LeasedStore
    ) -> None:
        """Pruned events are skipped and counted as missed; the position moves past them."""
        start = await leased_store.event_position()
        gone = [_event(n, at=_LONG_AGO) for n in range(3)]
        waiting, last_gone = _event(7, at=_LONG_AGO), _event(8, at=_LONG_AGO)
        await leased_store.publish([(event, []) for event in gone])
        await leased_store.publish([(waiting, ["r"]), (last_gone, [])])
        recent = _event(9)
        await leased_store.publish([(recent, [])])
        assert await leased_store.prune(older_than=_LONG_AGO + timedelta(days=1)) == 0
        page = await leased_store.events_after(start, 1)
        assert (page.events, page.position, page.missed) == ((waiting,), start + 4, 3)
        page = await leased_store.events_after(page.position, 10)
        assert (page.events, page.position, page.missed) == ((recent,), start + 6, 1)
        await leased_store.prune()  # every event with nothing left: ``recent`` too
        assert await leased_store.event_position() == start + 6  # positions are not reused
        page = await leased_store.events_after(start + 4, 10)
        assert (page.events, page.position, page.missed) == ((), start + 6, 2)


# --------------------------------------------------------------- a consumer in another process

_CHILD = "import sys; from aevents._conformance_leases import _child; _child(sys.argv[1])"


def _child(spec_json: str) -> None:
    """A consumer process: open the store, register, claim, print the claims, then leave or die."""
    spec = json.loads(spec_json)
    sys.path[:0] = spec["path"]
    module_name, _, name = spec["factory"].partition(":")
    factory = getattr(importlib.import_module(module_name), name)
    now = datetime.fromisoformat(spec["now"])

    async def main() -> None:
        store: LeasedStore = factory(Path(spec["directory"]), lambda: now)
        await store.open()
        consumer = new_consumer_id()
        await store.register(consumer, [Route("**", r) for r in spec["receivers"]], ttl=TTL)
        print(json.dumps(["ready", str(consumer)]), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # "go"
        to_start = spec["start"]
        while claims := await store.claim(consumer, spec["limit"], lease=LEASE):
            for claim in claims:
                print(json.dumps(["claim", *_seen([claim])[0]]), flush=True)
            assert await store.start(consumer, claims[:to_start]) == []
            to_start = max(0, to_start - len(claims))
            if not spec["until_empty"]:
                break
        if spec["die"]:
            os.kill(os.getpid(), signal.SIGKILL)
        await store.close()

    anyio.run(main)


async def _read_all(
    stream: AsyncIterable[bytes], into: bytearray, first_line: anyio.Event | None = None
) -> None:
    """Append everything ``stream`` sends to ``into``; set ``first_line`` once a line is in."""
    async for chunk in stream:
        into += chunk
        if first_line is not None and b"\n" in into:
            first_line.set()
    if first_line is not None:
        first_line.set()  # at the end, whether or not a line came


async def claim_in_another_process(
    factory: str,
    directory: Path,
    now: datetime,
    receivers: Sequence[str],
    *,
    limit: int,
    until_empty: bool = False,
    die: bool = False,
    start: int = 0,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> tuple[str, list[tuple[str, str, int, bool]]]:
    """Run a consumer in a fresh interpreter; return its id and what it claimed.

    The child makes its store with ``factory`` (``"module:name"`` of a callable
    taking a directory and a clock, like ``make_leased_store``) over
    ``directory``, with a clock stopped at ``now``. It registers for
    ``receivers`` and, once this process has seen it ready, claims batches of
    ``limit`` under ``LEASE`` (until none are left with ``until_empty``) while
    ``meanwhile`` runs here. It starts the first ``start`` deliveries it claims.
    Then it closes its store or, with ``die``, kills itself with SIGKILL holding
    every lease. POSIX only (SIGKILL).
    """
    spec = {
        "factory": factory,
        "path": sys.path,
        "directory": str(directory),
        "now": now.isoformat(),
        "receivers": list(receivers),
        "limit": limit,
        "until_empty": until_empty,
        "die": die,
        "start": start,
    }
    output, problems = bytearray(), bytearray()
    with anyio.fail_after(60):
        async with await anyio.open_process(
            [sys.executable, "-c", _CHILD, json.dumps(spec)]
        ) as process:
            stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
            assert stdin is not None  # the three pipes open_process makes by default
            assert stdout is not None
            assert stderr is not None
            first_line = anyio.Event()
            async with anyio.create_task_group() as group:
                group.start_soon(_read_all, stderr, problems)
                group.start_soon(_read_all, stdout, output, first_line)
                await first_line.wait()
                if b"\n" in output:
                    await stdin.send(b"go\n")
                    if meanwhile is not None:
                        await meanwhile()
            code = await process.wait()
    expected = -signal.SIGKILL if die else 0
    assert code == expected, f"the child exited with {code}:\n{problems.decode(errors='replace')}"
    ready, *claims = (json.loads(line) for line in output.decode().splitlines())
    return ready[1], [(line[1], line[2], line[3], line[4]) for line in claims]


class TwoProcessLeasedConformance(LeasedStoreConformance):
    """``LeasedStoreConformance`` plus cases with a consumer in another process."""

    def child_store_factory(self) -> str:
        """How a fresh interpreter makes the same store as ``make_leased_store``.

        ``"module:name"`` of a module-level callable taking ``(directory, clock)``
        and returning an unopened store, such as ``"tests.test_store_sqlite:leased"``.
        The child process imports it with this process's ``sys.path``.
        """
        raise NotImplementedError

    @pytest.mark.anyio
    async def test_leases_of_a_process_killed_mid_batch_pass_to_a_live_one(
        self, leased_store: LeasedStore, clock: ManualClock, tmp_path: Path
    ) -> None:
        """A SIGKILLed consumer's claims are claimed here once its leases run out, in key
        order; the two it started count as attempts, the one it never started does not."""
        f1, k1, f2, k2 = _event(1), _event(2, "k"), _event(3), _event(4, "k")
        await _publish(leased_store, [f1, k1, f2, k2], "r")
        dead, claimed = await claim_in_another_process(
            self.child_store_factory(), tmp_path, clock(), ["r"], limit=10, die=True, start=2
        )
        assert claimed == [(e.id, "r", 1, False) for e in (f1, k1, f2)]
        here = await _consumer(leased_store, "r")
        assert await _claim(leased_store, here) == []
        assert {str(c.id): c.leases for c in await leased_store.consumers()}[dead] == 3
        clock.advance(LEASE + 1)
        taken = await _claim(leased_store, here)
        assert _seen(taken) == [
            (f1.id, "r", 2, True),
            (k1.id, "r", 2, True),
            (f2.id, "r", 1, False),
        ]
        await leased_store.settle(here, [Completed(c) for c in taken])
        assert _seen(await _claim(leased_store, here)) == [(k2.id, "r", 1, False)]

    @pytest.mark.anyio
    async def test_consumers_in_two_processes_never_claim_one_delivery_twice(
        self, leased_store: LeasedStore, clock: ManualClock, tmp_path: Path
    ) -> None:
        """Claiming from two processes at once shares out every delivery exactly once."""
        events = [_event(n) for n in range(150)]
        await _publish(leased_store, events, "a", "b")
        here = await _consumer(leased_store, "a", "b")
        mine: list[tuple[str, str, int, bool]] = []

        async def claim_here() -> None:
            while claims := await _claim(leased_store, here, 5):
                mine.extend(_seen(claims))

        _, theirs = await claim_in_another_process(
            self.child_store_factory(),
            tmp_path,
            clock(),
            ["a", "b"],
            limit=7,
            until_empty=True,
            meanwhile=claim_here,
        )
        expected = sorted((e.id, r, 1, False) for e in events for r in ("a", "b"))
        assert sorted(mine + theirs) == expected


class PublishAndClaimConformance(LeasedStoreConformance):
    """The cases of the optional ``publish_and_claim`` (``SQLiteStore``, ``MemoryStore``):
    mix it into the tests of a store that offers it, beside ``LeasedStoreConformance``."""

    @pytest.mark.anyio
    async def test_publish_and_claim_leases_the_publishers_deliveries_in_its_write(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """``publish_and_claim`` publishes as ``publish`` does and leases to the publisher,
        in publish order, the deliveries to its receivers, up to ``limit``: no other
        consumer claims them; the rest are claimable as usual."""
        events = [_event(n) for n in range(4)]
        mine, other, theirs = (
            await _consumer(leased_store, "r"),
            await _consumer(leased_store, "r"),
            await _consumer(leased_store, "t"),
        )
        standing, claims, started = await _publish_and_claim(
            leased_store, mine, events, "r", "t", limit=3
        )
        assert standing == events
        assert _seen(claims) == [(event.id, "r", 1, False) for event in events[:3]]
        assert [c.event for c in claims] == events[:3]
        assert started == []
        assert [c.event for c in await _claim(leased_store, other)] == events[3:]
        assert [c.event for c in await _claim(leased_store, theirs)] == events
        assert {lease.consumer for lease in await leased_store.leases()} == {mine, other, theirs}
        assert await leased_store.settle(mine, [Completed(c) for c in claims]) == []
        assert (await leased_store.stats()).done == 3

    @pytest.mark.anyio
    async def test_publish_and_claim_starts_the_first_start_claims(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """The first ``start`` claims count their attempt as ``start`` would: when the lease
        runs out, those come back as attempt 2 with their lease expired, the others as
        attempt 1, uncounted."""
        events = [_event(n) for n in range(3)]
        mine = await _consumer(leased_store, "r")
        _, claims, started = await _publish_and_claim(leased_store, mine, events, "r", start=2)
        assert started == claims[:2]
        assert await leased_store.start(mine, claims[:2]) == []  # counted once
        clock.advance(LEASE + 1)
        later = await _consumer(leased_store, "r")
        assert _seen(await _claim(leased_store, later)) == [
            (events[0].id, "r", 2, True),
            (events[1].id, "r", 2, True),
            (events[2].id, "r", 1, False),
        ]

    @pytest.mark.anyio
    async def test_publish_and_claim_keeps_a_key_behind_its_unfinished_deliveries(
        self, leased_store: LeasedStore
    ) -> None:
        """A keyed delivery is leased only when no earlier delivery of its (receiver, key) is
        unfinished: one another consumer holds, or one earlier in the same publish."""
        k1, k2, j1, j2, free = (
            _event(1, "k"),
            _event(2, "k"),
            _event(3, "j"),
            _event(4, "j"),
            _event(5),
        )
        await _publish(leased_store, [k1], "r")
        other, mine = await _consumer(leased_store, "r"), await _consumer(leased_store, "r")
        (held,) = await _claim(leased_store, other)
        _, claims, _ = await _publish_and_claim(leased_store, mine, [k2, j1, j2, free], "r")
        assert [c.event for c in claims] == [j1, free]
        assert await _claim(leased_store, other) == []
        await leased_store.settle(other, [Completed(held)])
        assert [c.event for c in await _claim(leased_store, other)] == [k2]
        await leased_store.settle(mine, [Completed(claims[0])])
        assert [c.event for c in await _claim(leased_store, other)] == [j2]

    @pytest.mark.anyio
    async def test_publish_and_claim_leases_nothing_for_a_repeat_or_a_consumer_not_live(
        self, leased_store: LeasedStore
    ) -> None:
        """A repeated idempotency key adds nothing to lease; a consumer that is not live
        leases nothing, and its publish stands."""
        first, repeat = _keyed(1, "order-1"), _keyed(2, "order-1")
        mine = await _consumer(leased_store, "r")
        _, claims, _ = await _publish_and_claim(leased_store, mine, [first], "r")
        assert [c.event for c in claims] == [first]
        standing, claims, _ = await _publish_and_claim(leased_store, mine, [repeat], "r")
        assert (standing, claims) == ([first], [])
        event = _event()
        standing, claims, started = await _publish_and_claim(
            leased_store, new_consumer_id(), [event], "r", start=1
        )
        assert (standing, claims, started) == ([event], [], [])
        assert [c.event for c in await _claim(leased_store, mine)] == [event]


class ClaimAndStartConformance(LeasedStoreConformance):
    """The cases of the optional ``claim_and_start`` (``SQLiteStore``, ``RedisStore``): mix
    it into the tests of a store that offers it, beside ``LeasedStoreConformance``."""

    @pytest.mark.anyio
    async def test_claim_and_start_starts_the_first_claims_whose_lease_did_not_run_out(
        self, leased_store: LeasedStore, clock: ManualClock
    ) -> None:
        """``claim_and_start`` claims as ``claim`` does and starts, in the same call, the
        first ``start`` claims that are not the retry of an attempt whose lease ran out."""
        method = _capability(leased_store, "claim_and_start")
        events = [_event(n) for n in range(4)]
        await _publish(leased_store, events, "r")
        first = await _consumer(leased_store, "r")
        (lost,) = await _claim(leased_store, first, 1)
        assert await leased_store.start(first, [lost]) == []
        clock.advance(LEASE + 1)
        consumer = await _consumer(leased_store, "r")
        claims, started = await method(consumer, 3, lease=LEASE, start=1)
        assert _seen(claims) == [
            (events[0].id, "r", 2, True),
            (events[1].id, "r", 1, False),
            (events[2].id, "r", 1, False),
        ]
        assert started == [claims[1]]
        assert await leased_store.start(consumer, claims) == []
        rest, started = await method(consumer, 10, lease=LEASE, start=0)
        assert ([c.event for c in rest], started) == (events[3:], [])
        clock.advance(LEASE + 1)
        again = await _claim(leased_store, await _consumer(leased_store, "r"))
        assert _seen(again) == [
            (events[0].id, "r", 3, True),
            (events[1].id, "r", 2, True),
            (events[2].id, "r", 2, True),
            (events[3].id, "r", 1, False),
        ]
