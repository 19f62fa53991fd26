"""The Starlette and FastAPI examples under a real uvicorn, called over HTTP by httpx.

Each test starts ``python -m uvicorn`` on a loopback port chosen by the kernel
(port 0), reads the port from uvicorn's startup line, and stops the server with
SIGTERM, as a process manager does (see ``servers``). uvicorn runs asyncio
only, so these run the server on asyncio and on uvloop;
``test_hypercorn_server`` runs the example under Hypercorn on trio too. The
tests themselves are synchronous: the client's loop is not what is under
test, the server's is.
"""

from __future__ import annotations

import signal
import time
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
from tests.integration.servers import WAIT, Server, uvicorn

pytestmark = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def stop(server: Server) -> None:
    """SIGTERM; fails unless uvicorn shut down cleanly.

    uvicorn shuts down gracefully, then re-raises the signal it caught, so a
    clean stop exits by SIGTERM after "Application shutdown complete."
    """
    returncode = server.terminate()
    assert returncode == -signal.SIGTERM, server.output
    assert "Application shutdown complete." in server.output, server.output


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
        stop(server)
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
        stop(server)
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
    """With EVENTS_JOURNAL set the example runs durable, and a second server shares the
    journal: what it publishes is delivered once, by one of the two."""
    journal = tmp_path / "events.db"
    with uvicorn("examples.starlette_app:app", loop, EVENTS_JOURNAL=str(journal)) as server:
        with server.started() as client:
            assert client.post("/signup", json={"email": "cy@example.com"}).status_code == 202
            server.wait_for("mail to cy@example.com: Welcome!")
        with uvicorn("examples.starlette_app:app", loop, EVENTS_JOURNAL=str(journal)) as second:
            with second.started() as other:
                assert other.post("/signup", json={"email": "dee@example.com"}).status_code == 202
            mail = "mail to dee@example.com: Welcome!"
            deadline = time.monotonic() + 60  # a bound on the wait, never a synchronisation
            while mail not in server.output + second.output:
                assert time.monotonic() < deadline, server.output + second.output
                time.sleep(0.05)
            stop(second)
        assert (server.output + second.output).count(mail) == 1
        stop(server)
    assert "Traceback" not in server.output + second.output


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
        stop(server)
    lines = [line.removeprefix("INFO:     ") for line in server.lines]
    assert "receiver cancelled" not in lines
    assert lines.index("Waiting for application shutdown.") < lines.index(
        "the shutdown is waiting: opening the gate"
    )
    assert lines.index("the shutdown is waiting: opening the gate") < lines.index(
        "receiver finished"
    )
    assert lines.index("receiver finished") < lines.index("Application shutdown complete.")
