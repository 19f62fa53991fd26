"""A first aevents script: one event and two receivers, one of them retried.

Run it with ``python first_script.py`` after ``pip install aevents``.
"""

import anyio

import aevents


@aevents.subscribe("user:account:created")
async def send_welcome(event: aevents.Event) -> None:
    print(f"welcome mail for user {event.payload['user_id']}")


RETRY = aevents.RetryPolicy(attempts=3, initial_delay=0.01)


@aevents.subscribe("user:**", retry=RETRY)
async def sync_crm(event: aevents.Event) -> None:
    delivery = aevents.current_delivery()
    assert delivery is not None
    if delivery.attempt == 1:
        raise ConnectionError("CRM busy")  # retried after a backoff
    print(f"CRM has {event.name} (attempt {delivery.attempt})")


async def main() -> None:
    async with aevents.EventRuntime() as runtime:
        payload = {"user_id": 1}
        event = await aevents.publish("user:account:created", payload=payload)
        print(f"published {event.name} as {event.id}")
    # Leaving the block drained every accepted delivery.
    stats = runtime.stats()
    print(f"delivered={stats.delivered} failed={stats.failed}")


anyio.run(main)
