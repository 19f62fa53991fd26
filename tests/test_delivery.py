"""Delivery policy: isolation, retries with backoff, timeouts, dead letters, redelivery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio import wait_all_tasks_blocked

import aevents
from aevents import Event, EventRuntime, Registry, RetryPolicy

pytestmark = pytest.mark.anyio

IMMEDIATE = RetryPolicy(attempts=3, initial_delay=0, jitter=0)


def flaky(failures: int, attempts_seen: list[int]) -> Callable[[Event], Awaitable[None]]:
    """An async receiver that fails `failures` times, recording each attempt number."""

    async def receiver(event: Event) -> None:
        info = aevents.current_delivery()
        assert info is not None
        attempts_seen.append(info.attempt)
        if len(attempts_seen) <= failures:
            raise ConnectionError(f"flaky failure {len(attempts_seen)}")

    return receiver


async def test_a_failing_receiver_does_not_affect_the_others(registry: Registry) -> None:
    """One receiver raising leaves its siblings, later events and the runtime unaffected."""
    delivered: list[str] = []

    async def broken(event: Event) -> None:
        raise RuntimeError("boom")

    async def healthy(event: Event) -> None:
        delivered.append(event.id)

    registry.subscribe("user:account:created", broken, id="broken")
    registry.subscribe("user:account:created", healthy, id="healthy")
    async with EventRuntime(registry, retry=RetryPolicy(attempts=1)) as runtime:
        first = await runtime.publish("user:account:created")
        second = await runtime.publish("user:account:created")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
    assert delivered == [first.id, second.id]
    assert (stats.delivered, stats.failed, stats.dead) == (2, 2, 2)


async def test_failed_attempts_are_retried_until_one_succeeds(registry: Registry) -> None:
    """A receiver failing twice under attempts=3 is delivered on its third attempt."""
    attempts: list[int] = []
    registry.subscribe("payment:captured", flaky(2, attempts), id="flaky", retry=IMMEDIATE)
    async with EventRuntime(registry) as runtime:
        await runtime.publish("payment:captured")
        with anyio.fail_after(5):
            await runtime.drain()
        stats = runtime.stats()
        assert await runtime.dead_letters() == []
    assert attempts == [1, 2, 3]
    assert (stats.delivered, stats.failed, stats.retried, stats.dead) == (1, 2, 2, 0)


async def test_exhausted_attempts_become_a_dead_letter(registry: Registry) -> None:
    """When attempts run out the delivery is dead-lettered with what went wrong."""
    attempts: list[int] = []
    registry.subscribe("payment:captured", flaky(99, attempts), id="flaky", retry=IMMEDIATE)
    async with EventRuntime(registry) as runtime:
        event = await runtime.publish("payment:captured", payload={"amount": 5})
        with anyio.fail_after(5):
            await runtime.drain()
        letters = await runtime.dead_letters()
        stats = runtime.stats()
    assert attempts == [1, 2, 3]
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.event, letter.receiver_id, letter.attempts) == (event, "flaky", 3)
    assert (letter.error_type, letter.error_message) == ("ConnectionError", "flaky failure 3")
    assert letter.failed_at.tzinfo is not None
    assert (stats.dead, stats.failed, stats.retried) == (1, 3, 2)


async def test_dead_letter_messages_are_capped(registry: Registry) -> None:
    """A huge error message is truncated in the dead letter."""

    async def verbose(event: Event) -> None:
        raise ValueError("x" * 100_000)

    registry.subscribe("log:spam", verbose, id="verbose", retry=RetryPolicy(attempts=1))
    async with EventRuntime(registry) as runtime:
        await runtime.publish("log:spam")
        with anyio.fail_after(5):
            await runtime.drain()
        (letter,) = await runtime.dead_letters()
    assert len(letter.error_message) <= aevents._policy.MAX_ERROR_MESSAGE_CHARS
    assert letter.error_message.startswith("xxx")


async def test_dead_letters_can_be_redelivered(registry: Registry) -> None:
    """redeliver() queues dead letters again with fresh attempts, and they leave the list."""
    healthy = False
    delivered: list[Event] = []

    async def receiver(event: Event) -> None:
        if not healthy:
            raise ConnectionError("downstream is down")
        delivered.append(event)

    registry.subscribe("mail:send", receiver, id="mailer", retry=RetryPolicy(attempts=1))
    async with EventRuntime(registry) as runtime:
        first = await runtime.publish("mail:send", payload={"to": "a"})
        second = await runtime.publish("mail:send", payload={"to": "b"})
        with anyio.fail_after(5):
            await runtime.drain()
        letters = await runtime.dead_letters()
        assert [letter.event for letter in letters] == [first, second]
        healthy = True
        assert await runtime.redeliver(letters[0]) == 1
        with anyio.fail_after(5):
            await runtime.drain()
        assert delivered == [first]
        assert await runtime.redeliver() == 1
        with anyio.fail_after(5):
            await runtime.drain()
        assert await runtime.dead_letters() == []
    assert delivered == [first, second]


async def test_redelivery_skips_receivers_that_are_gone(registry: Registry) -> None:
    """A dead letter whose receiver was unsubscribed stays dead."""

    async def receiver(event: Event) -> None:
        raise ConnectionError("down")

    registry.subscribe("mail:send", receiver, id="mailer", retry=RetryPolicy(attempts=1))
    async with EventRuntime(registry) as runtime:
        await runtime.publish("mail:send")
        with anyio.fail_after(5):
            await runtime.drain()
        registry.unsubscribe("mail:send", id="mailer")
        assert await runtime.redeliver() == 0
        assert len(await runtime.dead_letters()) == 1


async def test_a_receiver_that_runs_too_long_is_cancelled_and_fails(registry: Registry) -> None:
    """timeout= cancels a slow async receiver and counts the attempt as failed."""
    cancelled: list[bool] = []

    async def slow(event: Event) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    registry.subscribe(
        "report:build",
        slow,
        id="slow",
        timeout=0.05,
        retry=RetryPolicy(attempts=2, initial_delay=0, jitter=0),
    )
    async with EventRuntime(registry) as runtime:
        await runtime.publish("report:build")
        with anyio.fail_after(5):
            await runtime.drain()
        (letter,) = await runtime.dead_letters()
    assert cancelled == [True, True]
    assert letter.error_type == "TimeoutError"
    assert letter.attempts == 2


async def test_runtime_wide_defaults_apply_and_receivers_override_them(registry: Registry) -> None:
    """EventRuntime(retry=, timeout=) are defaults; subscribe(retry=) wins for its receiver."""
    default_attempts: list[int] = []
    own_attempts: list[int] = []
    registry.subscribe("job:run", flaky(99, default_attempts), id="default")
    registry.subscribe(
        "job:run",
        flaky(99, own_attempts),
        id="own",
        retry=RetryPolicy(attempts=4, initial_delay=0, jitter=0),
    )
    async with EventRuntime(registry, retry=RetryPolicy(attempts=2, initial_delay=0)) as runtime:
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    assert default_attempts == [1, 2]
    assert own_attempts == [1, 2, 3, 4]


async def test_a_retry_waiting_for_its_backoff_holds_no_worker(registry: Registry) -> None:
    """With one worker, other deliveries run while a failed one waits to retry."""
    attempts: list[int] = []
    delivered = anyio.Event()

    async def other(event: Event) -> None:
        delivered.set()

    registry.subscribe(
        "job:flaky",
        flaky(1, attempts),
        id="flaky",
        retry=RetryPolicy(attempts=2, initial_delay=60, jitter=0),
    )
    registry.subscribe("job:other", other, id="other")
    async with EventRuntime(registry, workers=1, shutdown_timeout=0) as runtime:
        await runtime.publish("job:flaky")
        await wait_all_tasks_blocked()
        assert runtime.stats().retrying == 1
        await runtime.publish("job:other")
        with anyio.fail_after(5):
            await delivered.wait()
    assert attempts == [1]
    assert runtime.stats().dropped == 1


async def test_retry_backoff_grows_and_is_capped() -> None:
    """Delays grow by the multiplier, stay under max_delay, and jitter only shortens them."""
    policy = RetryPolicy(attempts=10, initial_delay=1, multiplier=2, max_delay=5, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittered = RetryPolicy(initial_delay=1, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1 for _ in range(200))
    with pytest.raises(aevents.ConfigurationError):
        RetryPolicy(attempts=0)
    with pytest.raises(aevents.ConfigurationError):
        RetryPolicy(jitter=2)


async def test_each_failure_and_dead_letter_is_one_structured_log_record(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures log at WARNING, the dead letter at ERROR, with ids in `extra` fields."""
    registry.subscribe(
        "job:run",
        flaky(99, []),
        id="flaky\x1b[2J",
        retry=RetryPolicy(attempts=2, initial_delay=0, jitter=0),
    )
    caplog.set_level(logging.INFO, logger="aevents")
    async with EventRuntime(registry) as runtime:
        event = await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    records = [record for record in caplog.records if record.name == "aevents.delivery"]
    assert [record.levelno for record in records] == [logging.WARNING, logging.ERROR]
    for attempt, record in enumerate(records, start=1):
        assert record.__dict__["event_id"] == event.id
        assert record.__dict__["event_name"] == "job:run"
        assert record.__dict__["receiver_id"] == "flaky\x1b[2J"
        assert record.__dict__["attempt"] == attempt
        assert "\x1b" not in record.getMessage()  # the id is shown with repr()
    assert records[1].exc_info is not None


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_system_exit_and_keyboard_interrupt_are_not_swallowed(
    backend: str, error: BaseException
) -> None:
    """SystemExit or KeyboardInterrupt raised by a receiver ends the program as itself.

    (asyncio lets them escape the event loop directly; trio through the task
    tree; either way they reach the caller of ``anyio.run``.)
    """
    registry = Registry()

    async def quitter(event: Event) -> None:
        raise error

    registry.subscribe("app:quit", quitter, id="quitter")

    async def main() -> None:
        async with EventRuntime(registry) as runtime:
            await wait_all_tasks_blocked()  # every worker started, so none is left un-awaited
            await runtime.publish("app:quit")
            with anyio.fail_after(5):
                await runtime.drain()

    with pytest.raises(type(error)):
        anyio.run(main, backend=backend)


async def test_sync_callable_returning_a_coroutine_is_awaited(registry: Registry) -> None:
    """A lambda wrapping an async function works as a receiver."""
    seen: list[str] = []

    async def handle(event: Event, source: str) -> None:
        seen.append(source)

    registry.subscribe("wrap:ped", lambda event: handle(event, "lambda"), id="wrapped")
    async with EventRuntime(registry) as runtime:
        await runtime.publish("wrap:ped")
        with anyio.fail_after(5):
            await runtime.drain()
    assert seen == ["lambda"]


async def test_sync_receiver_failures_are_retried_and_dead_lettered(registry: Registry) -> None:
    """Sync receivers on threads follow the same policy as async ones."""
    calls: list[int] = []

    def broken(event: Event) -> None:
        calls.append(1)
        raise KeyError("missing")

    registry.subscribe("sync:broken", broken, id="broken", retry=IMMEDIATE)
    async with EventRuntime(registry) as runtime:
        await runtime.publish("sync:broken")
        with anyio.fail_after(5):
            await runtime.drain()
        (letter,) = await runtime.dead_letters()
    assert len(calls) == 3
    assert letter.error_type == "KeyError"


async def test_dead_letters_beyond_the_cap_are_evicted_and_counted(registry: Registry) -> None:
    """Memory stays bounded: past max_dead_letters the oldest letters go, counted as dropped."""

    async def broken(event: Event) -> None:
        raise RuntimeError("no")

    registry.subscribe("job:run", broken, id="broken", retry=RetryPolicy(attempts=1))
    async with EventRuntime(registry, max_dead_letters=3) as runtime:
        events = [await runtime.publish("job:run", payload={"n": n}) for n in range(5)]
        with anyio.fail_after(5):
            await runtime.drain()
        letters = await runtime.dead_letters()
        stats = runtime.stats()
    assert [letter.event for letter in letters] == events[2:]
    assert (stats.dead, stats.dropped) == (5, 2)
