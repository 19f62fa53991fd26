"""A consumer process for the Redis crash tests: ``python -m tests.redis_worker URL PREFIX MODE``.

It runs an ``EventRuntime`` on a ``RedisStore`` until SIGTERM (or until it dies), and
logs to stderr (the tests keep it in a file and show it when they fail).
Receivers write what they do to the Redis list ``{PREFIX}:log`` as ``"<what> <n>
<pid>"``, so the test reads it across processes. Modes:

* ``slow``: receiver ``slow`` logs ``start``, sleeps 0.2 s, logs ``done``.
* ``hang``: receiver ``slow`` logs ``start`` and never returns (a process to kill mid-batch).
* ``poison``: receiver ``poison`` logs ``start`` and kills its process (``os._exit``).
* ``publish``: publish one event with the idempotency key ``once``, print its id, exit.
"""

from __future__ import annotations

import logging
import os
import sys

import anyio
import coredis

import aevents


async def log(url: str, prefix: str, line: str) -> None:
    client = coredis.Redis.from_url(url)
    async with client:
        await client.rpush("{" + prefix + "}:log", [line])


def main() -> None:
    url, prefix, mode = sys.argv[1:4]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    registry = aevents.Registry()
    once = aevents.RetryPolicy(attempts=2, initial_delay=0.01)

    async def slow(event: aevents.Event) -> None:
        n = event.payload["n"]
        await log(url, prefix, f"start {n} {os.getpid()}")
        await anyio.sleep(0.2)
        await log(url, prefix, f"done {n} {os.getpid()}")

    async def hang(event: aevents.Event) -> None:
        await log(url, prefix, f"start {event.payload['n']} {os.getpid()}")
        await anyio.sleep_forever()

    async def poison(event: aevents.Event) -> None:
        await log(url, prefix, f"start {event.payload['n']} {os.getpid()}")
        os._exit(3)

    async def run() -> None:
        store = aevents.RedisStore(url, prefix=prefix)
        if mode == "publish":
            async with aevents.EventRuntime(registry, store=store, consume=False) as runtime:
                event = await runtime.publish(
                    "keys:once", payload={"pid": os.getpid()}, idempotency_key="once"
                )
                print(event.id, flush=True)
            return
        if mode in ("slow", "hang"):
            registry.subscribe("crash:*", slow if mode == "slow" else hang, id="slow")
        else:
            registry.subscribe("poison:*", poison, id="poison", retry=once)
        async with aevents.EventRuntime(registry, store=store, workers=4, buffer=4, lease=1.0):
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(run)


if __name__ == "__main__":
    main()
