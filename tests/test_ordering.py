"""Per-key ordering: same key, same receiver, one at a time in publish order."""

from __future__ import annotations

from collections import defaultdict

import anyio
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aevents
from aevents import Event, EventRuntime, MemoryStore, Registry, RetryPolicy

pytestmark = pytest.mark.anyio

THREE_TRIES = RetryPolicy(attempts=3, initial_delay=0, jitter=0)


class Tracker:
    """Records completions per (receiver, key) and any overlap of one key's deliveries."""

    def __init__(self) -> None:
        self.running: set[tuple[str, str | None]] = set()
        self.completed: dict[tuple[str, str | None], list[int]] = defaultdict(list)
        self.overlaps: list[tuple[str, str | None]] = []
        self.peak_concurrency = 0

    def enter(self, receiver_id: str, event: Event) -> None:
        lane = (receiver_id, event.key)
        if event.key is not None and lane in self.running:
            self.overlaps.append(lane)
        self.running.add(lane)
        self.peak_concurrency = max(self.peak_concurrency, len(self.running))

    def leave(self, receiver_id: str, event: Event, *, done: bool) -> None:
        lane = (receiver_id, event.key)
        self.running.discard(lane)
        if done:
            self.completed[lane].append(event.payload["seq"])


async def test_one_keys_events_run_one_at_a_time_in_publish_order(registry: Registry) -> None:
    """Many workers, a receiver that yields mid-delivery: one key's events still run in order."""
    tracker = Tracker()

    async def receiver(event: Event) -> None:
        tracker.enter("r", event)
        for _ in range(event.payload["seq"] % 4):
            await checkpoint()
        tracker.leave("r", event, done=True)

    registry.subscribe("account:changed", receiver, id="r")
    async with EventRuntime(registry, workers=8) as runtime:
        for seq in range(200):
            await runtime.publish("account:changed", payload={"seq": seq}, key="user:42")
        with anyio.fail_after(10):
            await runtime.drain()
        assert runtime.stats().active_keys == 0
    assert tracker.overlaps == []
    assert tracker.completed[("r", "user:42")] == list(range(200))


async def test_different_keys_run_concurrently(registry: Registry) -> None:
    """Two keys' first events are both under way at once."""
    both_started = anyio.Event()
    started: list[str] = []

    async def receiver(event: Event) -> None:
        started.append(event.key or "")
        if len(started) == 2:
            both_started.set()
        with anyio.fail_after(5):
            await both_started.wait()

    registry.subscribe("account:changed", receiver, id="r")
    async with EventRuntime(registry, workers=2) as runtime:
        await runtime.publish("account:changed", key="a")
        await runtime.publish("account:changed", key="b")
        with anyio.fail_after(5):
            await runtime.drain()
    assert sorted(started) == ["a", "b"]


async def test_the_same_key_is_ordered_per_receiver_not_across_receivers(
    registry: Registry,
) -> None:
    """A slow receiver holds back its own lane of the key, not another receiver's."""
    fast_done = anyio.Event()
    order: list[str] = []

    async def slow(event: Event) -> None:
        with anyio.fail_after(5):
            await fast_done.wait()
        order.append(f"slow {event.payload['seq']}")

    async def fast(event: Event) -> None:
        order.append(f"fast {event.payload['seq']}")
        if event.payload["seq"] == 1:
            fast_done.set()

    registry.subscribe("account:changed", slow, id="slow")
    registry.subscribe("account:changed", fast, id="fast")
    async with EventRuntime(registry, workers=4) as runtime:
        await runtime.publish("account:changed", payload={"seq": 0}, key="k")
        await runtime.publish("account:changed", payload={"seq": 1}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
    assert order == ["fast 0", "fast 1", "slow 0", "slow 1"]


async def test_a_failing_delivery_holds_back_its_keys_later_events_until_it_succeeds(
    registry: Registry,
) -> None:
    """Event 0 fails twice then succeeds; event 1 of the same key runs only after it."""
    log: list[str] = []

    async def receiver(event: Event) -> None:
        info = aevents.current_delivery()
        assert info is not None
        log.append(f"{event.payload['seq']}@{info.attempt}")
        if event.payload["seq"] == 0 and info.attempt < 3:
            raise ConnectionError("flaky")

    registry.subscribe("account:changed", receiver, id="r", retry=THREE_TRIES)
    async with EventRuntime(registry, workers=4) as runtime:
        await runtime.publish("account:changed", payload={"seq": 0}, key="k")
        await runtime.publish("account:changed", payload={"seq": 1}, key="k")
        await runtime.publish("account:changed", payload={"seq": 2}, key="other")
        with anyio.fail_after(5):
            await runtime.drain()
    keyed = [entry for entry in log if not entry.startswith("2@")]
    assert keyed == ["0@1", "0@2", "0@3", "1@1"]
    assert "2@1" in log


async def test_by_default_a_dead_letter_lets_its_key_move_on(registry: Registry) -> None:
    """keyed_dead_letters="skip": once event 0 is dead, event 1 of its key runs."""
    log: list[int] = []

    async def receiver(event: Event) -> None:
        if event.payload["seq"] == 0:
            raise ValueError("poison")
        log.append(event.payload["seq"])

    registry.subscribe("account:changed", receiver, id="r", retry=THREE_TRIES)
    async with EventRuntime(registry) as runtime:
        await runtime.publish("account:changed", payload={"seq": 0}, key="k")
        await runtime.publish("account:changed", payload={"seq": 1}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.stats().dead == 1
        assert runtime.held_keys() == {}
    assert log == [1]


async def test_hold_keeps_a_keys_later_events_until_the_dead_letter_is_redelivered(
    registry: Registry,
) -> None:
    """keyed_dead_letters="hold": event 1 waits; redelivering event 0 runs it first, then 1."""
    log: list[int] = []
    broken = True

    async def receiver(event: Event) -> None:
        if broken and event.payload["seq"] == 0:
            raise ValueError("poison")
        log.append(event.payload["seq"])

    registry.subscribe("account:changed", receiver, id="r", retry=RetryPolicy(attempts=1))
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        first = await runtime.publish("account:changed", payload={"seq": 0}, key="k")
        await runtime.publish("account:changed", payload={"seq": 1}, key="k")
        await runtime.publish("account:changed", payload={"seq": 2}, key="free")
        with anyio.fail_after(5):
            await runtime.drain()
        assert log == [2]
        assert runtime.held_keys() == {("r", "k"): first.id}
        assert (runtime.stats().queued, runtime.stats().held) == (1, 1)  # event 1 waits
        broken = False
        assert await runtime.redeliver() == 1
        with anyio.fail_after(5):
            await runtime.drain()
        assert runtime.held_keys() == {}
        assert runtime.stats().active_keys == 0
    assert log == [2, 0, 1]


async def test_release_key_skips_past_the_dead_letter_that_holds_it(registry: Registry) -> None:
    """release_key lets the later events run; the dead letter stays listed."""
    log: list[int] = []

    async def receiver(event: Event) -> None:
        if event.payload["seq"] == 0:
            raise ValueError("poison")
        log.append(event.payload["seq"])

    registry.subscribe("account:changed", receiver, id="r", retry=RetryPolicy(attempts=1))
    async with EventRuntime(registry, keyed_dead_letters="hold") as runtime:
        await runtime.publish("account:changed", payload={"seq": 0}, key="k")
        await runtime.publish("account:changed", payload={"seq": 1}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
        assert log == []
        assert runtime.release_key("r", "k") is True
        assert runtime.release_key("r", "k") is False
        with anyio.fail_after(5):
            await runtime.drain()
        assert len(await runtime.dead_letters()) == 1
    assert log == [1]


async def test_an_evicted_dead_letter_that_holds_a_key_says_how_to_release_it(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a store, a holding letter evicted past max_dead_letters can no longer be
    redelivered: the warning names the key and the release_key call that frees it."""
    log: list[int] = []

    async def receiver(event: Event) -> None:
        if event.payload["seq"] < 2:
            raise ValueError("poison")
        log.append(event.payload["seq"])

    registry.subscribe("account:changed", receiver, id="r", retry=RetryPolicy(attempts=1))
    caplog.set_level("WARNING", logger="aevents")
    async with EventRuntime(registry, keyed_dead_letters="hold", max_dead_letters=1) as runtime:
        await runtime.publish("account:changed", payload={"seq": 0}, key="k\x1b")
        await runtime.publish("account:changed", payload={"seq": 2}, key="k\x1b")
        await runtime.publish("account:changed", payload={"seq": 1}, key="other")
        with anyio.fail_after(5):
            await runtime.drain()
        assert len(await runtime.dead_letters()) == 1  # the first letter was evicted
        assert ("r", "k\x1b") in runtime.held_keys()
        messages = [record.getMessage() for record in caplog.records]
        hint = [message for message in messages if "still holds key" in message]
        assert hint == [
            f"evicted dead letter {hint[0].split()[3]} still holds key 'k\\x1b' of receiver "
            "'r'; runtime.release_key('r', 'k\\x1b') lets the deliveries behind it run"
        ]
        assert "\x1b" not in hint[0]
        assert runtime.release_key("r", "k\x1b") is True
        with anyio.fail_after(5):
            await runtime.drain()
    assert log == [2]


@pytest.mark.parametrize("key", [42, "", "k" * 201])
async def test_a_bad_key_fails_at_the_call_site(registry: Registry, key: object) -> None:
    """A key that is not a 1-200 character string is a PayloadError naming the event."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError, match=r"event 'account:changed': key: "):
            await runtime.publish("account:changed", key=key)  # type: ignore[arg-type]
        with pytest.raises(aevents.PayloadError, match=r"key: "):
            runtime.publish_nowait("account:changed", key=key)  # type: ignore[arg-type]
        assert runtime.stats().published == 0


def test_an_unknown_dead_letter_policy_is_a_configuration_error() -> None:
    """keyed_dead_letters accepts "skip" and "hold" only."""
    with pytest.raises(aevents.ConfigurationError, match="keyed_dead_letters"):
        EventRuntime(keyed_dead_letters="drop")  # type: ignore[arg-type]


async def test_module_level_publish_and_threads_carry_the_key(registry: Registry) -> None:
    """aevents.publish, publish_nowait and publish_threadsafe all take key=."""
    keys: list[str | None] = []

    async def receiver(event: Event) -> None:
        keys.append(event.key)

    registry.subscribe("account:changed", receiver, id="r")
    async with EventRuntime(registry) as runtime:
        await aevents.publish("account:changed", key="a")
        aevents.publish_nowait("account:changed", key="b")
        await anyio.to_thread.run_sync(
            lambda: aevents.publish_threadsafe("account:changed", key="c")
        )
        with anyio.fail_after(5):
            await runtime.drain()
    assert keys == ["a", "b", "c"]


async def test_order_holds_across_a_restart_and_new_events_wait_behind_the_replay(
    registry: Registry,
) -> None:
    """Pending keyed deliveries replay in order, flagged as replays, before newer ones."""
    store = MemoryStore()  # keeps its journal across close and open
    stuck = True
    log: list[tuple[int, bool]] = []

    async def receiver(event: Event) -> None:
        if stuck:
            await anyio.sleep_forever()
        info = aevents.current_delivery()
        assert info is not None
        log.append((event.payload["seq"], info.replay))

    registry.subscribe("account:changed", receiver, id="r")
    async with EventRuntime(registry, store=store, shutdown_timeout=0) as runtime:
        for seq in range(300):  # more than the journal's first page, so the replay streams
            await runtime.publish("account:changed", payload={"seq": seq}, key="k")
    stuck = False
    async with EventRuntime(registry, store=store, workers=4) as runtime:
        await runtime.publish("account:changed", payload={"seq": 300}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
    assert log == [(seq, True) for seq in range(300)] + [(300, False)]


async def test_hold_survives_a_restart_with_a_store(registry: Registry) -> None:
    """A keyed dead letter in the journal holds its key again on the next start."""
    store = MemoryStore()
    log: list[int] = []
    broken = True

    async def receiver(event: Event) -> None:
        if broken and event.payload["seq"] == 0:
            raise ValueError("poison")
        log.append(event.payload["seq"])

    registry.subscribe("account:changed", receiver, id="r", retry=RetryPolicy(attempts=1))
    runtime = EventRuntime(registry, store=store, keyed_dead_letters="hold", shutdown_timeout=0)
    async with runtime:
        await runtime.publish("account:changed", payload={"seq": 0}, key="k")
        await runtime.publish("account:changed", payload={"seq": 1}, key="k")
        with anyio.fail_after(5):
            await runtime.drain()
    assert log == []
    broken = False
    async with EventRuntime(registry, store=store, keyed_dead_letters="hold") as runtime:
        with anyio.fail_after(5):
            await runtime.drain()
        assert log == []  # event 1 was replayed into its lane, behind the held key
        assert list(runtime.held_keys()) == [("r", "k")]
        await runtime.redeliver()
        with anyio.fail_after(5):
            await runtime.drain()
    assert log == [0, 1]


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", None]),  # ordering key
        st.integers(min_value=0, max_value=3),  # attempts that fail (3 or more: dead letter)
        st.integers(min_value=0, max_value=3),  # checkpoints the receiver takes
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=EVENTS, workers=st.integers(min_value=1, max_value=6))
async def test_every_receiver_completes_each_key_in_publish_order(
    events: list[tuple[str | None, int, int]], workers: int
) -> None:
    """Random keys, failures and delays: per (receiver, key), completions follow publishing."""
    registry = Registry()
    tracker = Tracker()
    attempts: dict[tuple[str, int], int] = defaultdict(int)

    def make(receiver_id: str):  # type: ignore[no-untyped-def]
        async def receiver(event: Event) -> None:
            seq = event.payload["seq"]
            attempts[receiver_id, seq] += 1
            tracker.enter(receiver_id, event)
            try:
                for _ in range(events[seq][2]):
                    await checkpoint()
                if attempts[receiver_id, seq] <= events[seq][1]:
                    raise ConnectionError("random failure")
            except BaseException:
                tracker.leave(receiver_id, event, done=False)
                raise
            tracker.leave(receiver_id, event, done=True)

        return receiver

    for receiver_id in ("first", "second"):
        registry.subscribe("entity:changed", make(receiver_id), id=receiver_id, retry=THREE_TRIES)
    async with EventRuntime(registry, workers=workers, buffer=4) as runtime:
        for seq, (key, _, _) in enumerate(events):
            await runtime.publish("entity:changed", payload={"seq": seq}, key=key)
        with anyio.fail_after(30):
            await runtime.drain()
        assert runtime.stats().active_keys == 0
    assert tracker.overlaps == []
    for receiver_id in ("first", "second"):
        for key in ("a", "b", "c"):
            expected = [
                seq
                for seq, (event_key, failures, _) in enumerate(events)
                if event_key == key and failures < THREE_TRIES.attempts
            ]
            assert tracker.completed[(receiver_id, key)] == expected
