"""Ordering keys, idempotent publishing and an idempotent receiver, end to end.

    python examples/ordering.py [asyncio|uvloop|trio]

A bank ledger: deposits and withdrawals for one account must apply in the
order they were published, a web handler that retries must not pay twice,
and a receiver that may see an event again (at-least-once) must not apply it
twice.
"""

from __future__ import annotations

import sqlite3
import sys

import anyio
from anyio.lowlevel import checkpoint

import aevents

LEDGER = aevents.Catalog(
    {
        "MOVED": "bank:account:moved",
        "PAID": "shop:order:paid",
    }
)
registry = aevents.Registry()
database = sqlite3.connect(":memory:")
database.executescript(
    """
    CREATE TABLE balances (account TEXT PRIMARY KEY, cents INTEGER NOT NULL);
    CREATE TABLE processed (event_id TEXT, receiver_id TEXT, PRIMARY KEY (event_id, receiver_id));
    """
)
crash_after_commit = {"armed": True}


@registry.subscribe(LEDGER.MOVED, id="ledger.history")
async def history(event: aevents.Event) -> None:
    for _ in range(event.payload["cents"] % 3):
        await checkpoint()  # other accounts' events run meanwhile; this one's wait
    print(f"{event.key}: {event.payload['kind']} {event.payload['cents']}")


@registry.subscribe(LEDGER.PAID, id="shop.receipt")
async def send_receipt(event: aevents.Event) -> None:
    print(f"receipt for order {event.payload['order']}")


# An idempotent receiver: the effect and the record that it happened commit together.
@registry.subscribe(LEDGER.MOVED, id="ledger.balance", inline=True)
def apply_movement(event: aevents.Event) -> None:
    delivery = aevents.current_delivery()
    assert delivery is not None
    with database:  # one transaction
        inserted = database.execute(
            "INSERT OR IGNORE INTO processed VALUES (?, ?)", (event.id, delivery.receiver_id)
        ).rowcount
        if not inserted:
            print(f"attempt {delivery.attempt} (replay: {delivery.replay}): already applied")
            return
        sign = 1 if event.payload["kind"] == "deposit" else -1
        database.execute(
            "INSERT INTO balances VALUES (?, ?) "
            "ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents",
            (event.key, sign * event.payload["cents"]),
        )
    if crash_after_commit["armed"]:  # as if the process died before the delivery was marked done
        crash_after_commit["armed"] = False
        raise ConnectionResetError("lost the acknowledgement")


async def main() -> None:
    retry = aevents.RetryPolicy(attempts=3, initial_delay=0, jitter=0)
    async with aevents.EventRuntime(registry, workers=4, retry=retry) as runtime:
        for account, kind, cents in [
            ("account:1", "deposit", 100),
            ("account:2", "deposit", 50),
            ("account:1", "withdraw", 30),
            ("account:1", "withdraw", 60),
            ("account:2", "withdraw", 20),
        ]:
            await runtime.publish(LEDGER.MOVED, payload={"kind": kind, "cents": cents}, key=account)
        await runtime.drain()
    balances = dict(database.execute("SELECT account, cents FROM balances ORDER BY account"))
    print(f"balances: {balances}")

    async with aevents.EventRuntime(registry) as runtime:
        # A web handler that retries (a timeout, a double click) publishes once.
        first = await runtime.publish(
            LEDGER.PAID, payload={"order": 7}, idempotency_key="order-7-paid"
        )
        again = await runtime.publish(
            LEDGER.PAID, payload={"order": 7}, idempotency_key="order-7-paid"
        )
        print(f"same event: {again.id == first.id}, repeated: {runtime.stats().repeated}")


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    print(f"ordering example on {backend}")
    anyio.run(main, backend="asyncio" if backend == "uvloop" else backend, backend_options=options)
