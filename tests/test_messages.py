"""Messages count in good English, and the assertion helpers hide their own frames."""

from __future__ import annotations

import logging

import anyio
import pytest

from aevents import (
    DeliveryInfo,
    Event,
    EventRuntime,
    PayloadError,
    QueueFullError,
    Registry,
    RetryPolicy,
)
from aevents._event import make_event
from aevents._payload import encode_metadata
from aevents._text import counted, plural, with_article
from aevents.testing import Captured, Recorder, assert_dead_lettered


@pytest.mark.parametrize(
    ("count", "noun", "expected"),
    [
        (0, "delivery", "0 deliveries"),
        (1, "delivery", "1 delivery"),
        (2, "delivery", "2 deliveries"),
        (1, "event", "1 event"),
        (3, "event", "3 events"),
        (1, "dead letter", "1 dead letter"),
        (2, "dead letter", "2 dead letters"),
        (2, "key", "2 keys"),
        (2, "pass", "2 passes"),
    ],
)
def test_counted_uses_the_singular_for_one_only(count: int, noun: str, expected: str) -> None:
    """One takes the singular; zero and many the plural."""
    assert counted(count, noun) == expected


def test_plural_of_a_noun_phrase_changes_its_last_word() -> None:
    """ "done delivery" becomes "done deliveries"."""
    assert plural("done delivery") == "done deliveries"


@pytest.mark.parametrize(
    ("word", "expected"),
    [("int", "an int"), ("str", "a str"), ("Event", "an Event"), ("UUID", "a UUID")],
)
def test_with_article_picks_a_or_an_by_sound(word: str, expected: str) -> None:
    """ "an int", "a str", "a UUID"."""
    assert with_article(word) == expected


def test_a_non_string_metadata_key_is_an_int() -> None:
    """The payload error says "is an int", not "is a int"."""
    with pytest.raises(PayloadError, match="key 1 is an int, not str"):
        encode_metadata("order:placed", {1: "x"})


def test_a_buffer_of_one_is_one_delivery() -> None:
    """QueueFullError for buffer=1 says "1 delivery"."""
    assert "the buffer of 1 delivery is full" in str(QueueFullError("order:placed", 1))


def test_reprs_count_in_the_singular() -> None:
    """Captured and Recorder reprs say "1 event" and "1 delivery"."""
    captured = Captured()
    captured.events.append(make_event("order:placed", {}, {}))
    assert "<Captured 1 event:" in repr(captured)
    recorder = Recorder()
    event = make_event("order:placed", {}, {})
    recorder.deliveries.append(DeliveryInfo(event, "recorder", 1, "order:placed", False))
    assert repr(recorder).endswith(": 1 delivery>")


@pytest.mark.anyio
async def test_log_lines_count_in_the_singular(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """One dead-lettered attempt and one undelivered event read as singular."""
    stuck = anyio.Event()

    async def broken(event: Event) -> None:
        raise RuntimeError("boom")

    async def waits(event: Event) -> None:
        await stuck.wait()

    registry.subscribe("order:placed", broken, id="broken", retry=RetryPolicy(attempts=1))
    registry.subscribe("order:shipped", waits, id="waits")
    caplog.set_level(logging.WARNING, logger="aevents")
    async with EventRuntime(registry, shutdown_timeout=0) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
        await runtime.publish("order:shipped")
    messages = [record.getMessage() for record in caplog.records]
    assert any("after 1 attempt;" in message for message in messages), messages
    assert any("stopped with 1 delivery not run" in message for message in messages), messages


def _frames(error: BaseException) -> list[str]:
    """The names of the traceback's frames that do not hide themselves from pytest."""
    names = []
    traceback = error.__traceback__
    while traceback is not None:
        if not traceback.tb_frame.f_locals.get("__tracebackhide__", False):
            names.append(traceback.tb_frame.f_code.co_name)
        traceback = traceback.tb_next
    return names


def test_a_failed_assert_published_hides_the_helper() -> None:
    """Its frame sets __tracebackhide__, so pytest points at the test's line."""
    captured = Captured()
    with pytest.raises(AssertionError) as raised:
        captured.assert_published("order:placed")
    assert "assert_published" not in _frames(raised.value)
    captured.events.append(make_event("order:placed", {}, {}))
    with pytest.raises(AssertionError) as raised:
        captured.assert_not_published("order:placed")
    assert "assert_not_published" not in _frames(raised.value)


@pytest.mark.anyio
async def test_a_failed_assert_dead_lettered_hides_the_helper(registry: Registry) -> None:
    """The dead-letter assertion hides its frame too, and says "at least one dead letter"."""
    async with EventRuntime(registry) as runtime:
        with pytest.raises(AssertionError) as raised:
            await assert_dead_lettered("order:placed", runtime=runtime)
    assert "assert_dead_lettered" not in _frames(raised.value)
    assert "expected at least one dead letter of 'order:placed'" in str(raised.value)
