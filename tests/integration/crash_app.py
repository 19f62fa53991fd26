"""A small app the crash tests run as a real process and kill with real signals.

    python crash_app.py JOURNAL LOG MODE [COUNT] [START]

MODE is ``publish`` (publish COUNT events numbered from START, writing each
event id to LOG as ``ack <id>`` once publish returned, then drain and exit),
``replay`` (start, drain what the journal holds, exit), ``resume`` (start and,
while the journal replays, publish COUNT more from START, then drain), ``crashloop``
(publish one event to a receiver that SIGKILLs the process on every attempt)
or ``letters`` (print the journal's dead letters). Each ``ack`` line also
goes to stdout, so a test can kill the process right after a given number of
acknowledged publishes. ``AEVENTS_BACKEND`` picks the backend; ``CRASH_KEYS=N``
publishes with ordering keys ``k0`` to ``k<N-1>`` (event n gets ``k<n % N>``).
Each run writes ``started`` to LOG first. Receivers append
``done <receiver> <event id> <key> <n>`` to LOG before returning. Every line is written
with one ``os.write`` to an ``O_APPEND`` file, so a kill never tears a line.
"""

from __future__ import annotations

import os
import signal
import sys

import anyio
import anyio.lowlevel

import aevents
from aevents import Event, RetryPolicy


def main() -> None:
    journal, log_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    start = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    keys = int(os.environ.get("CRASH_KEYS", "0"))

    def write(line: str) -> None:
        os.write(log, (line + "\n").encode())

    registry = aevents.Registry()

    async def first(event: Event) -> None:
        if keys:  # uneven work: without ordering, one key's events would overtake each other
            await anyio.sleep(0.0005 * ((event.payload["n"] // keys) % 4))
        await anyio.lowlevel.checkpoint()
        write(f"done first {event.id} {event.key} {event.payload.get('n')}")

    def second(event: Event) -> None:  # a sync receiver, on a worker thread
        write(f"done second {event.id} {event.key} {event.payload.get('n')}")

    async def killer(event: Event) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    registry.subscribe("crash:test:event", first, id="first")
    registry.subscribe("crash:test:event", second, id="second")
    registry.subscribe(
        "crash:test:fatal", killer, id="killer", retry=RetryPolicy(attempts=3, initial_delay=0)
    )

    async def run() -> None:
        store = aevents.SQLiteStore(journal)
        async with aevents.EventRuntime(registry, store=store, workers=4, buffer=64) as runtime:
            write("started")
            if mode in ("publish", "resume"):
                for number in range(start, start + count):
                    key = f"k{number % keys}" if keys else None
                    event = await runtime.publish(
                        "crash:test:event", payload={"n": number}, key=key
                    )
                    write(f"ack {event.id}")
                    print("ack", flush=True)
            elif mode == "crashloop":
                await runtime.publish("crash:test:fatal")
            await runtime.drain()
            if mode == "letters":
                for letter in await runtime.dead_letters():
                    print(letter.receiver_id, letter.attempts, letter.error_type)
            print("stats", runtime.stats())

    anyio.run(run, backend=os.environ.get("AEVENTS_BACKEND", "asyncio"))


if __name__ == "__main__":
    main()
