"""An app that several real processes run on one shared journal, for the fleet tests.

It is both an ASGI app, for ``uvicorn tests.integration.fleet_app:app --workers 4``
(``GET /publish?n=N[&name=NAME][&key=KEY]`` publishes one event and answers once it
is durable), and a worker target, for ``python -m aevents worker
tests.integration.fleet_app:make_runtime``.

The environment says where things go: ``FLEET_JOURNAL`` is the journal (or
``FLEET_POSTGRES``, a URL, and ``FLEET_SCHEMA`` a PostgresStore's schema),
``FLEET_LOG`` the file every receiver appends one line to per attempt,
``FLEET_LEASE`` the lease in seconds, ``FLEET_SLEEP`` how long the ``fleet:item``
receivers take, ``FLEET_CONSUME=0`` makes a process that publishes only.

Log lines, each written with one ``os.write`` to an ``O_APPEND`` file so that a
kill never tears one: ``start RECEIVER N KEY PID ATTEMPT`` before a receiver
works and ``done RECEIVER N KEY PID ATTEMPT`` when it returns.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

import anyio

import aevents
from aevents import Event, RetryPolicy

registry = aevents.Registry()
_log = os.open(os.environ["FLEET_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
_sleep = float(os.environ.get("FLEET_SLEEP", "0"))


def _write(what: str, receiver: str, event: Event) -> None:
    delivery = aevents.current_delivery()
    attempt = delivery.attempt if delivery is not None else 0
    line = f"{what} {receiver} {event.payload['n']} {event.key or '-'} {os.getpid()} {attempt}\n"
    os.write(_log, line.encode())


async def first(event: Event) -> None:
    _write("start", "first", event)
    if _sleep:
        await anyio.sleep(_sleep)
    _write("done", "first", event)


def second(event: Event) -> None:
    _write("start", "second", event)
    _write("done", "second", event)


async def keyed(event: Event) -> None:
    _write("start", "keyed", event)
    await anyio.sleep(0.001)
    _write("done", "keyed", event)


def local(event: Event) -> None:
    """A ``scope="process"`` receiver: every live process runs it once per event."""
    _write("start", "local", event)
    _write("done", "local", event)


def poison(event: Event) -> None:
    _write("start", "poison", event)
    os._exit(17)  # the process dies on every attempt


registry.subscribe("fleet:item", first, id="fleet:first")
registry.subscribe("fleet:item", second, id="fleet:second")
registry.subscribe("fleet:keyed", keyed, id="fleet:keyed")
registry.subscribe("fleet:item", local, id="fleet:local", scope="process")
registry.subscribe("fleet:poison", poison, id="fleet:poison", retry=RetryPolicy(attempts=3))


def make_store() -> aevents.SQLiteStore | aevents.PostgresStore:
    """``FLEET_POSTGRES`` (a URL) with ``FLEET_SCHEMA``, else the ``FLEET_JOURNAL`` file."""
    url = os.environ.get("FLEET_POSTGRES")
    if url:
        return aevents.PostgresStore(url, schema=os.environ["FLEET_SCHEMA"], poll_interval=0.2)
    return aevents.SQLiteStore(os.environ["FLEET_JOURNAL"])


def make_runtime() -> aevents.EventRuntime:
    return aevents.EventRuntime(
        registry,
        store=make_store(),
        lease=float(os.environ.get("FLEET_LEASE", "30")),
        consume=os.environ.get("FLEET_CONSUME", "1") == "1",
        workers=int(os.environ.get("FLEET_WORKERS", "8")),
        buffer=int(os.environ.get("FLEET_BUFFER", "1024")),
        shutdown_timeout=30,
    )


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: the runtime lives for the lifespan, each request publishes one event."""
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    query = parse_qs(scope["query_string"].decode())
    n = int(query["n"][0])
    name = query.get("name", ["fleet:item"])[0]
    key = query.get("key", [None])[0]
    event = await scope["state"]["runtime"].publish(name, payload={"n": n}, key=key)
    body = event.id.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "lifespan.startup"
    try:
        runtime = await make_runtime().__aenter__()
    except Exception as error:
        await send({"type": "lifespan.startup.failed", "message": repr(error)})
        return
    scope["state"]["runtime"] = runtime  # uvicorn copies the lifespan's state into requests
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown"
    await runtime.__aexit__(None, None, None)
    await send({"type": "lifespan.shutdown.complete"})
