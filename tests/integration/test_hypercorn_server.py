"""The Starlette example under a real Hypercorn, on trio as well as asyncio.

uvicorn runs asyncio only (``test_starlette_server``); Hypercorn also serves
on trio, which is how an ASGI app built on trio runs aevents in production.
Same method: a subprocess on a kernel-chosen loopback port, httpx calls, and
SIGTERM to stop it. Hypercorn exits 0 after a graceful shutdown, once the
lifespan shutdown (aevents' drain, then the app's own teardown) returned.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from aevents import SQLiteStore
from tests.integration.servers import Server, hypercorn
from tests.integration.test_starlette_server import stats_once_delivered

pytestmark = pytest.mark.parametrize("worker_class", ["trio", "asyncio"])


def stop(server: Server) -> None:
    """SIGTERM; fails unless Hypercorn shut down cleanly after the app's teardown."""
    assert server.terminate() == 0, server.output
    assert "Traceback" not in server.output, server.output


def test_the_starlette_example_publishes_from_endpoints_and_background_tasks(
    worker_class: str,
) -> None:
    """Signup (request.state.events) and newsletter (BackgroundTask) events reach receivers,
    and the shutdown drains before the app's own lifespan closes its outbox."""
    with hypercorn("examples.starlette_app:app", worker_class) as server:
        with server.started() as client:
            assert client.post("/signup", json={"email": "ada@example.com"}).status_code == 202
            server.wait_for("mail to ada@example.com: Welcome!")
            assert client.post("/newsletter", json={"email": "bob@example.com"}).status_code == 202
            server.wait_for("mail to bob@example.com: Please confirm your subscription")
            stats = stats_once_delivered(client, 2)
        stop(server)
    assert (stats["published"], stats["delivered"], stats["failed"]) == (2, 2, 0)
    assert server.lines[-1] == "outbox closed after 2 mails"


def test_the_starlette_example_journals_under_hypercorn(worker_class: str, tmp_path: Path) -> None:
    """With EVENTS_JOURNAL set the publish is durable (the journal's thread wakes the
    server's loop, trio's too), and after a graceful stop nothing is left pending."""
    journal = tmp_path / "events.db"
    with hypercorn(
        "examples.starlette_app:app", worker_class, EVENTS_JOURNAL=str(journal)
    ) as server:
        with server.started() as client:
            for n in range(3):
                signup = client.post("/signup", json={"email": f"user{n}@example.com"})
                assert signup.status_code == 202
            stats_once_delivered(client, 3)
        stop(server)

    async def journaled() -> tuple[int, int, int]:
        store = SQLiteStore(str(journal))
        await store.open()
        try:
            stats = await store.stats()
        finally:
            await store.close()
        return stats.events, stats.pending, stats.done

    assert anyio.run(journaled) == (3, 0, 3)


def test_stopping_the_server_drains_running_receivers(worker_class: str) -> None:
    """On SIGTERM Hypercorn's lifespan shutdown waits for a receiver that is still running."""
    app = "tests.integration.test_starlette_server:gated_app"
    with hypercorn(app, worker_class) as server:
        with server.started() as client:
            assert client.post("/work").status_code == 202
        server.wait_for("receiver started")
        stop(server)
    assert "receiver cancelled" not in server.lines
    assert server.lines.index("the shutdown is waiting: opening the gate") < server.lines.index(
        "receiver finished"
    )
