"""IdempotencyWindow and the idempotency key check: pure, synchronous, no runtime."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aevents import ConfigurationError, PayloadError
from aevents._event import Event, make_event, new_event_id
from aevents._idempotency import (
    IDEMPOTENCY_KEY,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    IdempotencyWindow,
    validate_idempotency_key,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def keyed(key: str, seconds: float = 0.0) -> Event:
    return Event(new_event_id(), "order.paid", {}, at(seconds), {IDEMPOTENCY_KEY: key})


# -- validate_idempotency_key ----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "order-7-paid",
        "k",
        "commande-7-payée",
        "注文 7 👩‍💻",  # a space and a zero-width joiner are fine
        'it\'s "quoted"',
        "x" * MAX_IDEMPOTENCY_KEY_LENGTH,
    ],
)
def test_a_valid_key_comes_back_unchanged(key: str) -> None:
    """A non-empty, printable str of up to 200 characters is accepted as it is."""
    assert validate_idempotency_key("order.paid", key) == key


class Keys(enum.StrEnum):
    PAID = "order-7-paid"


def test_a_str_subclass_comes_back_as_a_plain_str() -> None:
    """A StrEnum member is accepted as its characters, as a plain str."""
    key = validate_idempotency_key("order.paid", Keys.PAID)
    assert (type(key), key) == (str, "order-7-paid")


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (7, "expected a str, got int"),
        (b"order-7", "expected a str, got bytes"),
        (None, "expected a str, got NoneType"),
        ("", "must not be empty"),
        ("x" * 201, "is 201 characters long; the limit is 200"),
        ("order\n7", r"contains a control character ('\n' at index 5)"),
        ("\x00", r"contains a control character ('\x00' at index 0)"),
        ("a\x7f", r"contains a control character ('\x7f' at index 1)"),
        ("a\x9b[31m", r"contains a control character ('\x9b' at index 1)"),
        ("ab\ud800", r"contains a lone surrogate ('\ud800' at index 2)"),
    ],
)
def test_a_bad_key_is_a_payload_error_naming_the_event(key: object, problem: str) -> None:
    """Non-str, empty, too long or control characters raise PayloadError with the reason."""
    with pytest.raises(PayloadError) as caught:
        validate_idempotency_key("order.paid", key)
    error = caught.value
    assert (error.event, error.path, error.problem) == ("order.paid", "idempotency_key", problem)
    assert str(error) == f"event 'order.paid': idempotency_key: {problem}"


# -- IdempotencyWindow -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "max_keys", "match"),
    [
        (0, 10, "window"),
        (-1.0, 10, "window"),
        (float("inf"), 10, "window"),
        (float("nan"), 10, "window"),
        (True, 10, "window"),
        ("60", 10, "window"),
        (60, 0, "max_keys"),
        (60, 1.5, "max_keys"),
        (60, True, "max_keys"),
    ],
)
def test_bad_settings_raise_configuration_error(
    window: object, max_keys: object, match: str
) -> None:
    """A window must be positive and finite, max_keys an int of at least 1."""
    with pytest.raises(ConfigurationError, match=match):
        IdempotencyWindow(window, max_keys)  # type: ignore[arg-type]


def test_get_returns_the_event_added_until_it_expires() -> None:
    """A key answers with its event strictly before occurred_at + window, then with None."""
    window = IdempotencyWindow(60, 10)
    event = keyed("k", seconds=0)
    window.add("k", event)
    assert window.get("k", at(0)) is event
    assert window.get("k", at(59.999999)) is event
    assert window.get("other", at(1)) is None
    assert window.get("k", at(60)) is None
    assert len(window) == 0  # an expired key found by get is dropped


def test_a_key_expired_can_be_added_again() -> None:
    """After expiry the next event for a key takes it over."""
    window = IdempotencyWindow(10, 10)
    first, second = keyed("k", 0), keyed("k", 15)
    window.add("k", first)
    assert window.get("k", at(15)) is None
    window.add("k", second)
    assert window.get("k", at(20)) is second
    assert len(window) == 1


def test_the_oldest_key_is_evicted_beyond_max_keys() -> None:
    """With max_keys reached, adding a key forgets the one added longest ago."""
    window = IdempotencyWindow(3600, 3)
    events = [keyed(f"k{n}", n) for n in range(4)]
    for event in events:
        window.add(event.metadata[IDEMPOTENCY_KEY], event)
    assert len(window) == 3
    assert window.get("k0", at(5)) is None
    assert [window.get(f"k{n}", at(5)) for n in (1, 2, 3)] == events[1:]


def test_re_adding_a_key_makes_it_the_newest() -> None:
    """A key added again moves to the back, so it is evicted last."""
    window = IdempotencyWindow(3600, 2)
    window.add("a", keyed("a", 0))
    window.add("b", keyed("b", 1))
    newer_a = keyed("a", 2)
    window.add("a", newer_a)
    window.add("c", keyed("c", 3))
    assert window.get("b", at(4)) is None
    assert window.get("a", at(4)) is newer_a


def test_adding_drops_keys_already_expired_at_the_front() -> None:
    """Keys expired by the new event's time are dropped without waiting for max_keys."""
    window = IdempotencyWindow(10, 100)
    for n in range(5):
        window.add(f"old{n}", keyed(f"old{n}", n))
    window.add("new", keyed("new", 12.5))  # old0..old2 expired at 10, 11, 12
    assert len(window) == 3
    assert window.get("old3", at(12.5)) is not None


def test_discard_forgets_a_key() -> None:
    """A discarded key is absent; discarding an absent key is fine."""
    window = IdempotencyWindow(60, 10)
    window.add("k", keyed("k"))
    window.discard("k")
    window.discard("never-added")
    assert window.get("k", at(1)) is None
    assert len(window) == 0


def test_seed_adds_keyed_events_and_skips_the_rest() -> None:
    """Seeding takes the key from each event's metadata; events without a key are skipped."""
    window = IdempotencyWindow(60, 10)
    keyed_events = [keyed("a", 0), keyed("b", 1)]
    plain = make_event("order.paid", {}, {})
    window.seed([keyed_events[0], plain, keyed_events[1]])
    assert len(window) == 2
    assert [window.get(key, at(2)) for key in ("a", "b")] == keyed_events


def test_seed_keeps_the_newest_max_keys() -> None:
    """Seeding more events than max_keys (oldest first, as a store gives them) keeps the newest."""
    window = IdempotencyWindow(3600, 2)
    events = [keyed(f"k{n}", n) for n in range(5)]
    window.seed(events)
    assert [window.get(f"k{n}", at(5)) for n in range(5)] == [None, None, None, *events[3:]]


operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "get", "discard"]),
        st.sampled_from([f"key-{n}" for n in range(8)]),
        st.floats(min_value=0, max_value=100, allow_nan=False),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    operations=operations,
    window_seconds=st.floats(min_value=0.5, max_value=30),
    max_keys=st.integers(min_value=1, max_value=6),
)
def test_the_window_stays_bounded_and_never_answers_with_an_expired_event(
    operations: list[tuple[str, str, float]], window_seconds: float, max_keys: int
) -> None:
    """Under any mix of calls the window holds at most max_keys and get never returns a stale
    event, nor an event added for another key."""
    window = IdempotencyWindow(window_seconds, max_keys)
    clock = 0.0
    for action, key, step in operations:
        clock += step / 10  # time only moves forward, as the runtime's clock does
        now = at(clock)
        if action == "add":
            window.add(key, keyed(key, clock))
        elif action == "discard":
            window.discard(key)
        else:
            found = window.get(key, now)
            if found is not None:
                assert found.metadata[IDEMPOTENCY_KEY] == key
                assert now < found.occurred_at + timedelta(seconds=window_seconds)
        assert len(window) <= max_keys


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.sampled_from("abcdefgh"), max_size=60), max_keys=st.integers(1, 5))
def test_the_window_remembers_the_newest_distinct_keys(keys: list[str], max_keys: int) -> None:
    """With nothing expiring, exactly the max_keys most recently added keys are remembered."""
    window = IdempotencyWindow(3600, max_keys)
    for seconds, key in enumerate(keys):
        window.add(key, keyed(key, seconds))
    newest = list(dict.fromkeys(reversed(keys)))[:max_keys]
    remembered = {key for key in "abcdefgh" if window.get(key, at(len(keys))) is not None}
    assert remembered == set(newest)


# -- edges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x1f", "\x7f", "\x80", "\x9f", "\udfff"])
def test_the_first_and_last_forbidden_characters_are_refused(char: str) -> None:
    """The ends of the C0, DEL/C1 and surrogate ranges are refused."""
    with pytest.raises(PayloadError, match="at index 1"):
        validate_idempotency_key("order.paid", f"a{char}")


@pytest.mark.parametrize("char", [" ", "~", "\xa0", "\ud7ff", "\ue000", "\U0001f600"])
def test_characters_just_outside_the_forbidden_ranges_are_accepted(char: str) -> None:
    """0x20, 0x7e, 0xa0 and the characters around the surrogate block are fine."""
    assert validate_idempotency_key("order.paid", f"a{char}") == f"a{char}"


@pytest.mark.parametrize(
    ("window", "max_keys", "problem"),
    [
        (0, 10, "window must be a finite number of seconds > 0, got 0"),
        (True, 10, "window must be a finite number of seconds > 0, got True"),
        (60, 0, "max_keys must be an int >= 1, got 0"),
    ],
)
def test_bad_settings_are_explained_exactly(window: object, max_keys: object, problem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        IdempotencyWindow(window, max_keys)  # type: ignore[arg-type]
    assert (caught.value.what, caught.value.problem) == ("idempotency window", problem)


def test_the_smallest_settings_are_accepted_and_shown_in_the_repr() -> None:
    """An int window is kept as float seconds; one key is enough."""
    window = IdempotencyWindow(1, 1)
    assert (window.window, type(window.window), window.max_keys) == (1.0, float, 1)
    assert repr(window) == "IdempotencyWindow(window=1, max_keys=1, keys=0)"
    window.add("k", keyed("k"))
    assert repr(IdempotencyWindow(0.5, 3)) == "IdempotencyWindow(window=0.5, max_keys=3, keys=0)"
    assert repr(window) == "IdempotencyWindow(window=1, max_keys=1, keys=1)"


def test_a_key_that_expires_exactly_when_the_next_is_added_is_dropped() -> None:
    """Expiry is ``occurred_at + window``, inclusive: at that instant the key is gone."""
    window = IdempotencyWindow(10, 100)
    window.add("a", keyed("a", 0))
    window.add("b", keyed("b", 1))
    window.add("c", keyed("c", 10))  # "a" expires at 10
    assert len(window) == 2
    assert window.get("b", at(10)) is not None
