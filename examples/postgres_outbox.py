"""The outbox and the inbox with plain psycopg: events that commit with your data, and a
receiver whose database writes happen once.

Run it with ``python postgres_outbox.py [asyncio|trio] [DSN] [SCHEMA]`` after
``pip install 'aevents[postgres]'``; the DSN defaults to the local test database.
It creates the tables ``SCHEMA`` (default ``shop_example``) holds, and drops them.
"""

import sys

import anyio
import psycopg
from psycopg import sql

import aevents

backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
DSN = sys.argv[2] if len(sys.argv) > 2 else "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = sys.argv[3] if len(sys.argv) > 3 else "shop_example"
store = aevents.PostgresStore(DSN, schema=f"{SCHEMA}_events")
registry = aevents.Registry()


def place_order(conn: psycopg.Connection, item: str, *, commit: bool) -> None:
    """The outbox: the order and its event are written in one transaction."""
    with conn.transaction(force_rollback=not commit):
        row = conn.execute("INSERT INTO orders (item) VALUES (%s) RETURNING id", (item,))
        (order_id,) = row.fetchone() or (0,)
        # The event and its deliveries go through this connection, in this
        # transaction: a rollback leaves no trace; consumers see it after the commit.
        store.publish_in(conn, "shop:order:placed", {"id": order_id}, registry=registry)


@registry.subscribe("shop:order:placed", id="record-shipment")
def record_shipment(event: aevents.Event) -> None:
    """The inbox: the shipment row and the delivery's completion commit together."""
    delivery = aevents.current_delivery()
    assert delivery is not None
    with psycopg.connect(DSN, options=f"-c search_path={SCHEMA}") as conn:  # one transaction
        conn.execute("INSERT INTO shipments (order_id) VALUES (%s)", (event.payload["id"],))
        store.complete_in(conn, delivery)  # last, just before the commit
    print(f"shipped order {event.payload['id']}")


async def main() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    with psycopg.connect(DSN, options=f"-c search_path={SCHEMA}") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text)")
        conn.execute("CREATE TABLE IF NOT EXISTS shipments (order_id int)")
        conn.commit()
        store.prepare()  # the store's tables, before the first publish_in
        place_order(conn, "book", commit=True)
        place_order(conn, "pen", commit=False)  # rolled back: no order, no event
    async with aevents.EventRuntime(registry, store=store) as runtime:
        await runtime.drain()  # claims what is there, and runs it
    print(f"delivered={runtime.stats().delivered}")
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(f"{SCHEMA}_events")))


anyio.run(main, backend=backend)
