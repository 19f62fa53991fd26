"""A consumer process for the Redis fleet tests:
``python -m tests.redis_fleet_worker URL PREFIX BACKEND MODE``.

It runs an ``EventRuntime`` on a ``RedisStore`` on the anyio backend ``BACKEND``
(``asyncio`` or ``trio``, the test's own), prints ``ready`` once it consumes, and
stops cleanly on SIGTERM (exit 0), unless it dies first. It logs to stderr (the tests
keep it in a file and show it when they fail). Modes:

* ``count``: receiver ``first`` of ``many:*`` counts the ``n`` of each event in
  memory; at the stop the process prints one JSON line, ``{"first": [n, ...]}``, and
  nothing is written per event.

The other modes write what their receiver does to the Redis list ``{PREFIX}:log``, one
line ``"<what> <n> <key> <pid> <time>"`` per step (``time`` from ``time.time()``), so
the test reads one order across processes:

* ``hold``: receiver ``job`` of ``crash:*`` logs ``start`` and never returns (the
  process to kill mid-batch; it takes up to 8 deliveries).
* ``hold-ahead``: as ``hold``, with 2 workers, a buffer of 16 and ``start_ahead=8``.
* ``quick``: receiver ``job`` of ``crash:*`` logs ``start``, then ``done``.
* ``raise``: receiver ``poison`` of ``poison:*`` logs ``start`` and raises, 3 attempts.
* ``exit``: receiver ``poison`` of ``poison:*`` logs ``start`` and ends its process
  with ``os._exit(3)``, 3 attempts.
* ``keyed``: receiver ``ordered`` of ``keyed:*`` logs ``start``, sleeps 0.1 s, logs
  ``done``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

import anyio
import coredis
import orjson

import aevents

LEASE = 1.0  # seconds: the lease of every mode but count (a killed holder's work moves soon)


def main() -> None:
    url, prefix, backend, mode = sys.argv[1:5]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    anyio.run(run, url, prefix, mode, backend=backend)


async def run(url: str, prefix: str, mode: str) -> None:
    registry = aevents.Registry()
    seen: dict[str, list[int]] = {"first": []}
    client: Any = coredis.Redis.from_url(url)
    log_key = "{" + prefix + "}:log"
    pid = os.getpid()

    async def log(what: str, event: aevents.Event) -> None:
        line = f"{what} {event.payload['n']} {event.key or '-'} {pid} {time.time():.6f}"
        await client.rpush(log_key, [line])

    if mode == "count":

        @registry.subscribe("many:*", id="first")
        async def first(event: aevents.Event) -> None:
            seen["first"].append(event.payload["n"])

    elif mode in ("hold", "hold-ahead", "quick"):

        @registry.subscribe("crash:*", id="job")
        async def job(event: aevents.Event) -> None:
            await log("start", event)
            if mode != "quick":
                await anyio.sleep_forever()
            await log("done", event)

    elif mode in ("raise", "exit"):

        @registry.subscribe(
            "poison:*", id="poison", retry=aevents.RetryPolicy(attempts=3, initial_delay=0.01)
        )
        async def poison(event: aevents.Event) -> None:
            await log("start", event)
            if mode == "exit":
                os._exit(3)
            raise ValueError("poison")

    elif mode == "keyed":

        @registry.subscribe("keyed:*", id="ordered")
        async def ordered(event: aevents.Event) -> None:
            await log("start", event)
            await anyio.sleep(0.1)
            await log("done", event)

    else:
        raise SystemExit(f"unknown mode {mode!r}")

    options: dict[str, Any] = {"lease": LEASE}
    if mode == "count":
        # Claims of up to 256 (the most a claim takes); a larger buffer gains nothing
        # here, as Redis' one thread sets the pace.
        options = {"workers": 16, "buffer": 256}
    elif mode == "hold":
        options.update(workers=4, buffer=8)
    elif mode == "hold-ahead":
        options.update(workers=2, buffer=16, start_ahead=8)
    store = aevents.RedisStore(url, prefix=prefix)
    async with client:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with aevents.EventRuntime(registry, store=store, **options):
                print("ready", flush=True)
                async for _ in signals:
                    break
    if mode == "count":
        sys.stdout.buffer.write(orjson.dumps(seen) + b"\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
