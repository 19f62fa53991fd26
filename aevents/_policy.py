"""Delivery policy: how often a failing delivery is tried again, and what a dead letter holds."""

from __future__ import annotations

import random
from datetime import datetime

import attrs

from ._event import Event
from ._exceptions import ConfigurationError

__all__ = [
    "MAX_ERROR_MESSAGE_CHARS",
    "DeadLetter",
    "RetryPolicy",
    "describe_error",
    "escape_control",
]

MAX_ERROR_MESSAGE_CHARS = 2000
"""A dead letter keeps at most this much of the error's message."""


@attrs.frozen(slots=True)
class RetryPolicy:
    """How many times a delivery is tried, and how long to wait in between.

    The wait before try *n + 1* is ``initial_delay * multiplier ** (n - 1)``,
    capped at ``max_delay``, then shortened by a random fraction of up to
    ``jitter`` so that many failing deliveries do not retry in lock step.
    A waiting retry holds no worker.

    Attributes:
        attempts: Tries in all, the first included: ``1`` means no retry.
            Default 3.
        initial_delay: Seconds before the second try. Default 0.1.
        multiplier: Each later wait is this many times the one before (at
            least 1). Default 2.
        max_delay: The longest wait, in seconds. Default 30.
        jitter: The largest fraction, from 0 to 1, by which a wait is
            shortened at random. Default 0.25.

    Raises:
        ConfigurationError: A field is out of range or not a number.
    """

    attempts: int = 3
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.25

    def __attrs_post_init__(self) -> None:
        if type(self.attempts) is not int or self.attempts < 1:
            raise ConfigurationError(
                "RetryPolicy", f"attempts must be an int >= 1, got {self.attempts!r}"
            )
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ConfigurationError(
                    "RetryPolicy", f"{name} must be a finite number >= 0, got {value!r}"
                )
        if not isinstance(self.multiplier, int | float) or not 1 <= self.multiplier < float("inf"):
            raise ConfigurationError(
                "RetryPolicy", f"multiplier must be >= 1, got {self.multiplier!r}"
            )
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                "RetryPolicy", f"jitter must be between 0 and 1, got {self.jitter!r}"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1 - self.jitter * random.random())


@attrs.frozen(slots=True)
class DeadLetter:
    """A delivery that failed on every attempt its policy allowed.

    ``error_message`` is capped at ``MAX_ERROR_MESSAGE_CHARS`` characters.
    ``EventRuntime.redeliver`` queues it again with a fresh set of attempts.
    """

    id: str
    event: Event
    receiver_id: str
    attempts: int
    error_type: str
    error_message: str
    failed_at: datetime


# C0 and C1 control characters (newlines and tabs too), as escapes: a log line is one line.
_CONTROL_ESCAPES: dict[int, str] = {
    code: repr(chr(code))[1:-1] for code in (*range(0x20), *range(0x7F, 0xA0))
}


def escape_control(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``), for log lines."""
    return text.translate(_CONTROL_ESCAPES)


def describe_error(error: BaseException) -> tuple[str, str]:
    """``(qualified type name, capped message)`` of an error, for dead letters and logs."""
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not break the runtime
        message = f"<unprintable {name}>"
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
    return name, message
