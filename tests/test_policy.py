"""RetryPolicy's checks and backoff, and how errors are described for dead letters and logs."""

from __future__ import annotations

import math
import random

import pytest

import aevents
from aevents import RetryPolicy
from aevents._policy import MAX_ERROR_MESSAGE_CHARS, describe_error, escape_control

# ------------------------------------------------------------------ RetryPolicy


def test_the_defaults_are_documented_values() -> None:
    """Three tries, 0.1 s doubling up to 30 s, shortened by up to a quarter."""
    policy = RetryPolicy()
    assert (policy.attempts, policy.initial_delay, policy.multiplier) == (3, 0.1, 2.0)
    assert (policy.max_delay, policy.jitter) == (30.0, 0.25)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"attempts": 0}, "attempts must be an int >= 1, got 0"),
        ({"attempts": 1.0}, "attempts must be an int >= 1, got 1.0"),
        ({"attempts": True}, "attempts must be an int >= 1, got True"),
        ({"initial_delay": -0.1}, "initial_delay must be a finite number >= 0, got -0.1"),
        ({"initial_delay": math.inf}, "initial_delay must be a finite number >= 0, got inf"),
        ({"initial_delay": math.nan}, "initial_delay must be a finite number >= 0, got nan"),
        ({"initial_delay": "1"}, "initial_delay must be a finite number >= 0, got '1'"),
        ({"max_delay": -0.1}, "max_delay must be a finite number >= 0, got -0.1"),
        ({"max_delay": math.inf}, "max_delay must be a finite number >= 0, got inf"),
        ({"max_delay": "1"}, "max_delay must be a finite number >= 0, got '1'"),
        ({"multiplier": 0.5}, "multiplier must be >= 1, got 0.5"),
        ({"multiplier": math.inf}, "multiplier must be >= 1, got inf"),
        ({"multiplier": "2"}, "multiplier must be >= 1, got '2'"),
        ({"jitter": -0.1}, "jitter must be between 0 and 1, got -0.1"),
        ({"jitter": 1.1}, "jitter must be between 0 and 1, got 1.1"),
        ({"jitter": "0.1"}, "jitter must be between 0 and 1, got '0.1'"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_bad_settings_raise_configuration_error_naming_the_field(
    settings: dict[str, object], message: str
) -> None:
    """Each bad value is refused with a message naming the field, the rule and the value."""
    with pytest.raises(aevents.ConfigurationError) as caught:
        RetryPolicy(**settings)  # type: ignore[arg-type]
    assert caught.value.what == "RetryPolicy"
    assert caught.value.problem == message
    assert str(caught.value) == f"RetryPolicy: {message}"


@pytest.mark.parametrize(
    "settings",
    [
        {"attempts": 1},
        {"initial_delay": 0, "max_delay": 0},
        {"initial_delay": 2, "max_delay": 1e9},
        {"multiplier": 1},
        {"jitter": 0},
        {"jitter": 1},
    ],
)
def test_boundary_settings_are_accepted(settings: dict[str, float]) -> None:
    """The edges of each range are valid: one try, no delay, no growth, no or full jitter."""
    policy = RetryPolicy(**settings)  # type: ignore[arg-type]
    for name, value in settings.items():
        assert getattr(policy, name) == value


def test_a_multiplier_of_one_keeps_the_delay_constant() -> None:
    """``multiplier=1`` retries at the same interval every time."""
    policy = RetryPolicy(attempts=5, initial_delay=0.5, multiplier=1, jitter=0)
    assert [policy.delay(n) for n in range(1, 5)] == [0.5, 0.5, 0.5, 0.5]


def test_jitter_shortens_the_delay_by_its_fraction_of_a_random_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The delay is ``base * (1 - jitter * random())``: never longer than the base."""
    policy = RetryPolicy(initial_delay=2, multiplier=3, jitter=0.5)
    monkeypatch.setattr(random, "random", lambda: 0.5)
    assert policy.delay(1) == 2 * 0.75
    assert policy.delay(2) == 6 * 0.75
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert policy.delay(1) == 2
    full = RetryPolicy(initial_delay=2, jitter=1)
    monkeypatch.setattr(random, "random", lambda: 0.99)
    assert full.delay(1) == pytest.approx(0.02)


# ------------------------------------------------------------------ describe_error


class ShippingError(Exception):
    """An exception defined outside builtins."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_builtin_errors_are_named_by_qualname_alone() -> None:
    """``ValueError``, not ``builtins.ValueError``."""
    assert describe_error(ValueError("bad")) == ("ValueError", "bad")


def test_other_errors_are_named_with_their_module() -> None:
    """A dead letter names where the error class lives."""
    name, message = describe_error(ShippingError("lost"))
    assert name == f"{__name__}.ShippingError"
    assert message == "lost"


def test_an_error_whose_str_raises_is_described_as_unprintable() -> None:
    """A broken ``__str__`` gives a placeholder message instead of breaking the runtime."""
    name = f"{__name__}.Unprintable"
    assert describe_error(Unprintable()) == (name, f"<unprintable {name}>")


def test_messages_up_to_the_cap_are_kept_whole() -> None:
    """A message of exactly ``MAX_ERROR_MESSAGE_CHARS`` characters is not cut."""
    assert MAX_ERROR_MESSAGE_CHARS == 2000
    text = "x" * MAX_ERROR_MESSAGE_CHARS
    assert describe_error(RuntimeError(text)) == ("RuntimeError", text)


def test_longer_messages_are_cut_to_the_cap_with_an_ellipsis() -> None:
    """One character over the cap: the message keeps 1,999 characters and ends in '…'."""
    text = "abc" * 1000
    _, message = describe_error(RuntimeError(text))
    assert len(message) == MAX_ERROR_MESSAGE_CHARS
    assert message == text[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    _, message = describe_error(RuntimeError("y" * (MAX_ERROR_MESSAGE_CHARS + 1)))
    assert message == "y" * (MAX_ERROR_MESSAGE_CHARS - 1) + "…"


# ------------------------------------------------------------------ escape_control


@pytest.mark.parametrize(
    ("char", "escaped"),
    [
        ("\x00", "\\x00"),
        ("\n", "\\n"),
        ("\t", "\\t"),
        ("\x1b", "\\x1b"),
        ("\x1f", "\\x1f"),
        ("\x7f", "\\x7f"),
        ("\x80", "\\x80"),
        ("\x9f", "\\x9f"),
    ],
)
def test_control_characters_are_escaped(char: str, escaped: str) -> None:
    """C0 controls (0x00-0x1f), DEL (0x7f) and C1 controls (0x80-0x9f) become escapes."""
    assert escape_control(f"a{char}b") == f"a{escaped}b"


@pytest.mark.parametrize("char", [" ", "~", "\xa0", "é", "\u2028", "注"])
def test_characters_past_the_control_ranges_are_kept(char: str) -> None:
    """0x20, 0x7e, 0xa0 and everything above the C1 range are left as they are."""
    assert escape_control(f"a{char}b") == f"a{char}b"
