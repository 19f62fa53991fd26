"""A script whose one sync receiver never returns, or raises KeyboardInterrupt.

    python stuck_app.py BACKEND MODE

BACKEND is ``asyncio``, ``uvloop`` or ``trio``. MODE is ``stuck`` (the receiver
blocks forever), ``stuck-timeout`` (the same under ``timeout=``) or
``interrupt`` (the receiver raises ``KeyboardInterrupt``). The script prints
``runtime returned`` once the runtime's ``async with`` is over; the tests
check that the process then exits.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import anyio

import aevents
from aevents import Event, RetryPolicy

backend, mode = sys.argv[1], sys.argv[2]
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
registry = aevents.Registry()
never = threading.Event()


def stuck(event: Event) -> None:
    print("receiver started", flush=True)
    never.wait()


def interrupt(event: Event) -> None:
    raise KeyboardInterrupt


if mode == "stuck":
    registry.subscribe("job:started", stuck, id="stuck-receiver")
elif mode == "stuck-timeout":
    once = RetryPolicy(attempts=1)
    registry.subscribe("job:started", stuck, id="stuck-receiver", timeout=0.1, retry=once)
else:
    registry.subscribe("job:started", interrupt, id="interrupting-receiver")


async def main() -> None:
    async with aevents.EventRuntime(registry, shutdown_timeout=0.2) as runtime:
        await runtime.publish("job:started")
        if mode == "interrupt":
            await anyio.sleep(60)  # the receiver's KeyboardInterrupt ends this
        else:
            await anyio.sleep(0.05)
    print("runtime returned", flush=True)


options: dict[str, Any] = {"use_uvloop": True} if backend == "uvloop" else {}
anyio.run(main, backend="trio" if backend == "trio" else "asyncio", backend_options=options)
