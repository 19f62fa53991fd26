"""aevents.contrib.dashboard through its HTTP interface: who may see it, what it shows, and
what its actions change, in-process on every anyio backend (see ``serving``).

What the pages read from a store (counts, the fleet, dead letters) and what the actions
change in it is tested on each store (``harness``): none, SQLite, PostgreSQL and Redis.
What does not touch the store (options, the hooks, mounting) is tested without one
(``bare_harness``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import markupsafe
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

import aevents
from aevents import ConfigurationError, Event, EventRuntime, MemoryStore, RetryPolicy, StoreError
from aevents.contrib.dashboard import Dashboard
from aevents.contrib.starlette import events_lifespan
from tests.dashboard_stores import (
    STORE_KINDS,
    StoreFactory,
    delete_keys,
    make_store,
    remove_store,
)
from tests.journal_store import JournalMemoryStore
from tests.test_contrib_starlette import serving

pytestmark = pytest.mark.anyio

SESSION_SECRET = "x" * 32
HOSTILE = "<script>alert('owned')</script>"
ONCE = RetryPolicy(attempts=1)
WAIT = 10


class Harness:
    """An app with the dashboard at /_events, its runtime, and receivers to break and repair."""

    def __init__(self, registry: aevents.Registry, kind: str, stores: StoreFactory) -> None:
        self.registry = registry
        self.kind = kind
        self.stores = stores
        self.runtimes: list[EventRuntime] = []
        self.broken = True
        self.charged: list[int] = []

        async def charge(event: Event) -> None:
            if self.broken:
                raise ConnectionRefusedError(f"card service down {HOSTILE}")
            self.charged.append(event.payload["order"])

        async def mail(event: Event) -> None:
            if self.broken and event.payload.get("mail") == "fail":
                raise TimeoutError("mail server slow")

        registry.subscribe("shop:order:placed", charge, id="charge", retry=ONCE)
        registry.subscribe("shop:**", mail, id="mail", retry=ONCE)

    @property
    def runtime(self) -> EventRuntime:
        return self.runtimes[-1]

    def app(self, dashboard: Dashboard, **runtime_options: Any) -> Starlette:
        options = {"store": self.stores(), **runtime_options}

        def make() -> EventRuntime:
            runtime = EventRuntime(self.registry, metrics=True, **options)
            self.runtimes.append(runtime)
            return runtime

        return Starlette(
            routes=[Mount("/_events", app=dashboard)],
            lifespan=events_lifespan(runtime_factory=make),
        )

    async def orders(self, count: int, **payload: Any) -> list[Event]:
        events = [
            await self.runtime.publish(
                "shop:order:placed", payload={"order": n, "note": HOSTILE, **payload}
            )
            for n in range(count)
        ]
        with anyio.fail_after(WAIT):
            await self.runtime.drain()
        return events


@pytest.fixture(params=STORE_KINDS)
def harness(
    request: pytest.FixtureRequest, registry: aevents.Registry, tmp_path: Path
) -> Iterator[Harness]:
    """The app on each store in turn, on this test's own file, schema or key prefix."""
    kind: str = request.param
    server = {"postgres": "postgres_dsn", "redis": "redis_url"}.get(kind)
    url = None if server is None else str(request.getfixturevalue(server))
    stores = make_store(kind, tmp_path, url)
    yield Harness(registry, kind, stores)
    remove_store(kind, tmp_path, url, stores)


@pytest.fixture
def bare_harness(registry: aevents.Registry) -> Harness:
    """The app without a store, for what never reads one."""
    return Harness(registry, "none", lambda: None)


def leased_options(harness: Harness) -> dict[str, Any]:
    """Without a store of the harness's own, the reference fake stands in for a shared one."""
    return {"store": MemoryStore()} if harness.kind == "none" else {}


def escaped(text: str) -> str:
    """``text`` as Jinja's autoescape writes it."""
    return str(markupsafe.escape(text))


def everyone() -> Dashboard:
    return Dashboard(allow_everyone=True)


@asynccontextmanager
async def dashboard_client(
    harness: Harness, dashboard: Dashboard | None = None, **runtime_options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(harness.app(dashboard or everyone(), **runtime_options)) as client:
        yield client


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found.group(1)


def listed_ids(page: str) -> list[str]:
    return re.findall(r'name="ids" value="([^"]+)"', page)


async def act(
    client: httpx.AsyncClient, verb: str, ids: list[str], **fields: str
) -> httpx.Response:
    """Confirm, then apply, as a browser does."""
    token = csrf_token((await client.get("/_events/dead-letters")).text)
    confirm = await client.post(
        "/_events/dead-letters/confirm",
        data={"csrf_token": token, "action": verb, "ids": ids, **fields},
    )
    assert confirm.status_code == 200, confirm.text
    chosen = listed_ids(confirm.text)
    return await client.post(
        "/_events/dead-letters/apply",
        data={
            "csrf_token": token,
            "action": verb.partition(":")[0],
            "ids": chosen,
            "confirmed": "yes",
            **fields,
        },
        follow_redirects=True,
    )


# -- configuration -------------------------------------------------------------------------


def test_a_dashboard_without_an_authorize_hook_is_refused() -> None:
    """No hook and no explicit allow_everyone=True: a ConfigurationError that says what to do."""
    with pytest.raises(ConfigurationError, match="authorize= is required"):
        Dashboard()
    with pytest.raises(ConfigurationError, match="not both"):
        Dashboard(authorize=lambda request: True, allow_everyone=True)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"authorize": "yes"}, "authorize must be callable"),
        ({"allow_everyone": 1}, "allow_everyone must be True or False"),
        ({"allow_everyone": True, "secret": "short"}, "secret must be"),
        ({"allow_everyone": True, "refresh": 0}, "refresh must be"),
        ({"allow_everyone": True, "history": 2}, "history must be"),
        ({"allow_everyone": True, "runtime": "runtime"}, "runtime must be an EventRuntime"),
        ({"allow_everyone": True, "actor": "me"}, "actor must be callable"),
    ],
)
def test_bad_options_raise_configuration_errors_naming_them(
    options: dict[str, Any], named: str
) -> None:
    """Each bad option is named in the error."""
    with pytest.raises(ConfigurationError, match=named):
        Dashboard(**options)


# -- authorisation -------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [False, None, "yes", 1])
async def test_every_request_the_hook_does_not_allow_is_refused(
    bare_harness: Harness, answer: object
) -> None:
    """Pages, static files and actions alike get a 403 unless the hook answers True."""
    dashboard = Dashboard(authorize=lambda request: answer)  # type: ignore[arg-type,return-value]
    async with dashboard_client(bare_harness, dashboard) as client:
        for path in ("/_events/", "/_events/dead-letters", "/_events/static/dashboard.css"):
            response = await client.get(path)
            assert response.status_code == 403, path
            assert "Not allowed" in response.text
        posted = await client.post("/_events/dead-letters/apply", data={"action": "discard"})
        assert posted.status_code == 403


async def test_an_async_hook_sees_the_request(harness: Harness) -> None:
    """An async hook is awaited; here it allows one header value only."""

    async def authorize(request: Request) -> bool:
        await anyio.lowlevel.checkpoint()
        return request.headers.get("x-operator") == "ada"

    async with dashboard_client(harness, Dashboard(authorize=authorize)) as client:
        assert (await client.get("/_events/")).status_code == 403
        assert (await client.get("/_events/", headers={"x-operator": "ada"})).status_code == 200


def staff_only(request: Request) -> bool:
    """Starlette sessions: the login view put the user's role in the session."""
    return request.session.get("role") == "operator"


async def test_the_session_hook_of_the_guide_lets_operators_in(bare_harness: Harness) -> None:
    """With SessionMiddleware on the outer app, the hook reads request.session."""

    async def login(request: Request) -> Response:
        request.session["role"] = "operator"  # a real login checks a password first
        return PlainTextResponse("signed in")

    def make() -> EventRuntime:
        runtime = EventRuntime(bare_harness.registry)
        bare_harness.runtimes.append(runtime)
        return runtime

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Mount("/_events", app=Dashboard(authorize=staff_only)),
        ],
        middleware=[Middleware(SessionMiddleware, secret_key=SESSION_SECRET)],
        lifespan=events_lifespan(runtime_factory=make),
    )
    async with serving(app) as client:
        assert (await client.get("/_events/")).status_code == 403
        await client.post("/login")
        assert (await client.get("/_events/")).status_code == 200


# -- what the pages show -------------------------------------------------------------------


async def test_the_overview_shows_counts_rates_latencies_and_a_chart(harness: Harness) -> None:
    """Counts of the runtime, rates and the chart once samples exist, latencies per receiver."""
    dashboard = Dashboard(allow_everyone=True, refresh=1e-9)  # a sample per request
    async with dashboard_client(harness, dashboard) as client:
        first = await client.get("/_events/")
        assert first.status_code == 200
        assert "The chart appears after a few samples" in first.text
        harness.broken = False
        for _ in range(3):
            await harness.orders(2)
            page = await client.get("/_events/")
        assert re.search(
            r'data-counter="Delivered">\s*<div class="label">Delivered</div>\s*'
            r'<div class="value" data-value>12</div>',
            page.text,
        )
        assert "<polyline" in page.text
        store = harness.runtime.store
        assert (store is None) is (harness.kind == "none")
        assert ("in memory" if store is None else f"{type(store).__name__}(") in page.text
        assert "<code>charge</code>" in page.text  # the latency table
        assert "last minute " in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert page.headers["x-frame-options"] == "DENY"


async def test_a_partial_request_gets_the_page_content_only(bare_harness: Harness) -> None:
    """The refresh script asks for the content alone, which it swaps in place."""
    async with dashboard_client(bare_harness) as client:
        partial = await client.get("/_events/", headers={"X-Dashboard-Partial": "1"})
    assert "<h1>Overview</h1>" in partial.text
    assert "<html" not in partial.text


async def test_the_receivers_page_shows_routes_policies_and_counters(harness: Harness) -> None:
    """Each subscription with its pattern, kind, scope, retry policy and counters."""
    async with dashboard_client(harness) as client:
        await harness.orders(1)
        page = (await client.get("/_events/receivers")).text
    assert "<code>shop:order:placed</code>" in page
    assert "<code>shop:**</code>" in page
    assert "1 attempt</td>" in page  # charge and mail are subscribed with attempts=1
    # The declared names are every catalog's that this process built (other tests' too).
    declared = aevents.inspect_routes(harness.registry).names
    assert ("No catalog declares names" in page) is (not declared)


async def test_the_fleet_page_lists_consumers_backlog_and_leases(harness: Harness) -> None:
    """With a shared store: this process as a consumer, its receivers, the dead backlog."""
    async with dashboard_client(harness, **leased_options(harness)) as client:
        await harness.orders(2)
        page = (await client.get("/_events/fleet")).text
    assert 'Consumers <span class="count">1</span>' in page
    assert "charge, mail" in page
    assert re.search(r"<code>charge</code></td><td class=\"num\">0</td>.*?>2</td>", page)


async def test_the_fleet_page_says_what_is_missing_without_a_shared_store(
    bare_harness: Harness,
) -> None:
    """No store, or a journal: the page says there is no fleet to show, and why."""
    async with dashboard_client(bare_harness) as client:
        assert "has no store" in (await client.get("/_events/fleet")).text
    async with dashboard_client(bare_harness, store=JournalMemoryStore()) as client:
        assert "is a journal" in (await client.get("/_events/fleet")).text


async def test_without_a_runtime_the_pages_say_how_to_start_one() -> None:
    """A dashboard mounted in an app without the runtime's lifespan answers 503, and says why."""
    app = Starlette(routes=[Mount("/_events", app=everyone())])
    async with serving(app) as client:
        response = await client.get("/_events/dead-letters")
    assert response.status_code == 503
    assert "events_lifespan()" in response.text


async def test_a_given_runtime_is_shown_without_a_lifespan(registry: aevents.Registry) -> None:
    """Dashboard(runtime=...) shows that runtime wherever it is mounted."""
    async with EventRuntime(registry) as runtime:
        await runtime.publish("anything:at:all")
        app = Starlette(routes=[Mount("/ops", app=Dashboard(runtime, allow_everyone=True))])
        async with serving(app) as client:
            page = (await client.get("/ops/")).text
    assert 'href="/ops/dead-letters"' in page
    assert re.search(r"data-value>1</div>", page)


# -- escaping and secrets ------------------------------------------------------------------


async def test_payloads_metadata_and_errors_are_rendered_escaped(harness: Harness) -> None:
    """A hostile payload, metadata value, key and error message appear as text, never as HTML."""
    async with dashboard_client(harness) as client:
        event = await harness.runtime.publish(
            "shop:order:placed",
            payload={"order": 1, HOSTILE: HOSTILE},
            metadata={"trace": HOSTILE},
            key=HOSTILE,
        )
        with anyio.fail_after(WAIT):
            await harness.runtime.drain()
        listing = (await client.get("/_events/dead-letters")).text
        (letter_id,) = listing_ids = listed_ids(listing)
        detail = (await client.get(f"/_events/dead-letters/{letter_id}")).text
        confirm = await client.post(
            "/_events/dead-letters/confirm",
            data={"csrf_token": csrf_token(listing), "action": "discard", "ids": listing_ids},
        )
    for page in (listing, detail, confirm.text):
        assert "<script>" not in page
    assert detail.count(escaped(HOSTILE)) >= 3  # key, error, metadata (payload is JSON)
    assert escaped(f'"{HOSTILE}": "{HOSTILE}"') in detail
    assert event.id in detail


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        ("postgresql://app:hunter2@db.internal/events", "postgresql://app:***@db.internal/events"),
        ("redis://cache:6379/0?db=1&password=hunter2", "redis://cache:6379/0?db=1&password=***"),
        ("host=db password='hunter2 x' dbname=events", "host=db password=*** dbname=events"),
    ],
)
async def test_a_url_password_never_reaches_a_page(
    bare_harness: Harness, shown: str, expected: str
) -> None:
    """A store whose repr or error shows a password (in a URL, its query, or a libpq
    string) is shown with *** instead."""

    class LeakyStore(MemoryStore):
        def __repr__(self) -> str:
            return f"LeakyStore({shown!r})"

        async def backlog(self) -> list[Any]:
            raise StoreError(shown, "connection refused")

    async with dashboard_client(bare_harness, store=LeakyStore()) as client:
        pages = [(await client.get(f"/_events/{path}")).text for path in ("", "fleet")]
    for page in pages:
        assert "hunter2" not in page
        assert escaped(expected) in page


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its user's password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:{password}@{host}").geturl()


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_a_real_stores_password_never_reaches_a_page_or_a_log(
    registry: aevents.Registry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """PostgresStore and RedisStore opened with a password in the URL (the servers of the
    tests take any): no page, action, error or log line of the run shows it."""
    secret = "hunter2-" + os.urandom(4).hex()
    server = str(request.getfixturevalue("postgres_dsn" if kind == "postgres" else "redis_url"))
    stores = make_store(kind, tmp_path, with_password(server, secret))
    harness = Harness(registry, kind, stores)
    pages: list[str] = []
    try:
        with caplog.at_level(logging.DEBUG):
            async with dashboard_client(harness) as client:
                await harness.orders(1)
                for path in ("", "receivers", "fleet", "dead-letters"):
                    pages.append((await client.get(f"/_events/{path}")).text)
                letter_id = listed_ids(pages[-1])[0]
                pages.append((await client.get(f"/_events/dead-letters/{letter_id}")).text)
                pages.append((await act(client, "redeliver", [letter_id])).text)
            runtime = harness.runtime  # stopped: its store is closed, reading it fails
            app = Starlette(routes=[Mount("/_events", app=Dashboard(runtime, allow_everyone=True))])
            async with serving(app) as client:
                for path in ("", "fleet", "dead-letters", f"dead-letters/{letter_id}"):
                    pages.append((await client.get(f"/_events/{path}")).text)
    finally:
        if kind == "redis":
            await delete_keys(stores)
        else:
            remove_store(kind, tmp_path, server, stores)
    assert "is not open" in pages[-1]  # the closed store's error is shown, redacted
    assert ("Store" if kind == "redis" else "PostgresStore(") in pages[0]
    for page in pages:
        assert secret not in page
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "dashboard: " in logged
    assert secret not in logged


# -- CSRF ----------------------------------------------------------------------------------


async def test_an_action_without_a_valid_csrf_token_is_refused(harness: Harness) -> None:
    """No token, a wrong one, no cookie, another site's origin: 403, and the letter stays."""
    async with dashboard_client(harness) as client:
        await harness.orders(1, mail="fail")
        listing = (await client.get("/_events/dead-letters")).text
        ids, token = listed_ids(listing), csrf_token(listing)
        form = {"action": "discard", "ids": ids, "confirmed": "yes"}
        refused = [
            await client.post("/_events/dead-letters/apply", data=form),
            await client.post("/_events/dead-letters/apply", data={**form, "csrf_token": "0" * 64}),
            await client.post(
                "/_events/dead-letters/apply",
                data={**form, "csrf_token": token},
                headers={"origin": "https://evil.example"},
            ),
            await client.post(
                "/_events/dead-letters/apply",
                data={**form, "csrf_token": token},
                headers={"sec-fetch-site": "cross-site"},
            ),
            await client.post("/_events/dead-letters/apply", json={**form, "csrf_token": token}),
        ]
        client.cookies.clear()
        refused.append(
            await client.post("/_events/dead-letters/apply", data={**form, "csrf_token": token})
        )
        assert [response.status_code for response in refused] == [403, 403, 403, 403, 415, 403]
        assert len(await harness.runtime.dead_letters()) == 2


async def test_tokens_hold_across_processes_that_share_the_secret(bare_harness: Harness) -> None:
    """A form served by one dashboard is accepted by another with the same secret only."""
    secret = "s" * 32
    async with dashboard_client(
        bare_harness, Dashboard(allow_everyone=True, secret=secret)
    ) as client:
        await bare_harness.orders(1)
        listing = (await client.get("/_events/dead-letters")).text
        cookie = client.cookies["aevents_dashboard_csrf"]
        form = {
            "csrf_token": csrf_token(listing),
            "action": "redeliver",
            "ids": listed_ids(listing),
        }
    for other, expected in (
        (Dashboard(allow_everyone=True, secret=secret), 200),
        (everyone(), 403),
    ):
        async with dashboard_client(bare_harness, other) as client:
            client.cookies.set("aevents_dashboard_csrf", cookie, path="/_events")
            response = await client.post("/_events/dead-letters/confirm", data=form)
            assert response.status_code == expected


# -- actions -------------------------------------------------------------------------------


async def test_redelivering_one_letter_runs_its_receiver_and_logs_who(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Confirm, apply: the receiver runs again; the action is logged with the actor's name."""
    dashboard = Dashboard(allow_everyone=True, actor=lambda request: "ada")
    async with dashboard_client(harness, dashboard) as client:
        await harness.orders(2)
        letters = await harness.runtime.dead_letters()
        charge = next(letter for letter in letters if letter.receiver_id == "charge")
        harness.broken = False
        with caplog.at_level(logging.INFO, logger="aevents.dashboard"):
            applied = await act(client, "redeliver", [charge.id])
        with anyio.fail_after(WAIT):
            await harness.runtime.drain()
        assert applied.status_code == 200
        assert "ada chose to redeliver 1 dead letter: 1 redelivered." in applied.text
        assert harness.charged == [charge.event.payload["order"]]
        assert charge.id not in {letter.id for letter in await harness.runtime.dead_letters()}
    (record,) = [r for r in caplog.records if r.name == "aevents.dashboard"]
    assert record.getMessage().startswith("dashboard: ada chose to redeliver 1 dead letter, 1 done")
    assert record.__dict__["dead_letter_ids"] == (charge.id,)
    assert dashboard.actions.recent()[0].actor == "ada"


async def test_discarding_a_selection_deletes_those_letters_only(harness: Harness) -> None:
    """Two chosen of four: those two are gone, the others stay."""
    async with dashboard_client(harness, **leased_options(harness)) as client:
        await harness.orders(2, mail="fail")
        letters = await harness.runtime.dead_letters()
        chosen = [letter.id for letter in letters[:2]]
        applied = await act(client, "discard", chosen)
        assert "2 discarded" in applied.text
        assert [letter.id for letter in await harness.runtime.dead_letters()] == [
            letter.id for letter in letters[2:]
        ]


async def test_everything_matching_a_filter_is_redelivered_and_nothing_else(
    harness: Harness,
) -> None:
    """ "Redeliver all matching" takes the letters the filter shows, not the others."""
    async with dashboard_client(harness) as client:
        await harness.orders(3, mail="fail")
        harness.broken = False
        applied = await act(client, "redeliver:matching", [], receiver="charge")
        with anyio.fail_after(WAIT):
            await harness.runtime.drain()
        assert "3 redelivered" in applied.text
        assert sorted(harness.charged) == [0, 1, 2]
        assert {letter.receiver_id for letter in await harness.runtime.dead_letters()} == {"mail"}


async def test_an_action_is_applied_only_once_confirmed(harness: Harness) -> None:
    """The confirmation page changes nothing; apply without confirmed=yes is refused."""
    async with dashboard_client(harness) as client:
        await harness.orders(1, mail="fail")
        listing = (await client.get("/_events/dead-letters")).text
        form = {"csrf_token": csrf_token(listing), "action": "discard", "ids": listed_ids(listing)}
        confirm = await client.post("/_events/dead-letters/confirm", data=form)
        assert "Discard 2 dead letters?" in confirm.text
        assert "This cannot be undone" in confirm.text
        assert len(await harness.runtime.dead_letters()) == 2
        unconfirmed = await client.post("/_events/dead-letters/apply", data=form)
        assert unconfirmed.status_code == 400
        assert len(await harness.runtime.dead_letters()) == 2


async def test_a_journal_store_offers_no_discard_and_refuses_one(bare_harness: Harness) -> None:
    """With a journal-only store the discard buttons are gone, and a forged discard is a 409."""
    async with dashboard_client(bare_harness, store=JournalMemoryStore()) as client:
        await bare_harness.orders(1, mail="fail")
        listing = (await client.get("/_events/dead-letters")).text
        assert 'value="discard"' not in listing
        assert "cannot discard dead letters" in listing
        applied = await client.post(
            "/_events/dead-letters/apply",
            data={
                "csrf_token": csrf_token(listing),
                "action": "discard",
                "ids": listed_ids(listing),
                "confirmed": "yes",
            },
        )
        assert applied.status_code == 409
        assert len(await bare_harness.runtime.dead_letters()) == 2


# -- filters -------------------------------------------------------------------------------


FILTERS = [
    ({"receiver": "charge"}, {"charge"}),
    ({"error": "TimeoutError"}, {"mail"}),
    ({"name": "order:pla"}, {"charge", "mail"}),
    ({"name": "shop:*:placed"}, {"charge", "mail"}),
    ({"name": "shop:*"}, set()),
    ({"name": "billing"}, set()),
    ({"receiver": "mail", "error": "ConnectionRefusedError"}, set()),
]


async def test_filters_pick_dead_letters_by_receiver_name_and_error_type(
    harness: Harness,
) -> None:
    """Receiver and error type exactly; the name as a part of it, or as a pattern."""
    async with dashboard_client(harness) as client:
        await harness.orders(1, mail="fail")
        letters = {letter.id: letter for letter in await harness.runtime.dead_letters()}
        for query, receivers in FILTERS:
            page = (await client.get("/_events/dead-letters", params=query)).text
            found = {letters[letter_id].receiver_id for letter_id in listed_ids(page)}
            assert found == receivers, query


async def test_a_broken_name_pattern_is_explained_not_applied(bare_harness: Harness) -> None:
    """A name filter that is not a valid pattern matches nothing and says why."""
    async with dashboard_client(bare_harness) as client:
        await bare_harness.orders(1)
        page = (await client.get("/_events/dead-letters", params={"name": "shop:*x"})).text
    assert listed_ids(page) == []
    assert 'class="warning"' in page


# -- mounting in other ASGI apps -----------------------------------------------------------


async def test_mount_serves_the_dashboard_under_its_path_and_the_app_elsewhere(
    bare_harness: Harness,
) -> None:
    """Dashboard.mount wraps a non-Starlette app: lifespan and other paths go to the app."""
    started = bare_harness.app(
        everyone()
    )  # stands in for Django's ASGI app, which runs the runtime

    async def other(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await started(scope, receive, send)
            return
        await PlainTextResponse("the app")(scope, receive, send)

    dashboard = everyone()
    async with serving(dashboard.mount(other, "/ops")) as client:
        assert (await client.get("/elsewhere")).text == "the app"
        assert (await client.get("/opsx")).text == "the app"
        page = await client.get("/ops/dead-letters")
        assert page.status_code == 200
        assert 'href="/ops/static/dashboard.css"' in page.text
        assert (await client.get("/ops/static/dashboard.js")).status_code == 200
    with pytest.raises(ConfigurationError, match="path must start with /"):
        dashboard.mount(other, "ops/")


def test_ids_helper_finds_checkboxes() -> None:
    """The tests' own reader of a listing finds each letter's checkbox."""
    assert listed_ids('<input name="ids" value="a"><input name="ids" value="b">') == ["a", "b"]


async def test_the_dashboard_mounts_in_fastapi(bare_harness: Harness) -> None:
    """FastAPI's app.mount, with the runtime from the app's lifespan."""
    from fastapi import FastAPI

    def make() -> EventRuntime:
        runtime = EventRuntime(bare_harness.registry)
        bare_harness.runtimes.append(runtime)
        return runtime

    app = FastAPI(lifespan=events_lifespan(runtime_factory=make))
    app.add_middleware(SessionMiddleware, secret_key=SESSION_SECRET)
    app.mount("/_events", Dashboard(authorize=staff_only))
    async with serving(app) as client:
        assert (await client.get("/_events/")).status_code == 403
