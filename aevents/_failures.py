"""The delivery policy at work: retrying failed deliveries and keeping dead letters.

Mixed into ``EventRuntime``; the attributes annotated below are its own. A
failed delivery waits for its backoff in a heap, holding no worker; when its
attempts run out it becomes a ``DeadLetter``, kept in memory (capped) or, with
a store, in the journal.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import checkpoint

from ._delivery import DeliveryInfo, Item, ReceiverTimeout, delivery_info
from ._event import new_event_id
from ._middleware import MiddlewareStack, notify
from ._policy import DeadLetter, RetryPolicy, describe_error, escape_control
from ._text import counted

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from ._event import Event
    from ._exceptions import AeventsError
    from ._registry import Registry, Subscription
    from ._state import Epoch
    from ._store._protocol import Store

__all__ = ["FailureHandling"]

logger = logging.getLogger("aevents.runtime")
delivery_logger = logging.getLogger("aevents.delivery")


class FailureHandling:
    """Retries and dead letters, for ``EventRuntime``."""

    registry: Registry
    store: Store | None
    retry: RetryPolicy
    max_dead_letters: int
    log_payloads: bool
    _state: str
    _send: MemoryObjectSendStream[Item]
    _epoch: Epoch
    _queued: int
    _failed: int
    _retried: int
    _dead: int
    _dropped: int
    _dead_letters: dict[str, DeadLetter]
    _storms: set[tuple[str, str]]
    _middleware: MiddlewareStack
    _held_lanes: dict[tuple[str, str], str]

    def _init_failures(self) -> None:
        self._retries: list[tuple[float, int, Item]] = []
        self._retry_order = itertools.count()
        self._retry_wakeup: anyio.Event | None = None

    if TYPE_CHECKING:  # provided by the other classes EventRuntime is made of; declared
        # here only for the type checker, so they can never shadow the real ones
        def _finish(self, epoch: Epoch) -> None: ...
        def _not_accepting(self, name: str) -> AeventsError: ...
        def _enqueue(
            self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch
        ) -> None: ...
        async def _reserve(self, count: int) -> None: ...
        def _release(self, count: int) -> None: ...
        def _not_for_replay(self, event_id: str) -> None: ...

    def _on_failure(
        self, item: Item, error: BaseException, duration: float | None
    ) -> DeadLetter | None:
        """Count a failed attempt; schedule a retry, or return the dead letter it became.

        ``duration`` is how long the attempt ran, in seconds (None if it never
        started). The caller keeps (or journals) the letter and finishes the delivery.
        """
        event, subscription, attempt, epoch = item
        self._failed += 1
        policy = subscription.retry if subscription.retry is not None else self.retry
        storm = (event.id, subscription.receiver_id) in self._storms
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
        if self.log_payloads:
            extra["payload"] = event.payload
        if attempt < policy.attempts and not storm:
            self._retried += 1
            delay = policy.delay(attempt)
            delivery_logger.warning(
                "receiver %r failed on %r (attempt %d of %d), retrying in %.3fs: %s: %s",
                subscription.receiver_id,
                event.name,
                attempt,
                policy.attempts,
                delay,
                error_type,
                escape_control(message),
                extra=extra,
            )
            due = anyio.current_time() + delay
            retry = (event, subscription, attempt + 1, epoch)
            heapq.heappush(self._retries, (due, next(self._retry_order), retry))
            if self._retry_wakeup is not None:
                self._retry_wakeup.set()
            if self._middleware.outcomes:
                notify(self._middleware.outcomes, "on_retry", delivery_info(item), error, delay)
            return None
        self._storms.discard((event.id, subscription.receiver_id))
        self._dead += 1
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
            notify(self._middleware.outcomes, "on_dead_letter", delivery_info(item), letter)
        return letter

    def _keep_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a dead letter in memory, evicting the oldest past ``max_dead_letters``."""
        self._dead_letters[letter.id] = letter
        if len(self._dead_letters) > self.max_dead_letters:
            oldest = next(iter(self._dead_letters))
            evicted = self._dead_letters.pop(oldest)
            self._dropped += 1
            logger.warning(
                "dead letter %s evicted: more than max_dead_letters=%d are kept",
                oldest,
                self.max_dead_letters,
            )
            key = evicted.event.key
            if (
                key is not None
                and self._held_lanes.get((evicted.receiver_id, key)) == evicted.event.id
            ):
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
                notify(self._middleware.outcomes, "on_dropped", self._letter_info(evicted))

    def _letter_info(self, letter: DeadLetter, replay: bool = False) -> DeliveryInfo:
        """A dead letter as a ``DeliveryInfo``: its receiver's pattern as subscribed now."""
        subscription = self.registry.receiver(letter.receiver_id, letter.event.name)
        pattern = "" if subscription is None else subscription.pattern
        return DeliveryInfo(letter.event, letter.receiver_id, letter.attempts, pattern, replay)

    async def _run_retries(self) -> None:
        """Move failed deliveries back into the queue when their backoff is over."""
        while True:
            self._retry_wakeup = wakeup = anyio.Event()
            if not self._retries:
                await wakeup.wait()
                continue
            wait = self._retries[0][0] - anyio.current_time()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await wakeup.wait()
                continue
            now = anyio.current_time()
            send = self._send.send_nowait
            while self._retries and self._retries[0][0] <= now:
                item = heapq.heappop(self._retries)[2]
                self._queued += 1  # already accepted once: re-admitted past the bound
                send(item)

    async def dead_letters(self) -> list[DeadLetter]:
        """The dead letters, oldest first.

        Returns:
            With a store, every dead letter in the journal; without one, those
                kept in memory (at most ``max_dead_letters``, the newest).
        """
        if self.store is not None:
            return await self.store.dead_letters()
        await checkpoint()
        return list(self._dead_letters.values())

    async def redeliver(
        self, dead_letters: Iterable[DeadLetter | str] | DeadLetter | str | None = None
    ) -> int:
        """Queue dead letters again with a fresh set of attempts.

        The receiver id is resolved through the registry as it is now; a letter
        whose receiver is no longer subscribed stays dead and is logged. Waits
        for room like ``publish``; if cancelled, letters not yet queued stay dead.

        Args:
            dead_letters: Dead letters, or their ids, one or many. Default
                ``None``: all of them.

        Returns:
            How many were queued.
        """
        if self._state != "running":
            raise self._not_accepting("<redeliver>")
        known = {letter.id: letter for letter in await self.dead_letters()}
        if dead_letters is None:
            chosen = list(known)
        elif isinstance(dead_letters, DeadLetter | str):
            chosen = [dead_letters.id if isinstance(dead_letters, DeadLetter) else dead_letters]
        else:
            chosen = [
                letter.id if isinstance(letter, DeadLetter) else letter for letter in dead_letters
            ]
        queued = 0
        for letter_id in chosen:
            letter = known.get(letter_id)
            if letter is None:
                continue
            subscription = self.registry.receiver(letter.receiver_id, letter.event.name)
            if subscription is None:
                logger.warning(
                    "dead letter %s not redelivered: receiver %r is not subscribed",
                    letter_id,
                    letter.receiver_id,
                )
                continue
            await self._reserve(1)
            if self.store is not None:
                self._not_for_replay(letter.event.id)
                try:
                    await self.store.redeliver([letter_id])
                except BaseException:
                    self._release(1)  # the letter stays dead; give its room back
                    raise
            self._dead_letters.pop(letter_id, None)
            self._enqueue(letter.event, (subscription,), self._epoch)
            queued += 1
        await checkpoint()
        return queued
