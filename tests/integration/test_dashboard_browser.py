"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against examples/dashboard_app.py served by a real uvicorn.

Skipped, with one line saying what is missing, without Playwright or Chromium; with
``AEVENTS_REQUIRE_SERVICES=1`` (as ``.ci/run`` sets it) their absence fails instead.
``AEVENTS_SCREENSHOTS=docs/screenshots`` writes the guide's screenshots there.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.servers import WAIT, uvicorn
from tests.integration.test_starlette_server import stop
from tests.pg import drop_schema, schema_for
from tests.services import required

CHROMIUM = os.environ.get("AEVENTS_CHROMIUM") or shutil.which("chromium")
try:
    from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright
except ModuleNotFoundError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]
_MISSING = (
    "Playwright is not installed (pip install -e '.[test]')"
    if sync_playwright is None
    else None
    if CHROMIUM
    else "Chromium is not installed (apt-get install chromium, or set AEVENTS_CHROMIUM)"
)
if _MISSING:  # pragma: no cover - depends on the machine
    reason = f"browser tests of the dashboard: {_MISSING}"
    if required():
        pytest.fail(f"{reason} (AEVENTS_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

TOKEN = "browser-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/screenshots when asked for, else the test's directory."""
    chosen = os.environ.get("AEVENTS_SCREENSHOTS")
    return Path(chosen) if chosen else tmp_path


def order(client: httpx.Client, **body: Any) -> int:
    response = client.post("/orders", json=body)
    assert response.status_code == 202, response.text
    number: int = response.json()["order"]
    return number


def counter(page: Page, label: str) -> Any:
    return page.locator(f'[data-counter="{label}"] [data-value]')


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The example app's store: an SQLite file, or a PostgreSQL schema of the test's own."""
    if request.param == "sqlite":
        yield {"EVENTS_JOURNAL": str(tmp_path / "events.db")}
        return
    dsn = str(request.getfixturevalue("postgres_dsn"))
    schema = schema_for(tmp_path)
    yield {"EVENTS_POSTGRES": dsn, "EVENTS_POSTGRES_SCHEMA": schema}
    drop_schema(dsn, schema)


def test_an_operator_watches_the_flow_and_redelivers_a_dead_letter(
    browser: Browser, shots: Path, store_env: dict[str, str], tmp_path: Path
) -> None:
    """Counts move as orders come in; a dead letter opened and redelivered charges the card.

    On SQLite and on PostgreSQL (the screenshots are the SQLite run's)."""
    env = {"AEVENTS_DASHBOARD_TOKEN": TOKEN, "AEVENTS_DASHBOARD_REFRESH": "0.3", **store_env}
    if "EVENTS_POSTGRES" in store_env:
        shots = tmp_path  # the guide shows the SQLite run's
    with (
        uvicorn("examples.dashboard_app:app", "asyncio", **env) as server,
        server.started() as client,
    ):
        base = str(client.base_url)
        context = browser.new_context(
            extra_http_headers=AUTH, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        dialogs: list[str] = []

        def seen(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", seen)

        page.goto(f"{base}/_events/")
        expect(counter(page, "Published")).to_have_text("0")
        for published in (3, 6, 9):
            for _ in range(3):
                order(client)
            expect(counter(page, "Published")).to_have_text(str(published), timeout=WAIT * 1000)
        expect(counter(page, "Delivered")).to_have_text("18", timeout=WAIT * 1000)

        declined = [order(client, card="declined", note="<script>alert(1)</script>") for _ in "ab"]
        expect(counter(page, "Dead-lettered")).to_have_text("2", timeout=WAIT * 1000)
        expect(page.locator("svg polyline.delivered")).to_have_count(1, timeout=WAIT * 1000)
        page.screenshot(path=shots / "dashboard-overview.png", full_page=True)

        page.get_by_role("link", name="Dead letters").click()
        expect(page.locator("table.letters tbody tr")).to_have_count(2)
        page.screenshot(path=shots / "dashboard-dead-letters.png", full_page=True)
        page.locator("table.letters tbody tr").last.get_by_role("link").click()
        expect(page.locator("#payload")).to_contain_text('"note": "<script>alert(1)</script>"')
        expect(page.locator("#payload")).to_contain_text(f'"order": {declined[0]}')
        page.screenshot(path=shots / "dashboard-dead-letter.png", full_page=True)

        assert client.post("/card-service/repair").json() == {"declines": False}
        page.get_by_role("button", name="Redeliver…").click()
        expect(page.get_by_role("heading")).to_have_text("Redeliver 1 dead letter?")
        page.get_by_role("button", name="Yes, redeliver 1").click()
        expect(page.get_by_role("status")).to_contain_text("1 redelivered")
        expect(page.locator("table.letters tbody tr")).to_have_count(1)
        deadline = time.monotonic() + WAIT
        while declined[0] not in client.get("/charged").json()["charged"]:
            assert time.monotonic() < deadline, "the redelivered order was never charged"
            page.wait_for_timeout(50)
        assert dialogs == []  # the hostile note was shown as text, never run
        context.close()
        stop(server)


def test_a_browser_without_authorisation_sees_nothing_and_changes_nothing(
    browser: Browser, tmp_path: Path
) -> None:
    """Without the token every page is a 403, and an action posted anyway is refused."""
    env = {"AEVENTS_DASHBOARD_TOKEN": TOKEN, "EVENTS_JOURNAL": str(tmp_path / "events.db")}
    with (
        uvicorn("examples.dashboard_app:app", "asyncio", **env) as server,
        server.started() as client,
    ):
        base = str(client.base_url)
        order(client, card="declined")
        letters = client.get("/_events/dead-letters", headers=AUTH)
        deadline = time.monotonic() + WAIT
        while 'name="ids"' not in letters.text:
            assert time.monotonic() < deadline, "no dead letter appeared"
            letters = client.get("/_events/dead-letters", headers=AUTH)
        stranger = browser.new_context()
        page = stranger.new_page()
        response = page.goto(f"{base}/_events/dead-letters")
        assert response is not None
        assert response.status == 403
        expect(page.get_by_role("heading")).to_have_text("Not allowed")
        posted = stranger.request.post(
            f"{base}/_events/dead-letters/apply",
            form={"action": "discard", "ids": "all", "confirmed": "yes"},
        )
        assert posted.status == 403
        operator = browser.new_context(extra_http_headers=AUTH)
        forged = operator.request.post(
            f"{base}/_events/dead-letters/apply",
            form={"action": "discard", "ids": "all", "confirmed": "yes"},
        )
        operator.close()
        assert forged.status == 403  # authorised, but no CSRF token
        assert 'name="ids"' in client.get("/_events/dead-letters", headers=AUTH).text
        stranger.close()
        stop(server)
        assert "refused POST /_events/dead-letters/apply" in server.output
