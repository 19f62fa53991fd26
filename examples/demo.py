"""A tour of aevents in one run: catalogs, receivers, retries, dead letters, causation.

Run it with ``bash scripts/demo`` (or ``python examples/demo.py`` in the venv).
Pass ``trio`` or ``uvloop`` as the first argument to use that backend.
"""

from __future__ import annotations

import logging
import sys
import threading

import anyio
import anyio.to_thread

import aevents
from aevents import Event, RetryPolicy

# Names are declared per module, so a typo is an error instead of a silent no-op.
USER = aevents.Catalog(
    {
        "ACCOUNT_CREATED": "user:account:created",
        "EMAIL_CREATED": "user:emails:created",
        "WELCOME_SENT": "user:welcome:sent",
    }
)

log: list[str] = []


@aevents.subscribe(USER.ACCOUNT_CREATED)
async def send_welcome(event: Event) -> None:
    """An async receiver that publishes a follow-up event."""
    log.append(f"welcome mail for user {event.payload['user_id']}")
    await aevents.publish(USER.WELCOME_SENT, payload={"user_id": event.payload["user_id"]})


def audit(event: Event) -> None:
    """A sync receiver: it runs on one of the runtime's worker threads."""
    on_thread = threading.current_thread() is not threading.main_thread()
    log.append(f"audit {event.name} (off the loop: {on_thread})")


aevents.subscribe("user:**", receiver=audit, id="audit")

attempts_seen: list[int] = []


@aevents.subscribe(USER.EMAIL_CREATED, retry=RetryPolicy(attempts=3, initial_delay=0.01, jitter=0))
async def verify_email(event: Event) -> None:
    """A flaky receiver: fails twice, then succeeds on its third attempt."""
    delivery = aevents.current_delivery()
    assert delivery is not None
    attempts_seen.append(delivery.attempt)
    if delivery.attempt < 3:
        raise ConnectionError("mail server said 421, try again later")
    log.append(f"verified {event.payload['email']} on attempt {delivery.attempt}")


@aevents.subscribe(USER.WELCOME_SENT, retry=RetryPolicy(attempts=1))
async def broken_crm_sync(event: Event) -> None:
    """A receiver that always fails: its deliveries end up as dead letters."""
    raise RuntimeError("CRM is down")


async def main() -> None:
    async with aevents.EventRuntime(workers=4, buffer=64) as runtime:
        created = await aevents.publish(USER.ACCOUNT_CREATED, payload={"user_id": 1})
        await aevents.publish(USER.EMAIL_CREATED, payload={"email": "ada@example.com"})

        # A sync view in a thread publishes too.
        await anyio.to_thread.run_sync(
            lambda: aevents.publish_threadsafe(USER.ACCOUNT_CREATED, payload={"user_id": 2})
        )

        try:
            USER.ACOUNT_CREATED  # noqa: B018 - the typo is the point
        except aevents.UnknownEventError as error:
            log.append(f"typo caught: {error}")
        try:
            await aevents.publish("user:account:created", payload={"score": float("nan")})
        except aevents.PayloadError as error:
            log.append(f"bad payload refused: {error}")

        await runtime.drain()
        letters = await runtime.dead_letters()
        stats = runtime.stats()

    for line in log:
        print(" ", line)
    print(f"  retries of verify_email saw attempts {attempts_seen}")
    print(f"  first event id {created.id} (sortable by time), correlation {created.correlation_id}")
    for letter in letters:
        print(
            f"  dead letter: {letter.receiver_id} on {letter.event.name} after "
            f"{letter.attempts} attempt(s): {letter.error_type}: {letter.error_message}"
            f" (caused by {letter.event.causation_id})"
        )
    print(
        f"  stats: published={stats.published} delivered={stats.delivered} "
        f"failed={stats.failed} retried={stats.retried} dead={stats.dead}"
    )


class OneLine(logging.Formatter):
    """Show aevents' failure records as one line each, without the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        record.exc_info = record.exc_text = None
        return super().format(record)


if __name__ == "__main__":
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLine("  log %(levelname)-7s %(message)s"))
    logging.getLogger("aevents").addHandler(handler)
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    print(f"aevents {aevents.__version__} demo on {backend}")
    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)
