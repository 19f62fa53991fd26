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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import attrs
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
from tests.dashboard_stores import StoreFactory, make_store, remove_store
from tests.pg import schema_for

HOSTILE = "<script>alert('owned')</script>"
ADMIN = "/admin/aevents_admin/deadletter/"
DELIVERIES = "/admin/aevents_admin/delivery/"


def _fill(journal: Path | StoreFactory) -> None:
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
        store = SQLiteStore(journal) if isinstance(journal, Path) else journal()
        async with EventRuntime(registry, store=store) as runtime:
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


def letters(journal: Path | StoreFactory) -> list[aevents.DeadLetter]:
    async def read() -> list[aevents.DeadLetter]:
        store = SQLiteStore(journal) if isinstance(journal, Path) else journal()
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


# -- on PostgreSQL and Redis ---------------------------------------------------------------

SECRET = "hunter2-admin"


@attrs.frozen
class Shared:
    """A shared store holding the three dead letters, and what the admin is set to read."""

    kind: str
    stores: StoreFactory


def postgres_database(dsn: str) -> dict[str, str]:
    """A Django ``DATABASES`` entry for the test server (which takes any password)."""
    parts = urlsplit(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": SECRET,
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


@pytest.fixture(params=["postgres", "redis"])
def shared(request: pytest.FixtureRequest, journal: Path, tmp_path: Path) -> Iterator[Shared]:
    """The admin on a PostgresStore, set as ``AEVENTS["store"] = {"postgres": alias}``, or
    on a RedisStore, set as a callable in ``AEVENTS_ADMIN_STORE``; with a password."""
    kind: str = request.param
    if kind == "postgres":
        server = str(request.getfixturevalue("postgres_dsn"))
        database = postgres_database(server)
        stores = make_store(kind, tmp_path, server)
        values: dict[str, Any] = {
            "DATABASES": {**settings.DATABASES, "events": database},
            "AEVENTS_ADMIN_STORE": None,
            "AEVENTS": {"store": {"postgres": "events", "schema": schema_for(tmp_path)}},
        }
    else:
        server = str(request.getfixturevalue("redis_url"))
        stores = make_store(kind, tmp_path, server.replace("://", f"://:{SECRET}@", 1))
        values = {"AEVENTS_ADMIN_STORE": stores}
    _fill(stores)
    overridden = override_settings(**values)
    with warnings.catch_warnings():
        # Django warns that overriding DATABASES may surprise: only an alias is added,
        # which no Django connection uses; the admin reads its settings to connect.
        warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)
        overridden.enable()
    try:
        yield Shared(kind, stores)
    finally:
        overridden.disable()
        remove_store(kind, tmp_path, server, stores)


def test_on_a_shared_store_dead_letters_are_listed_filtered_and_shown(shared: Shared) -> None:
    """PostgreSQL and Redis: the list, a filter, the escaped detail; no password shown."""
    viewer = client("viewer")
    listing = viewer.get(ADMIN).content.decode()
    assert "3 of 3 dead letters" in listing
    assert "1 of 3 dead letters" in viewer.get(ADMIN, {"receiver": "mail"}).content.decode()
    letter = next(letter for letter in letters(shared.stores) if letter.receiver_id == "charge")
    detail = viewer.get(f"{ADMIN}{letter.id}/").content.decode()
    assert "<script>" not in listing + detail
    assert "&lt;script&gt;" in detail
    deliveries = viewer.get(DELIVERIES).content.decode()
    assert ("PostgresStore(" if shared.kind == "postgres" else "RedisStore(") in deliveries
    for page in (listing, detail, deliveries):
        assert SECRET not in page


def test_on_a_shared_store_actions_follow_permissions_and_change_it(shared: Shared) -> None:
    """PostgreSQL and Redis: a fixer redelivers but may not discard, root discards; the
    redelivered delivery is pending again, listed one by one where the store can."""
    mail_letter, charge_letter, kept = sorted(
        letters(shared.stores), key=lambda letter: letter.receiver_id != "mail"
    )
    fixer = client("fixer")
    form = {"action": "discard", "confirmed": "yes", "ids": [charge_letter.id]}
    assert fixer.post(f"{ADMIN}act/", form).status_code == 403
    confirm = fixer.post(f"{ADMIN}act/", {"action": "redeliver:matching", "receiver": "mail"})
    assert ids(confirm.content.decode()) == [mail_letter.id]
    done = fixer.post(
        f"{ADMIN}act/",
        {"action": "redeliver", "confirmed": "yes", "ids": [mail_letter.id]},
        follow=True,
    )
    assert "1 of 1 dead letters redelivered." in done.content.decode()
    discarded = client("root").post(f"{ADMIN}act/", form, follow=True)
    assert "1 of 1 dead letters discarded." in discarded.content.decode()
    assert [letter.id for letter in letters(shared.stores)] == [kept.id]
    page = client("viewer").get(DELIVERIES).content.decode()
    assert re.search(r"<tr><td>mail</td><td>1</td>", page)  # the backlog: 1 ready
    assert re.search(r"<td>shop:order:placed</td><td>[^<]+</td><td>mail</td><td>0</td>", page)


def test_a_store_the_admin_cannot_remake_asks_for_a_callable(journal: Path) -> None:
    """A RedisStore object in the settings: the error says to give a callable, and shows
    no password; a redis:// URL is remade for each page; another scheme is refused."""
    from aevents.contrib.django.events_admin._stores import store_factory

    url = f"redis://:{SECRET}@127.0.0.1:6379/0"
    with (
        override_settings(AEVENTS_ADMIN_STORE=None, AEVENTS={"store": aevents.RedisStore(url)}),
        pytest.raises(ConfigurationError, match="a callable that returns") as raised,
    ):
        store_factory()
    assert SECRET not in str(raised.value)
    with override_settings(AEVENTS_ADMIN_STORE=None, AEVENTS={"store": url}):
        made = store_factory()()
    assert isinstance(made, aevents.RedisStore)
    assert SECRET not in repr(made)
    with (
        override_settings(AEVENTS_ADMIN_STORE=None, AEVENTS={"store": "mongodb://x"}),
        pytest.raises(ConfigurationError, match="cannot make a store"),
    ):
        store_factory()
    from aevents.contrib.django._outbox import store_from_setting

    with pytest.raises(ConfigurationError, match="scheme 'mongodb'"):
        store_from_setting("mongodb://x")  # never an SQLite file of that name


class _WithoutPending(SQLiteStore):
    """A store the admin finds no ``pending()`` on, as a third-party ``LeasedStore`` may be."""

    @property
    def pending(self) -> Any:
        raise AttributeError("pending")


def test_a_store_without_pending_says_its_pending_deliveries_are_not_listed(
    journal: Path,
) -> None:
    """The deliveries page of a store with no ``pending()`` shows the backlog and says so."""
    with override_settings(AEVENTS_ADMIN_STORE=lambda: _WithoutPending(journal)):
        page = client("viewer").get(DELIVERIES).content.decode()
    assert "does not list pending deliveries one by one" in page
    assert 'id="pending"' not in page
    assert "<h2>Pending deliveries</h2>" in page
