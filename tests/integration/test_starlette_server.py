"""The Starlette and FastAPI examples under a real uvicorn, called over HTTP by httpx.

Each test starts ``python -m uvicorn`` on a loopback port chosen by the kernel
(port 0), reads the port from uvicorn's startup line, and stops the server with
SIGTERM, as a process manager does. uvicorn runs asyncio only, so these run the
server on asyncio and on uvloop; tests/test_contrib_starlette.py covers trio
in-process. The tests themselves are synchronous: the client's loop is not
what is under test, the server's is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import aevents
from aevents.contrib.starlette import events_lifespan

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # seconds: a generous bound on every wait, never a synchronisation

pytestmark = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


class Server:
    """A uvicorn process whose merged output is read line by line as it comes."""

    def __init__(self, app: str, loop: str, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "0"]
        self.process = subprocess.Popen(
            [*command, "--loop", loop],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._finished = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str) -> str:
        """The first output line containing ``text``, waiting for it up to WAIT seconds."""

        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() or self._finished, timeout=WAIT):
                raise AssertionError(f"no {text!r} in {WAIT} s; output so far:\n{self.output}")
            line = found()
        if line is None:
            raise AssertionError(f"uvicorn exited without {text!r}; output:\n{self.output}")
        return line

    def started(self) -> httpx.Client:
        """A client for the server once it says it is running."""
        line = self.wait_for("Uvicorn running on")
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match is not None, line
        return httpx.Client(base_url=f"http://127.0.0.1:{match[1]}", timeout=WAIT)

    def stop(self) -> None:
        """SIGTERM, as a process manager stops a server; fails unless uvicorn shut down cleanly.

        uvicorn shuts down gracefully, then re-raises the signal it caught, so
        a clean stop exits by SIGTERM after "Application shutdown complete."
        """
        self.process.send_signal(signal.SIGTERM)
        self.wait_for_graceful_exit()

    def wait_for_graceful_exit(self) -> None:
        returncode = self.wait()
        output = self.output
        assert returncode == -signal.SIGTERM, output
        assert "Application shutdown complete." in output, output

    def wait(self) -> int:
        returncode = self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        return returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def uvicorn(app: str, loop: str, **env: str) -> Iterator[Server]:
    """``python -m uvicorn app`` from the repository root; killed if the test leaves it running."""
    server = Server(app, loop, env)
    try:
        yield server
    finally:
        server.kill()


def stats_once_delivered(client: httpx.Client, delivered: int) -> dict[str, int]:
    """GET /stats until it counts ``delivered`` (a receiver prints before it returns)."""
    deadline = time.monotonic() + WAIT
    while True:
        stats: dict[str, int] = client.get("/stats").json()
        if stats["delivered"] >= delivered:
            return stats
        assert time.monotonic() < deadline, stats


def test_the_starlette_example_publishes_from_endpoints_and_background_tasks(loop: str) -> None:
    """Signup (request.state.events) and newsletter (BackgroundTask) events reach receivers."""
    with uvicorn("examples.starlette_app:app", loop) as server:
        with server.started() as client:
            signup = client.post("/signup", json={"email": "ada@example.com"})
            assert signup.status_code == 202
            server.wait_for("mail to ada@example.com: Welcome!")
            joined = client.post("/newsletter", json={"email": "bob@example.com"})
            assert joined.status_code == 202
            server.wait_for("mail to bob@example.com: Please confirm your subscription")
            stats = stats_once_delivered(client, 2)
        server.stop()
    assert (stats["published"], stats["delivered"], stats["failed"]) == (2, 2, 0)
    assert "outbox closed after 2 mails" in server.output
    assert "Traceback" not in server.output


def test_the_fastapi_example_publishes_from_endpoints_dependencies_and_background_tasks(
    loop: str,
) -> None:
    """Events, a publishing dependency and BackgroundTasks all reach the receivers."""
    with uvicorn("examples.fastapi_app:app", loop) as server:
        with server.started() as client:
            order = client.post("/orders", json={"sku": "tea", "quantity": 2})
            assert order.status_code == 202
            assert order.json()["event_id"]
            server.wait_for("reserved 2 x tea")
            server.wait_for("audit shop:order:placed (on the loop: False)")
            assert client.post("/orders/7/ship").status_code == 202
            server.wait_for("audit shop:order:shipped (on the loop: False)")
            assert client.get("/catalogue").json() == ["tea", "coffee"]
            server.wait_for("viewed /catalogue")
            stats = stats_once_delivered(client, 4)
            invalid = client.post("/orders", json={"sku": "tea", "quantity": 0})
        server.stop()
    assert (stats["published"], stats["delivered"], stats["failed"]) == (3, 4, 0)
    assert invalid.status_code == 422  # FastAPI refused it; nothing was published
    assert "Traceback" not in server.output


def test_a_journal_that_cannot_open_stops_the_server_from_starting(
    loop: str, tmp_path: Path
) -> None:
    """A corrupt EVENTS_JOURNAL fails the lifespan startup: uvicorn exits 3 with the StoreError."""
    journal = tmp_path / "events.db"
    journal.write_bytes(b"this is not a journal\n" * 100)
    with uvicorn("examples.starlette_app:app", loop, EVENTS_JOURNAL=str(journal)) as server:
        returncode = server.wait()
    assert returncode == 3  # uvicorn's STARTUP_FAILURE
    assert "Application startup failed. Exiting." in server.output
    assert f"aevents._exceptions.StoreError: journal {str(journal)!r}" in server.output
    assert "not an aevents journal" in server.output
    assert "Uvicorn running on" not in server.output
    assert "outbox closed after 0 mails" in server.output  # the app's own lifespan tore down


def test_the_starlette_example_journals_under_uvicorn(loop: str, tmp_path: Path) -> None:
    """With EVENTS_JOURNAL set the example runs durable, and a second server cannot share it."""
    journal = tmp_path / "events.db"
    with uvicorn("examples.starlette_app:app", loop, EVENTS_JOURNAL=str(journal)) as server:
        with server.started() as client:
            assert client.post("/signup", json={"email": "cy@example.com"}).status_code == 202
            server.wait_for("mail to cy@example.com: Welcome!")
        with uvicorn("examples.starlette_app:app", loop, EVENTS_JOURNAL=str(journal)) as second:
            assert second.wait() == 3
        assert "is in use by another process" in second.output
        server.stop()
    assert "Traceback" not in server.output


# The shutdown test's app. Its receiver finishes only once the server has asked
# the app to shut down and every task in the server is waiting: the shutdown
# then has to wait for it, or it is cancelled. Its own registry keeps it out
# of the default one that the tests share.
class OpenedAtShutdown:
    """ASGI middleware with a gate that opens when the lifespan shutdown is waiting."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.opened: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        self.opened = anyio.Event()
        async with anyio.create_task_group() as tasks:

            async def receive_and_watch() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    tasks.start_soon(self._open_once_everything_waits)
                return message

            await self.app(scope, receive_and_watch, send)

    async def _open_once_everything_waits(self) -> None:
        await anyio.wait_all_tasks_blocked()
        print("the shutdown is waiting: opening the gate")
        assert self.opened is not None
        self.opened.set()

    async def wait(self) -> None:
        assert self.opened is not None
        await self.opened.wait()


gated_registry = aevents.Registry()


@gated_registry.subscribe("work:requested")
async def finish_at_shutdown(event: aevents.Event) -> None:
    print("receiver started")
    try:
        await gated_app.wait()
    except anyio.get_cancelled_exc_class():
        print("receiver cancelled")
        raise
    print("receiver finished")


async def request_work(request: Request) -> Response:
    await aevents.publish("work:requested")
    return Response(status_code=202)


gated_app = OpenedAtShutdown(
    Starlette(
        routes=[Route("/work", request_work, methods=["POST"])],
        lifespan=events_lifespan(runtime_factory=lambda: aevents.EventRuntime(gated_registry)),
    )
)


def test_stopping_the_server_drains_running_receivers(loop: str) -> None:
    """On SIGTERM uvicorn's lifespan shutdown waits for a receiver that is still running."""
    with uvicorn("tests.integration.test_starlette_server:gated_app", loop) as server:
        with server.started() as client:
            assert client.post("/work").status_code == 202
        server.wait_for("receiver started")
        server.stop()
    lines = [line.removeprefix("INFO:     ") for line in server.lines]
    assert "receiver cancelled" not in lines
    assert lines.index("Waiting for application shutdown.") < lines.index(
        "the shutdown is waiting: opening the gate"
    )
    assert lines.index("the shutdown is waiting: opening the gate") < lines.index(
        "receiver finished"
    )
    assert lines.index("receiver finished") < lines.index("Application shutdown complete.")
