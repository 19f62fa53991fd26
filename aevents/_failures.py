"""What a failed attempt becomes: a retry after its backoff, or a dead letter.

``Failures.on_failure`` is the one place that decides, for every path (the
workers, the durable workers, eager delivery); the caller acts on the answer.
``DeadLetterShelf`` keeps the dead letters of a runtime without a store.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ._delivery import Delivery, DeliveryInfo, ReceiverTimeout
from ._event import new_event_id
from ._lanes import Lanes
from ._middleware import MiddlewareStack, notify
from ._policy import DeadLetter, RetryPolicy, describe_error, escape_control
from ._registry import Registry, Subscription
from ._state import Counters
from ._text import counted

__all__ = ["DeadLetterShelf", "Failures", "Retry"]

logger = logging.getLogger("aevents.runtime")
delivery_logger = logging.getLogger("aevents.delivery")


class Retry(NamedTuple):
    """A failed attempt's answer: run ``delivery`` (the next attempt) after ``delay`` seconds."""

    delivery: Delivery
    delay: float


class Failures:
    """Counts, logs and decides failed attempts by the receiver's ``RetryPolicy``.

    An event whose receiver published past ``max_causation_depth`` is a
    *storm*: its delivery is dead-lettered at once instead of retried, since
    every retry would fail the same way.
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy,
        counters: Counters,
        middleware: MiddlewareStack,
        log_payloads: bool,
    ) -> None:
        self._retry = retry
        self._counters = counters
        self._middleware = middleware
        self._log_payloads = log_payloads
        self._storms: set[tuple[str, str]] = set()

    def policy(self, subscription: Subscription) -> RetryPolicy:
        """The retry policy that applies to ``subscription``'s deliveries."""
        retry = subscription.retry
        return retry if retry is not None else self._retry

    def storm(self, event_id: str, receiver_id: str) -> None:
        """The receiver of ``event_id`` published too deep: do not retry that delivery."""
        self._storms.add((event_id, receiver_id))

    def is_storm(self, event_id: str, receiver_id: str) -> bool:
        return (event_id, receiver_id) in self._storms

    def forget_storm(self, event_id: str, receiver_id: str) -> None:
        self._storms.discard((event_id, receiver_id))

    def will_retry(self, delivery: Delivery) -> bool:
        """Whether a failure of this attempt would be retried (attempts left, and no storm)."""
        subscription = delivery.subscription
        return (
            delivery.attempt < self.policy(subscription).attempts
            and (delivery.event.id, subscription.receiver_id) not in self._storms
        )

    def on_failure(
        self,
        delivery: Delivery,
        error: BaseException,
        duration: float | None,
        *,
        backoff: bool = True,
    ) -> Retry | DeadLetter:
        """Count a failed attempt and say what it becomes: a ``Retry`` or a ``DeadLetter``.

        ``duration`` is how long the attempt ran, in seconds (None if it never
        started). Without ``backoff`` a retry is due at once (eager delivery).
        The caller schedules the retry, or keeps (or journals) the letter and
        finishes the delivery.
        """
        event, subscription, attempt = delivery.event, delivery.subscription, delivery.attempt
        self._counters.failed += 1
        policy = self.policy(subscription)
        if type(error) is ReceiverTimeout:
            error_type, message = "TimeoutError", error.describe(attempt, policy.attempts)
        else:
            error_type, message = describe_error(error)
        extra: dict[str, Any] = {
            "event_id": event.id,
            "event_name": event.name,
            "receiver_id": subscription.receiver_id,
            "attempt": attempt,
            "duration": duration,
            "error_type": error_type,
        }
        if self._log_payloads:
            extra["payload"] = event.payload
        if self.will_retry(delivery):
            self._counters.retried += 1
            delay = policy.delay(attempt) if backoff else 0.0
            delivery_logger.warning(
                "receiver %r failed on %r (attempt %d of %d), %s: %s: %s",
                subscription.receiver_id,
                event.name,
                attempt,
                policy.attempts,
                f"retrying in {delay:.3f}s" if backoff else "retrying at once",
                error_type,
                escape_control(message),
                extra=extra,
            )
            if self._middleware.outcomes:
                notify(self._middleware.outcomes, "on_retry", delivery.info(), error, delay)
            return Retry(delivery.next_attempt(), delay)
        self._storms.discard((event.id, subscription.receiver_id))
        self._counters.dead += 1
        letter = DeadLetter(
            id=new_event_id(),
            event=event,
            receiver_id=subscription.receiver_id,
            attempts=attempt,
            error_type=error_type,
            error_message=message,
            failed_at=datetime.now(UTC),
        )
        delivery_logger.error(
            "receiver %r failed on %r after %s; dead-lettered as %s: %s: %s",
            subscription.receiver_id,
            event.name,
            counted(attempt, "attempt"),
            letter.id,
            error_type,
            escape_control(message),
            exc_info=error,
            extra={**extra, "dead_letter_id": letter.id},
        )
        if self._middleware.outcomes:
            notify(self._middleware.outcomes, "on_dead_letter", delivery.info(), letter)
        return letter


def letter_info(registry: Registry, letter: DeadLetter, *, replay: bool = False) -> DeliveryInfo:
    """A dead letter as a ``DeliveryInfo``: its receiver's pattern as subscribed now."""
    subscription = registry.receiver(letter.receiver_id, letter.event.name)
    pattern = "" if subscription is None else subscription.pattern
    return DeliveryInfo(letter.event, letter.receiver_id, letter.attempts, pattern, replay)


class DeadLetterShelf:
    """The dead letters of a runtime without a store, the oldest evicted past ``limit``."""

    def __init__(
        self,
        limit: int,
        *,
        registry: Registry,
        lanes: Lanes,
        counters: Counters,
        middleware: MiddlewareStack,
    ) -> None:
        self._limit = limit
        self._registry = registry
        self._lanes = lanes
        self._counters = counters
        self._middleware = middleware
        self._letters: OrderedDict[str, DeadLetter] = OrderedDict()

    def list(self) -> list[DeadLetter]:
        """The letters kept, oldest first."""
        return list(self._letters.values())

    def discard(self, letter_id: str) -> DeadLetter | None:
        """Forget a letter (it is being redelivered or discarded); the letter, if it was kept."""
        return self._letters.pop(letter_id, None)

    def keep(self, letter: DeadLetter) -> None:
        """Keep a dead letter, evicting the oldest past the limit."""
        self._letters[letter.id] = letter
        if len(self._letters) <= self._limit:
            return
        oldest, evicted = self._letters.popitem(last=False)
        self._counters.dropped += 1
        logger.warning(
            "dead letter %s evicted: more than max_dead_letters=%d are kept",
            oldest,
            self._limit,
        )
        key = evicted.event.key
        if key is not None and self._lanes.holder(evicted.receiver_id, key) == evicted.event.id:
            # Gone from the list, it can no longer be redelivered to let its lane go on.
            logger.warning(
                "evicted dead letter %s still holds key %r of receiver %r; "
                "runtime.release_key(%r, %r) lets the deliveries behind it run",
                oldest,
                key,
                evicted.receiver_id,
                evicted.receiver_id,
                key,
                extra={"dead_letter_id": oldest, "receiver_id": evicted.receiver_id},
            )
        if self._middleware.outcomes:
            notify(self._middleware.outcomes, "on_dropped", letter_info(self._registry, evicted))
