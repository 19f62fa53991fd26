"""aevents.contrib.starlette and .fastapi, in-process: the lifespan as a server runs it.

A small harness plays the server's part (it drives the ASGI lifespan protocol
and copies the lifespan state into each request, as uvicorn does), and httpx
calls the app through its in-process ASGI transport. Unlike uvicorn, this runs
on every anyio backend, trio included; tests/integration/test_starlette_server.py
runs the examples under a real uvicorn.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, assert_type

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

import aevents
from aevents.contrib.fastapi import Events
from aevents.contrib.starlette import (
    STATE_KEY,
    NoRuntimeInStateError,
    events_lifespan,
    get_runtime,
)

Message = MutableMapping[str, Any]
WAIT = 10  # seconds: a generous bound on every wait, never a synchronisation


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves = group.exceptions
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = leaves[0].exceptions
    return leaves[0] if len(leaves) == 1 else group


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan as an ASGI server does; call the app through httpx, in-process.

    A failed startup raises the app's own exception, as ``uvicorn --lifespan on`` reports it.
    """
    state: dict[str, Any] = {}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](1)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](1)
    failures: list[Exception] = []

    async def run_lifespan() -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
        try:
            await app(scope, app_inbox.receive, app_outbox.send)
        except Exception as error:  # Starlette raises it after reporting the failure
            failures.append(error)

    async def with_lifespan_state(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "state": state.copy()}, receive, send)  # what uvicorn does

    try:
        with to_app, app_inbox, app_outbox, from_app:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run_lifespan)
                await to_app.send({"type": "lifespan.startup"})
                with anyio.fail_after(WAIT):
                    reply = await from_app.receive()
                if reply["type"] == "lifespan.startup.complete":
                    transport = httpx.ASGITransport(app=with_lifespan_state)
                    async with httpx.AsyncClient(
                        transport=transport, base_url="http://app"
                    ) as client:
                        yield client
                    await to_app.send({"type": "lifespan.shutdown"})
                    with anyio.fail_after(WAIT):
                        reply = await from_app.receive()
                    assert reply["type"] == "lifespan.shutdown.complete", reply
    except BaseExceptionGroup as group:  # an assertion in the body: show it as itself
        raise _leaf(group) from None
    if failures:
        raise failures[0]
    assert reply["type"] != "lifespan.startup.failed", reply


class Received:
    """What async receivers saw, to wait for without sleeping."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[aevents.Event](math.inf)

    async def __call__(self, event: aevents.Event) -> None:
        self._send.send_nowait(event)

    def close(self) -> None:
        self._send.close()
        self._receive.close()

    async def next(self) -> aevents.Event:
        with anyio.fail_after(WAIT):
            return await self._receive.receive()


@pytest.fixture
def received(registry: aevents.Registry) -> Iterator[Received]:
    """Subscribed to every event of the test's registry."""
    receiver = Received()
    registry.subscribe("**", receiver, id="received")
    yield receiver
    receiver.close()


def starlette_app(
    registry: aevents.Registry,
    *routes: BaseRoute,
    lifespan: Callable[[Any], Any] | None = None,
) -> Starlette:
    """A Starlette app whose runtime uses the test's registry."""
    runtime_factory = functools.partial(aevents.EventRuntime, registry)
    return Starlette(
        routes=list(routes), lifespan=events_lifespan(lifespan, runtime_factory=runtime_factory)
    )


def post(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    return Route(path, endpoint, methods=["POST"])


# ---------------------------------------------------------------- Starlette


@pytest.mark.anyio
async def test_request_state_events_is_the_runtime_module_level_publish_uses(
    registry: aevents.Registry,
) -> None:
    """request.state.events, get_runtime() and current_runtime() are one running runtime."""

    async def endpoint(request: Request) -> Response:
        runtime = get_runtime(request)
        assert_type(runtime, aevents.EventRuntime)
        same = request.state.events is runtime is aevents.current_runtime()
        return JSONResponse({"same": same, "running": runtime.running})

    async with serving(starlette_app(registry, Route("/", endpoint))) as client:
        response = await client.get("/")
    assert response.json() == {"same": True, "running": True}


@pytest.mark.anyio
async def test_an_endpoint_publishes_through_request_state_events(
    registry: aevents.Registry, received: Received
) -> None:
    """An event published on request.state.events reaches its receiver."""

    async def signup(request: Request) -> Response:
        event = await request.state.events.publish("user:signed-up", payload={"user_id": 7})
        return JSONResponse({"event_id": event.id}, status_code=202)

    async with serving(starlette_app(registry, post("/signup", signup))) as client:
        response = await client.post("/signup")
        event = await received.next()
    assert response.status_code == 202
    assert (event.id, event.name, event.payload) == (
        response.json()["event_id"],
        "user:signed-up",
        {"user_id": 7},
    )


@pytest.mark.anyio
async def test_an_endpoint_publishes_with_module_level_publish(
    registry: aevents.Registry, received: Received
) -> None:
    """aevents.publish() in a request task finds the runtime the lifespan started."""

    async def signup(request: Request) -> Response:
        event = await aevents.publish("user:signed-up", payload={"user_id": 8})
        return JSONResponse({"event_id": event.id})

    async with serving(starlette_app(registry, post("/signup", signup))) as client:
        response = await client.post("/signup")
        event = await received.next()
    assert event.id == response.json()["event_id"]
    assert event.payload == {"user_id": 8}


@pytest.mark.anyio
async def test_a_background_task_publishes_after_the_response(
    registry: aevents.Registry, received: Received
) -> None:
    """A Starlette BackgroundTask running aevents.publish delivers the event."""

    async def join(request: Request) -> Response:
        task = BackgroundTask(aevents.publish, "user:newsletter:joined", payload={"user_id": 9})
        return JSONResponse({}, status_code=202, background=task)

    async with serving(starlette_app(registry, post("/join", join))) as client:
        response = await client.post("/join")
        event = await received.next()
    assert response.status_code == 202
    assert (event.name, event.payload) == ("user:newsletter:joined", {"user_id": 9})


@pytest.mark.anyio
async def test_the_apps_own_lifespan_state_is_merged_with_the_runtime(
    registry: aevents.Registry,
) -> None:
    """The wrapped lifespan's state and the runtime are both in request.state."""

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"database": "connected"}

    async def endpoint(request: Request) -> Response:
        return JSONResponse(
            {"database": request.state.database, "events": request.state.events.running}
        )

    app = starlette_app(registry, Route("/", endpoint), lifespan=app_lifespan)
    async with serving(app) as client:
        response = await client.get("/")
    assert response.json() == {"database": "connected", "events": True}


@pytest.mark.anyio
async def test_a_stateless_app_lifespan_still_gets_the_runtime(
    registry: aevents.Registry,
) -> None:
    """A wrapped lifespan that yields None runs, and request.state.events is set."""
    ran: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        ran.append("startup")
        yield
        ran.append("teardown")

    async def endpoint(request: Request) -> Response:
        return JSONResponse({"events": request.state.events.running})

    async with serving(starlette_app(registry, Route("/", endpoint), lifespan=app_lifespan)) as c:
        response = await c.get("/")
    assert response.json() == {"events": True}
    assert ran == ["startup", "teardown"]


@pytest.mark.anyio
async def test_shutdown_drains_receivers_before_the_apps_own_teardown(
    registry: aevents.Registry,
) -> None:
    """Lifespan shutdown waits for a running receiver, then runs the app's teardown."""
    steps: list[str] = []
    receiver_started, release = anyio.Event(), anyio.Event()

    @registry.subscribe("mail:requested")
    async def send_mail(event: aevents.Event) -> None:
        receiver_started.set()
        await release.wait()
        steps.append("receiver done")

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        steps.append("app startup")
        yield
        steps.append("app teardown")

    async def endpoint(request: Request) -> Response:
        await aevents.publish("mail:requested")
        return Response(status_code=202)

    app = starlette_app(registry, post("/mail", endpoint), lifespan=app_lifespan)
    stopped = anyio.Event()

    async def serve_then_stop() -> None:
        async with serving(app) as client:
            await client.post("/mail")
            await receiver_started.wait()
        stopped.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(serve_then_stop)
        with anyio.fail_after(WAIT):
            await receiver_started.wait()
            await anyio.wait_all_tasks_blocked()  # shutdown has gone as far as it can
        assert not stopped.is_set()
        assert steps == ["app startup"]
        release.set()
        with anyio.fail_after(WAIT):
            await stopped.wait()
    assert steps == ["app startup", "receiver done", "app teardown"]


@pytest.mark.anyio
async def test_a_journal_that_cannot_open_fails_startup_and_runs_the_apps_teardown(
    tmp_path: Path,
) -> None:
    """StoreError fails the lifespan startup; the app's own lifespan is still torn down."""
    journal = tmp_path / "events.db"
    journal.write_bytes(b"this is not a journal\n" * 100)
    steps: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        steps.append("app startup")
        try:
            yield
        finally:
            steps.append("app teardown")

    def make_runtime() -> aevents.EventRuntime:
        return aevents.EventRuntime(store=aevents.SQLiteStore(journal))

    app = Starlette(lifespan=events_lifespan(app_lifespan, runtime_factory=make_runtime))
    with pytest.raises(aevents.StoreError, match="not an aevents journal") as failure:
        async with serving(app):
            pytest.fail("the app started")
    assert failure.value.path == str(journal)
    assert steps == ["app startup", "app teardown"]


@pytest.mark.anyio
async def test_the_apps_lifespan_may_not_use_the_events_key(registry: aevents.Registry) -> None:
    """A wrapped lifespan yielding 'events' fails startup instead of being overwritten."""

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {STATE_KEY: "mine"}

    with pytest.raises(aevents.ConfigurationError, match="already puts 'events' in the state"):
        async with serving(starlette_app(registry, lifespan=app_lifespan)):
            pytest.fail("the app started")


@pytest.mark.anyio
async def test_each_lifespan_run_gets_a_new_runtime(registry: aevents.Registry) -> None:
    """Running the lifespan twice (as test clients do) works: the factory makes a new runtime."""
    runtimes: list[aevents.EventRuntime] = []

    async def endpoint(request: Request) -> Response:
        runtimes.append(get_runtime(request))
        await aevents.publish("app:pinged")
        return Response()

    app = starlette_app(registry, Route("/", endpoint))
    for _ in range(2):
        async with serving(app) as client:
            assert (await client.get("/")).status_code == 200
    assert len(runtimes) == 2
    assert runtimes[0] is not runtimes[1]
    assert not runtimes[0].running
    assert [runtime.stats().published for runtime in runtimes] == [1, 1]


def test_a_runtime_instance_instead_of_a_factory_is_refused() -> None:
    """events_lifespan(runtime_factory=EventRuntime()) fails when the app is built, saying why."""
    with pytest.raises(aevents.ConfigurationError, match="a runtime starts once"):
        events_lifespan(runtime_factory=aevents.EventRuntime())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_factory_that_returns_no_runtime_fails_startup() -> None:
    """A runtime_factory returning something else fails the startup with a clear error."""
    app = Starlette(lifespan=events_lifespan(runtime_factory=lambda: None))  # type: ignore[arg-type,return-value]
    with pytest.raises(aevents.ConfigurationError, match="must return an EventRuntime"):
        async with serving(app):
            pytest.fail("the app started")


@pytest.mark.anyio
async def test_get_runtime_without_the_lifespan_says_how_to_install_it() -> None:
    """An app without events_lifespan gets NoRuntimeInStateError naming the fix."""

    async def endpoint(request: Request) -> Response:
        get_runtime(request)
        return Response()

    async with serving(Starlette(routes=[Route("/", endpoint)])) as client:
        with pytest.raises(NoRuntimeInStateError, match=r"lifespan=aevents\.contrib\.starlette"):
            await client.get("/")


@pytest.mark.anyio
async def test_a_hand_written_lifespan_that_yields_events_works_with_get_runtime(
    registry: aevents.Registry, received: Received
) -> None:
    """A lifespan of the app's own that starts the runtime (to publish at startup) is found."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with aevents.EventRuntime(registry) as events:
            await events.publish("app:started")
            yield {"events": events}

    async def endpoint(request: Request) -> Response:
        await get_runtime(request).publish("app:pinged")
        return Response()

    async with serving(Starlette(routes=[Route("/", endpoint)], lifespan=lifespan)) as client:
        await client.get("/")
        names = {(await received.next()).name, (await received.next()).name}
    assert names == {"app:started", "app:pinged"}


def test_get_runtime_works_on_a_websocket_connection(registry: aevents.Registry) -> None:
    """get_runtime takes any HTTPConnection, so websocket endpoints have the runtime too."""
    runtime = aevents.EventRuntime(registry)

    async def receive() -> Message:
        raise AssertionError("no messages in this test")

    async def send(message: Message) -> None:
        raise AssertionError("no messages in this test")

    websocket = WebSocket({"type": "websocket", "state": {STATE_KEY: runtime}}, receive, send)
    assert get_runtime(websocket) is runtime


# ---------------------------------------------------------------- FastAPI


def fastapi_app(registry: aevents.Registry) -> FastAPI:
    """Every way a FastAPI app publishes: endpoints, dependencies, background tasks."""
    app = FastAPI(
        lifespan=events_lifespan(runtime_factory=functools.partial(aevents.EventRuntime, registry))
    )

    async def record_visit(events: Events) -> None:
        await events.publish("shop:page:viewed", payload={"by": "dependency"})

    async def record_visit_module_level() -> None:
        await aevents.publish("shop:page:viewed", payload={"by": "module-level dependency"})

    @app.post("/orders")
    async def place_order(events: Events) -> dict[str, str]:
        assert_type(events, aevents.EventRuntime)
        event = await events.publish("shop:order:placed", payload={"sku": "tea"})
        return {"event_id": event.id}

    @app.get("/catalogue", dependencies=[Depends(record_visit)])
    async def catalogue() -> list[str]:
        return ["tea"]

    @app.get("/offers", dependencies=[Depends(record_visit_module_level)])
    async def offers() -> list[str]:
        return []

    @app.post("/orders/{order_id}/ship")
    async def ship(order_id: int, background: BackgroundTasks) -> None:
        background.add_task(aevents.publish, "shop:order:shipped", payload={"order_id": order_id})

    @app.post("/orders/{order_id}/cancel")
    async def cancel(order_id: int, background: BackgroundTasks, events: Events) -> None:
        background.add_task(events.publish, "shop:order:cancelled", payload={"order_id": order_id})

    @app.post("/sync-orders")
    def place_order_from_a_thread(events: Events) -> dict[str, str]:
        event = events.publish_threadsafe("shop:order:placed", payload={"sku": "coffee"})
        return {"event_id": event.id}

    return app


@pytest.mark.anyio
async def test_a_fastapi_endpoint_publishes_through_the_events_dependency(
    registry: aevents.Registry, received: Received
) -> None:
    """events: Events is the app's runtime; its event reaches the receiver."""
    async with serving(fastapi_app(registry)) as client:
        response = await client.post("/orders")
        event = await received.next()
    assert response.status_code == 200
    assert (event.id, event.payload) == (response.json()["event_id"], {"sku": "tea"})


@pytest.mark.anyio
async def test_a_sync_fastapi_endpoint_publishes_threadsafe(
    registry: aevents.Registry, received: Received
) -> None:
    """A plain def endpoint (run on a worker thread) publishes with events.publish_threadsafe."""
    async with serving(fastapi_app(registry)) as client:
        response = await client.post("/sync-orders")
        event = await received.next()
    assert (event.id, event.payload) == (response.json()["event_id"], {"sku": "coffee"})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "by"), [("/catalogue", "dependency"), ("/offers", "module-level dependency")]
)
async def test_a_fastapi_dependency_publishes(
    registry: aevents.Registry, received: Received, path: str, by: str
) -> None:
    """A dependency publishes through Events, or through aevents.publish."""
    async with serving(fastapi_app(registry)) as client:
        response = await client.get(path)
        event = await received.next()
    assert response.status_code == 200
    assert (event.name, event.payload) == ("shop:page:viewed", {"by": by})


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["ship", "cancel"])
async def test_fastapi_background_tasks_publish(
    registry: aevents.Registry, received: Received, action: str
) -> None:
    """BackgroundTasks running aevents.publish or events.publish deliver the event."""
    async with serving(fastapi_app(registry)) as client:
        response = await client.post(f"/orders/5/{action}")
        event = await received.next()
    assert response.status_code == 200
    expected = {"ship": "shop:order:shipped", "cancel": "shop:order:cancelled"}[action]
    assert (event.name, event.payload) == (expected, {"order_id": 5})


@pytest.mark.anyio
async def test_a_mounted_app_uses_the_runtime_of_the_app_it_is_mounted_in(
    registry: aevents.Registry, received: Received
) -> None:
    """A FastAPI app mounted in a Starlette app with events_lifespan gets Events."""
    api = FastAPI()  # a mounted app's own lifespan never runs

    @api.post("/orders")
    async def place_order(events: Events) -> None:
        await events.publish("shop:order:placed")

    app = starlette_app(registry, Mount("/api", app=api))
    async with serving(app) as client:
        response = await client.post("/api/orders")
        event = await received.next()
    assert response.status_code == 200
    assert event.name == "shop:order:placed"


@pytest.mark.anyio
async def test_the_events_dependency_without_the_lifespan_says_how_to_install_it() -> None:
    """A FastAPI app with no events_lifespan gets NoRuntimeInStateError from Events."""
    app = FastAPI()

    @app.get("/")
    async def endpoint(events: Events) -> None:
        pytest.fail("the endpoint ran without a runtime")

    async with serving(app) as client:
        with pytest.raises(NoRuntimeInStateError, match="events_lifespan"):
            await client.get("/")


# ---------------------------------------------------------------- imports


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("aevents.contrib.starlette", "starlette", "starlette"),
        ("aevents.contrib.fastapi", "fastapi", "fastapi"),
        ("aevents.contrib.fastapi", "starlette", "fastapi"),
    ],
)
def test_a_missing_framework_says_which_extra_to_install(
    module: str, missing: str, extra: str
) -> None:
    """Importing the glue without its framework raises ImportError naming the pip extra."""
    result = _python(f"import sys; sys.modules[{missing!r}] = None; import {module}")
    assert result.returncode == 1
    assert f"ImportError: {module} needs" in result.stderr
    assert f"pip install 'aevents[{extra}]'" in result.stderr


def test_importing_aevents_imports_no_framework() -> None:
    """The core never imports contrib, so apps without Starlette pay nothing for it."""
    result = _python(
        "import sys, aevents\n"
        "print(sorted(m for m in sys.modules if m.startswith(('aevents.contrib', 'starlette'))))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_names_are_exported() -> None:
    """Both modules export what they list, and FastAPI users need only the one import."""
    from aevents.contrib import fastapi as fastapi_glue
    from aevents.contrib import starlette as starlette_glue

    for module in (starlette_glue, fastapi_glue):
        assert all(hasattr(module, name) for name in module.__all__)
    assert fastapi_glue.events_lifespan is events_lifespan


def test_the_docs_quote_the_examples_verbatim() -> None:
    """Every Python snippet of the Starlette and FastAPI docs is copied from an example."""
    root = Path(__file__).resolve().parents[1]
    names = ("starlette_app.py", "fastapi_app.py")
    examples = [(root / "examples" / name).read_text() for name in names]
    docs = [(root / "docs" / "starlette.md").read_text()]
    snippets = [found for doc in docs for found in re.findall(r"```python\n(.*?)```", doc, re.S)]
    assert len(snippets) >= 5, "no Starlette and FastAPI docs found"
    for snippet in snippets:
        assert any(snippet in example for example in examples), snippet
