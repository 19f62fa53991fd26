"""The delivery buffer on its own: its bound, its line of waiting publishers, its queue."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from aevents import Event, Registry
from aevents._buffer import DeliveryBuffer
from aevents._delivery import Delivery, Queued, named
from aevents._event import make_event
from aevents._state import Epoch

pytestmark = pytest.mark.anyio


def _delivery(number: int) -> Delivery:
    registry = Registry()

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("job:run", receiver, id="receiver")
    subscription = registry.receiver("receiver", "job:run")
    assert subscription is not None
    event = make_event("job:run", {"number": number}, {})
    return Delivery(event, subscription, 1, Epoch(None), False)


async def test_room_is_taken_for_a_whole_event_or_not_at_all() -> None:
    """Room for three fits in a buffer of four once; then only an empty buffer lets one more in."""
    buffer = DeliveryBuffer(4, workers=2)
    assert buffer.try_reserve(3)
    assert not buffer.try_reserve(2)
    assert buffer.queued == 3
    buffer.release(3)
    assert buffer.try_reserve(9)  # larger than the buffer, but the buffer is empty
    assert buffer.queued == 9


async def test_waiting_publishers_get_room_in_arrival_order() -> None:
    """A publish that waits first gets room first, even when a later one would fit sooner."""
    buffer = DeliveryBuffer(4, workers=2)
    assert buffer.try_reserve(4)
    order: list[int] = []

    async def publisher(needed: int) -> None:
        await buffer.reserve(needed)
        order.append(needed)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(publisher, 3)
        await wait_all_tasks_blocked()
        tasks.start_soon(publisher, 1)
        await wait_all_tasks_blocked()
        assert not buffer.try_reserve(1)  # someone waits: nobody jumps the line
        buffer.release(1)  # room for the second, but the first still waits
        await wait_all_tasks_blocked()
        assert order == []
        buffer.release(2)  # 1 left: room for the first (3) only, and the second waits on
        await wait_all_tasks_blocked()
        assert order == [3]
        buffer.release(3)
    assert order == [3, 1]
    assert buffer.queued == 1 + 1


async def test_a_cancelled_wait_for_room_takes_nothing_and_passes_granted_room_on() -> None:
    """Cancelled while waiting, a publish leaves the bound as it found it."""
    buffer = DeliveryBuffer(2, workers=2)
    assert buffer.try_reserve(2)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(buffer.reserve, 2)
        await wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()
    assert buffer.queued == 2
    buffer.release(2)
    assert buffer.queued == 0
    assert buffer.try_reserve(2)


async def test_a_receiver_overshoots_the_bound_rather_than_deadlock_the_workers() -> None:
    """With every other worker waiting inside a receiver, the last one does not wait too."""
    buffer = DeliveryBuffer(1, workers=2)
    assert buffer.try_reserve(1)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: buffer.reserve(1, in_delivery=True))
        await wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await buffer.reserve(1, in_delivery=True)  # would deadlock: it overshoots
        assert buffer.queued == 2
        buffer.release(2)
    assert buffer.queued == 1


async def test_taking_gives_room_back_and_wakes_a_parked_worker() -> None:
    """A worker parked on an empty queue wakes for the next delivery; taking frees its room."""
    buffer = DeliveryBuffer(4, workers=1)
    taken: list[Queued] = []

    async def worker() -> None:
        while await buffer.wait():
            delivery = buffer.take()
            assert delivery is not None
            taken.append(delivery)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker)
        await wait_all_tasks_blocked()
        assert buffer.take() is None
        assert buffer.try_reserve(2)
        first, second = _delivery(1), _delivery(2)
        buffer.put(first)
        buffer.put(second)
        await wait_all_tasks_blocked()
        assert taken == [first, second]
        assert buffer.queued == 0
        buffer.close()
    assert buffer.closed


async def test_idle_workers_are_woken_one_at_a_time_and_each_wakes_the_next() -> None:
    """A burst wakes one parked worker; once it runs it wakes another while more wait.

    Trivial deliveries are all taken by the first workers to run, so waking every
    parked worker per burst would only have most of them find the queue empty.
    Slow ones still get every worker: each woken worker wakes the next.
    """
    buffer = DeliveryBuffer(16, workers=4)
    started: list[int] = []
    release = anyio.Event()

    async def worker(index: int) -> None:
        while await buffer.wait():
            if buffer.take() is not None:
                started.append(index)
                await release.wait()  # a slow receiver

    async with anyio.create_task_group() as tasks:
        for index in range(4):
            tasks.start_soon(worker, index)
        await wait_all_tasks_blocked()
        assert buffer.try_reserve(3)
        buffer.put_many([_delivery(n) for n in range(3)])
        await wait_all_tasks_blocked()
        assert len(started) == 3  # three slow deliveries: three workers, woken in a chain
        assert len(buffer._idle_workers) == 1
        release.set()
        await wait_all_tasks_blocked()
        buffer.close()
    assert buffer.queued == 0


async def test_closing_wakes_publishers_and_leaves_queued_deliveries_counted() -> None:
    """After close, waiting publishers return and what was queued stays for the stop's report."""
    buffer = DeliveryBuffer(1, workers=1)
    assert buffer.try_reserve(1)
    left = _delivery(1)
    buffer.put(left)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(buffer.reserve, 1)
        await wait_all_tasks_blocked()
        buffer.close()
    assert list(buffer.items) == [left]
    assert buffer.queued == 1
    assert await buffer.wait()  # closed, with a delivery still there to take
    assert buffer.take() is left
    assert not await buffer.wait()  # closed and empty: the worker ends


def test_a_first_attempt_queued_as_a_plain_tuple_is_named_where_it_is_taken_by_name() -> None:
    """The fast path queues plain tuples (``Queued``); ``take`` hands them back as they are,
    ``take_threaded`` and ``named`` as ``Delivery`` with the same fields, and a
    ``Delivery`` stays itself."""
    registry = Registry()

    def sync_receiver(event: Event) -> None:
        pass

    registry.subscribe("job:run", sync_receiver, id="sync")
    subscription = registry.receiver("sync", "job:run")
    assert subscription is not None
    assert subscription.threaded
    epoch = Epoch(None)
    plain: list[Queued] = [
        (make_event("job:run", {"number": n}, {}), subscription, 1, epoch, False) for n in range(3)
    ]
    buffer = DeliveryBuffer(4, workers=1)
    assert buffer.try_reserve(3)
    buffer.put_many(plain)
    first = buffer.take()
    assert first is plain[0]
    assert type(first) is tuple
    hop: list[Delivery] = []
    buffer.take_threaded(hop, 8)
    assert [type(each) for each in hop] == [Delivery, Delivery]
    assert hop == plain[1:]  # the same fields, in the same order
    assert [each.event for each in hop] == [plain[1][0], plain[2][0]]
    assert buffer.queued == 0
    named_first = named(first)
    assert isinstance(named_first, Delivery)
    assert named_first == first
    assert named(named_first) is named_first
