"""The Django admin pages of aevents.contrib.django.events_admin, through Django's test
client, against a real database (SQLite) and a real SQLiteStore file.

Django is configured once per test session (tests/test_contrib_django.py does the same,
whichever runs first); this module adds the admin's apps and URLs with override_settings.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import django
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.test import Client
from django.test.utils import override_settings
from starlette.requests import Request

import aevents
from aevents import ConfigurationError, Event, EventRuntime, RetryPolicy, SQLiteStore

HOSTILE = "<script>alert('owned')</script>"
ADMIN = "/admin/aevents_admin/deadletter/"
DELIVERIES = "/admin/aevents_admin/delivery/"


def _fill(journal: Path) -> None:
    """Three dead letters for two receivers, with a hostile payload and error."""
    registry = aevents.Registry()

    async def charge(event: Event) -> None:
        raise ConnectionRefusedError(f"card service down {HOSTILE}")

    async def mail(event: Event) -> None:
        if event.payload["order"] == 0:
            raise TimeoutError("mail server slow")

    registry.subscribe("shop:order:placed", charge, id="charge", retry=RetryPolicy(attempts=1))
    registry.subscribe("shop:order:placed", mail, id="mail", retry=RetryPolicy(attempts=1))

    async def publish() -> None:
        async with EventRuntime(registry, store=SQLiteStore(journal)) as runtime:
            for order in range(2):
                await runtime.publish(
                    "shop:order:placed", payload={"order": order, "note": HOSTILE}
                )
            with anyio.fail_after(10):
                await runtime.drain()

    anyio.run(publish)


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Django with its admin, on a fresh database, reading a store that holds dead letters."""
    if not settings.configured:
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(tmp_path_factory.mktemp("django") / "test.sqlite3"),
                    "OPTIONS": {"timeout": 20},
                }
            },
            INSTALLED_APPS=["aevents.contrib.django"],
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            USE_TZ=True,
        )
    django.setup()
    try:
        settings.SECRET_KEY  # noqa: B018 - sessions and CSRF need one
    except ImproperlyConfigured:
        settings.SECRET_KEY = "tests only " * 4  # kept for the session
    journal = tmp_path_factory.mktemp("events") / "events.db"
    _fill(journal)
    with override_settings(
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "aevents.contrib.django.events_admin",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        ROOT_URLCONF="tests.dashboard_django_urls",
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        AEVENTS_ADMIN_STORE=journal,
        ALLOWED_HOSTS=["testserver"],
    ):
        from django.contrib.auth.models import Permission, User

        call_command("migrate", verbosity=0)
        User.objects.filter(username__in=["root", "viewer", "fixer"]).delete()
        User.objects.create_superuser("root", "root@example.com", "pw")
        for name, perms in (
            ("viewer", ["view_deadletter", "view_delivery"]),
            ("fixer", ["view_deadletter", "change_deadletter", "view_delivery"]),
        ):
            user = User.objects.create_user(name, password="pw", is_staff=True)
            user.user_permissions.set(Permission.objects.filter(codename__in=perms))
        yield journal
    connections.close_all()


def client(name: str, **options: Any) -> Client:
    from django.contrib.auth.models import User

    signed_in = Client(**options)
    signed_in.force_login(User.objects.get(username=name))
    return signed_in


def ids(page: str) -> list[str]:
    return re.findall(r'name="ids" value="([^"]+)"', page)


def letters(journal: Path) -> list[aevents.DeadLetter]:
    async def read() -> list[aevents.DeadLetter]:
        store = SQLiteStore(journal)
        await store.open()
        try:
            return await store.dead_letters()
        finally:
            await store.close()

    return anyio.run(read)


def test_the_admin_index_has_an_events_section(journal: Path) -> None:
    """Dead letters and deliveries appear under "Events" for a user who may view them."""
    page = client("viewer").get("/admin/").content.decode()
    assert "Events" in page
    assert f'href="{ADMIN}"' in page
    assert f'href="{DELIVERIES}"' in page


def test_dead_letters_are_listed_filtered_and_shown_escaped(journal: Path) -> None:
    """The list, a filter by receiver, and a detail page with the hostile payload as text."""
    viewer = client("viewer")
    listing = viewer.get(ADMIN).content.decode()
    assert len(ids(listing)) == 0  # a viewer gets no checkboxes: no action is allowed
    assert "3 of 3 dead letters" in listing
    filtered = viewer.get(ADMIN, {"receiver": "mail"}).content.decode()
    assert "1 of 3 dead letters" in filtered
    letter = next(letter for letter in letters(journal) if letter.receiver_id == "charge")
    detail = viewer.get(f"{ADMIN}{letter.id}/").content.decode()
    assert "<script>" not in listing + detail
    assert "&lt;script&gt;" in detail
    assert "card service down" in detail


def test_actions_need_the_admins_permissions(journal: Path) -> None:
    """View only: no action; change: redeliver but not discard; anonymous: the login page."""
    letter_id = letters(journal)[0].id
    form = {"action": "discard", "ids": [letter_id]}
    assert client("viewer").post(f"{ADMIN}act/", form).status_code == 403
    assert client("fixer").post(f"{ADMIN}act/", form).status_code == 403
    confirm = client("fixer").post(f"{ADMIN}act/", {**form, "action": "redeliver"})
    assert confirm.status_code == 200
    assert "Redeliver 1 dead letters?" in confirm.content.decode()
    anonymous = Client().get(ADMIN)
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]
    assert len(letters(journal)) == 3


def test_a_post_without_the_csrf_token_is_refused(journal: Path) -> None:
    """Django's CSRF middleware guards the actions like any admin form."""
    root = client("root", enforce_csrf_checks=True)
    response = root.post(f"{ADMIN}act/", {"action": "discard", "ids": [letters(journal)[0].id]})
    assert response.status_code == 403
    assert len(letters(journal)) == 3


def test_redeliver_and_discard_after_confirmation_and_logged(
    journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Confirmed, a redelivered letter becomes pending again and a discarded one goes."""
    root = client("root")
    mail_letter, *charge_letters = sorted(letters(journal), key=lambda x: x.receiver_id != "mail")
    confirm = root.post(f"{ADMIN}act/", {"action": "redeliver:matching", "receiver": "mail"})
    assert ids(confirm.content.decode()) == [mail_letter.id]
    with caplog.at_level(logging.INFO, logger="aevents.dashboard"):
        done = root.post(
            f"{ADMIN}act/",
            {"action": "redeliver", "confirmed": "yes", "ids": [mail_letter.id]},
            follow=True,
        )
        assert "1 of 1 dead letters redelivered." in done.content.decode()
        root.post(
            f"{ADMIN}act/",
            {"action": "discard", "confirmed": "yes", "ids": [charge_letters[0].id]},
        )
    assert [letter.id for letter in letters(journal)] == [charge_letters[1].id]
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("admin: root chose to redeliver 1 dead letters") for line in logged)
    assert any(line.startswith("admin: root chose to discard 1 dead letters") for line in logged)
    pending = client("viewer").get(DELIVERIES).content.decode()
    assert re.search(r"<td>shop:order:placed</td><td>[^<]+</td><td>mail</td><td>0</td>", pending)


def test_a_missing_store_setting_is_a_configuration_error(journal: Path) -> None:
    """Without AEVENTS_ADMIN_STORE or AEVENTS["store"] the pages say what to set."""
    from aevents.contrib.django.events_admin._stores import store_factory

    with (
        override_settings(AEVENTS_ADMIN_STORE=None, AEVENTS={"workers": 2}),
        pytest.raises(ConfigurationError, match="AEVENTS_ADMIN_STORE"),
    ):
        store_factory()
    with override_settings(AEVENTS_ADMIN_STORE=None, AEVENTS={"store": str(journal)}):
        assert store_factory()().path == str(journal)


def bearer(request: Request) -> bool:
    """A bearer token, for scripts, probes and operators' tools."""
    sent = request.headers.get("authorization", "").encode()
    return secrets.compare_digest(sent, f"Bearer {os.environ['OPS_TOKEN']}".encode())


def test_the_dashboard_mounts_in_front_of_djangos_asgi_app(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dashboard.mount routes /_events to the dashboard and the rest, lifespan too, to Django."""
    from aevents.contrib.dashboard import Dashboard
    from aevents.contrib.django import get_asgi_application
    from tests.test_contrib_starlette import serving

    monkeypatch.setenv("OPS_TOKEN", "t0ken")
    with override_settings(AEVENTS={"store": str(journal)}, ALLOWED_HOSTS=["app"]):
        # asgi.py
        application = Dashboard(authorize=bearer).mount(get_asgi_application(), "/_events")

        async def visit() -> tuple[int, int, str]:
            async with serving(application) as http:
                stranger = await http.get("/_events/dead-letters")
                operator = await http.get(
                    "/_events/dead-letters", headers={"authorization": "Bearer t0ken"}
                )
                login = await http.get("/admin/login/")
            return stranger.status_code, login.status_code, operator.text

        refused, django_page, page = anyio.run(visit)
    assert (refused, django_page) == (403, 200)
    assert 'Dead letters <span class="count">' in page
