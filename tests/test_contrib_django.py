"""aevents.contrib.django in-process, against a real SQLite file: commit hooks, signals, lifespan.

Django is configured once for the session. The ORM is sync, so every test
that touches the database does so on a thread (``anyio.to_thread``), which is
also where Django runs sync views; that works on every backend. Tests that go
through asgiref's ``sync_to_async`` are asyncio-only (see ``ASYNCIO_ONLY``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import django
import pytest
from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import settings
from django.db import connection, connections, models, transaction
from django.db.models.signals import post_save
from django.dispatch import Signal
from django.test.utils import override_settings

import aevents
from aevents import Event, EventRuntime, Registry
from aevents.contrib.django import (
    STATE_KEY,
    AeventsASGI,
    autodiscover,
    get_asgi_application,
    lost_events,
    mirror_signal,
    publish_on_commit,
    runtime_from_settings,
    unmirror_signal,
)

T = TypeVar("T")

ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)
"""For tests that use asgiref's ``sync_to_async``, which needs an asyncio event loop."""


class Rollback(Exception):
    """Raised inside ``transaction.atomic()`` to roll it back."""


@pytest.fixture(scope="session")
def db(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Django set up on a SQLite file, with two models whose tables exist."""
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
    meta = type("Meta", (), {"app_label": "aevents_tests"})
    note = type(
        "Note",
        (models.Model,),
        {"__module__": __name__, "Meta": meta, "title": models.CharField(max_length=100)},
    )
    other = type(
        "Other",
        (models.Model,),
        {"__module__": __name__, "Meta": meta, "title": models.CharField(max_length=100)},
    )
    with connection.schema_editor() as editor:
        editor.create_model(note)
        editor.create_model(other)
    connections.close_all()
    return SimpleNamespace(Note=note, Other=other)


async def in_thread(function: Callable[[], T]) -> T:
    """Run ORM code on a worker thread, as Django runs a sync view, and close its connection."""

    def run() -> T:
        try:
            return function()
        finally:
            connections.close_all()

    return await anyio.to_thread.run_sync(run)


def recorder(registry: Registry, pattern: str) -> list[Event]:
    """Subscribe a receiver to ``pattern`` that keeps what it is given."""
    seen: list[Event] = []

    async def keep(event: Event) -> None:
        seen.append(event)

    registry.subscribe(pattern, keep, id=f"keep:{pattern}")
    return seen


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------- importing


def test_importing_without_django_says_how_to_install_it() -> None:
    """With Django missing, the import fails with the pip command that installs it."""
    code = "import sys; sys.modules['django'] = None; import aevents.contrib.django"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "ImportError: aevents.contrib.django needs Django: pip install 'aevents[django]'" in (
        result.stderr
    )


def test_the_core_never_imports_django_or_the_contrib_package() -> None:
    """``import aevents`` and running a runtime load neither Django nor ``aevents.contrib``."""
    code = (
        "import sys, anyio, aevents\n"
        "async def main():\n"
        "    async with aevents.EventRuntime():\n"
        "        await aevents.publish('a:b')\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'django'"
        " or m.startswith('aevents.contrib')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------- publish_on_commit


@pytest.mark.anyio
async def test_publish_on_commit_publishes_only_once_the_transaction_commits(
    db: SimpleNamespace, registry: Registry
) -> None:
    """Nothing is published inside the block; the event is accepted by the time it commits."""
    seen = recorder(registry, "note:created")
    async with EventRuntime(registry) as runtime:

        def create() -> tuple[int, int]:
            with transaction.atomic():
                note = db.Note.objects.create(title="committed")
                publish_on_commit("note:created", payload={"id": note.pk})
                published_inside = runtime.stats().published
            return note.pk, published_inside

        note_id, published_inside = await in_thread(create)
        assert published_inside == 0
        assert runtime.stats().published == 1
        await runtime.drain()
    assert [event.payload for event in seen] == [{"id": note_id}]


@pytest.mark.anyio
async def test_a_rolled_back_transaction_publishes_nothing(
    db: SimpleNamespace, registry: Registry
) -> None:
    """After a rollback and a drain, only the marker published afterwards was delivered."""
    seen = recorder(registry, "note:created")
    async with EventRuntime(registry) as runtime:

        def create_then_roll_back() -> None:
            with contextlib.suppress(Rollback), transaction.atomic():
                db.Note.objects.create(title="rolled back")
                publish_on_commit("note:created", payload={"title": "rolled back"})
                raise Rollback
            publish_on_commit("note:created", payload={"title": "marker"})  # autocommit: now

        await in_thread(create_then_roll_back)
        await runtime.drain()
    assert [event.payload for event in seen] == [{"title": "marker"}]


@pytest.mark.anyio
async def test_a_rolled_back_savepoint_drops_only_its_own_events(
    db: SimpleNamespace, registry: Registry
) -> None:
    """An inner ``atomic`` that rolls back drops its event; the outer one's still commits."""
    seen = recorder(registry, "note:**")
    async with EventRuntime(registry) as runtime:

        def nested() -> None:
            with transaction.atomic():
                publish_on_commit("note:outer")
                with contextlib.suppress(Rollback), transaction.atomic():
                    db.Note.objects.create(title="inner")
                    publish_on_commit("note:inner")
                    raise Rollback

        await in_thread(nested)
        await runtime.drain()
    assert [event.name for event in seen] == ["note:outer"]


@pytest.mark.anyio
async def test_the_payload_is_copied_when_publish_on_commit_is_called(
    db: SimpleNamespace, registry: Registry
) -> None:
    """Changing the payload dict before the commit changes nothing that is published."""
    seen = recorder(registry, "note:created")
    async with EventRuntime(registry) as runtime:

        def create() -> None:
            payload: dict[str, Any] = {"title": "before", "tags": ["a"]}
            with transaction.atomic():
                db.Note.objects.create(title="copied")
                publish_on_commit("note:created", payload=payload)
                payload["title"] = "after"
                payload["tags"].append("b")

        await in_thread(create)
        await runtime.drain()
    assert [event.payload for event in seen] == [{"title": "before", "tags": ["a"]}]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "payload", "options", "error", "message"),
    [
        ("note::created", None, {}, aevents.InvalidEventNameError, "segment 1 is empty"),
        ("note:created", {"score": float("nan")}, {}, aevents.PayloadError, "payload['score']"),
        ("note:created", {1: "x"}, {}, aevents.PayloadError, "key 1 is an int, not str"),
        (
            "note:created",
            None,
            {"metadata": {"idempotency_key": "k"}},
            aevents.PayloadError,
            "metadata['idempotency_key']: is reserved",
        ),
        ("note:created", None, {"metadata": {"tenant": 7}}, aevents.PayloadError, "metadata"),
        ("note:created", None, {"key": ""}, aevents.PayloadError, "key: must be 1 to 200"),
        ("note:created", None, {"idempotency_key": 7}, aevents.PayloadError, "idempotency_key"),
    ],
)
async def test_bad_input_fails_at_the_call_and_nothing_is_published_at_commit(
    db: SimpleNamespace,
    registry: Registry,
    name: str,
    payload: Any,
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """A bad name, payload, metadata or key raises in the transaction, naming the event,
    before the commit: nothing is left to fail (and be lost) at commit time."""
    seen = recorder(registry, "**")
    async with EventRuntime(registry) as runtime:

        def create() -> None:
            with transaction.atomic():
                db.Note.objects.create(title="bad input")
                with pytest.raises(error, match=re.escape(message)) as raised:
                    publish_on_commit(name, payload=payload, **options)
                assert repr(name) in str(raised.value)

        await in_thread(create)
        await runtime.drain()
        assert runtime.stats().published == 0
    assert seen == []


@pytest.mark.anyio
async def test_keys_pass_through_and_a_retried_transaction_publishes_once(
    db: SimpleNamespace, registry: Registry
) -> None:
    """``key`` orders the committed event; ``idempotency_key`` makes a second commit of the
    same work (a retried transaction) a no-op that publishes nothing."""
    seen = recorder(registry, "note:created")
    async with EventRuntime(registry) as runtime:

        def create() -> None:
            with transaction.atomic():
                note = db.Note.objects.create(title="once")
                publish_on_commit(
                    "note:created",
                    payload={"title": note.title},
                    key="notes",
                    idempotency_key="create-note-once",
                )

        await in_thread(create)
        await in_thread(create)  # the retry commits again
        await runtime.drain()
        stats = runtime.stats()
    assert [(event.payload, event.key) for event in seen] == [({"title": "once"}, "notes")]
    assert seen[0].metadata["idempotency_key"] == "create-note-once"
    assert (stats.published, stats.repeated) == (1, 1)


@pytest.mark.anyio
async def test_a_strict_runtime_refuses_an_undeclared_name_at_the_call(
    db: SimpleNamespace, registry: Registry
) -> None:
    """Strict mode is checked when ``publish_on_commit`` is called, not at commit."""
    async with EventRuntime(registry, strict=True):

        def create() -> None:
            with transaction.atomic():
                publish_on_commit("note:never-declared")

        with pytest.raises(aevents.UnknownEventError, match="note:never-declared"):
            await in_thread(create)


def test_publish_on_commit_with_no_runtime_running_raises_at_the_call(db: SimpleNamespace) -> None:
    """There is nowhere to publish, so the caller hears it now rather than a log at commit."""
    with pytest.raises(aevents.RuntimeNotRunningError, match="note:created"):
        publish_on_commit("note:created")


@pytest.mark.anyio
async def test_publish_on_commit_on_the_event_loop_thread_says_where_to_call_it(
    registry: Registry,
) -> None:
    """Async code holds no transaction, so the error points to sync_to_async and ``publish``."""
    async with EventRuntime(registry):
        with pytest.raises(aevents.AeventsError, match="sync_to_async") as raised:
            publish_on_commit("note:created")
    assert "await aevents.publish" in str(raised.value)


@pytest.mark.anyio
async def test_an_event_committed_after_the_runtime_stopped_is_logged_with_the_count(
    db: SimpleNamespace, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit still succeeds; the lost event is one ERROR record and one more in the count."""
    registered, runtime_stopped = threading.Event(), threading.Event()
    committed: list[int] = []

    def commit_late() -> None:
        try:
            with transaction.atomic():
                note = db.Note.objects.create(title="late")
                publish_on_commit("note:late", payload={"id": note.pk})
                registered.set()
                runtime_stopped.wait(10)
            committed.append(note.pk)
        finally:
            connections.close_all()

    lost_before = lost_events()
    thread = threading.Thread(target=contextvars.copy_context().run, args=(commit_late,))
    async with EventRuntime(registry):
        thread.start()
        assert await anyio.to_thread.run_sync(registered.wait, 10)
    runtime_stopped.set()
    await anyio.to_thread.run_sync(thread.join, 10)

    assert lost_events() == lost_before + 1
    assert len(committed) == 1
    assert await in_thread(lambda: db.Note.objects.filter(pk=committed[0]).exists())
    [record] = [r for r in caplog.records if r.name == "aevents.contrib.django"]
    assert record.levelno == logging.ERROR
    assert "'note:late' was not published: RuntimeClosedError" in record.getMessage()
    lost = f"{lost_before + 1} event" + ("s" if lost_before else "")
    assert f"({lost} lost in this process so far)" in record.getMessage()


@pytest.mark.anyio
async def test_a_publish_failing_at_commit_is_logged_and_the_later_events_still_go_out(
    db: SimpleNamespace, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises at commit costs its own event only, logged with the traceback."""

    class RefuseFirst(aevents.Middleware):
        def before_publish(self, publishing: Any) -> None:
            if publishing.name == "note:first":
                raise LookupError("no tenant for this event")

    seen = recorder(registry, "note:**")
    async with EventRuntime(registry, middleware=[RefuseFirst()]) as runtime:

        def create() -> None:
            with transaction.atomic():
                publish_on_commit("note:first")
                publish_on_commit("note:second")

        await in_thread(create)
        await runtime.drain()
    assert [event.name for event in seen] == ["note:second"]
    [record] = [r for r in caplog.records if r.name == "aevents.contrib.django"]
    assert "'note:first' was not published: LookupError: no tenant" in record.getMessage()
    assert record.exc_info is not None


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_an_async_view_commits_and_publishes_through_sync_to_async(
    db: SimpleNamespace, registry: Registry
) -> None:
    """The async-view pattern: the transaction, and publish_on_commit, in sync_to_async."""
    seen = recorder(registry, "note:created")

    def save(title: str) -> int:
        with transaction.atomic():
            note = db.Note.objects.create(title=title)
            publish_on_commit("note:created", payload={"id": note.pk})
        note_id: int = note.pk
        return note_id

    async with EventRuntime(registry) as runtime:
        note_id = await sync_to_async(save)("from async code")
        await runtime.drain()
    assert [event.payload for event in seen] == [{"id": note_id}]


@ASYNCIO_ONLY
@pytest.mark.anyio
async def test_sync_code_called_from_async_code_must_go_through_sync_to_async(
    registry: Registry,
) -> None:
    """On the loop's thread publish_threadsafe refuses; in sync_to_async's thread it publishes."""
    seen = recorder(registry, "comment:posted")

    def sync_helper() -> Event:
        return aevents.publish_threadsafe("comment:posted")

    async with EventRuntime(registry) as runtime:
        with pytest.raises(aevents.AeventsError, match="event loop's thread"):
            sync_helper()
        event = await sync_to_async(sync_helper)()
        await runtime.drain()
    assert seen == [event]


# ---------------------------------------------------------------------- mirror_signal


@pytest.fixture
def mirrors() -> Iterator[list[tuple[Any, str, object]]]:
    """Mirrors a test makes, as (signal, name, sender): disconnected afterwards."""
    made: list[tuple[Any, str, object]] = []
    yield made
    for signal, name, sender in made:
        unmirror_signal(signal, name=name, sender=sender)


def note_saved(instance: Any, created: bool, **signal: Any) -> dict[str, Any]:
    return {"id": instance.pk, "title": instance.title, "created": created}


@pytest.mark.anyio
async def test_post_save_is_mirrored_into_an_event_after_commit(
    db: SimpleNamespace, registry: Registry, mirrors: list[tuple[Any, str, object]]
) -> None:
    """Creating then updating a row publishes the event twice, with the builder's payload."""
    name = unique("note:saved")
    mirror_signal(post_save, sender=db.Note, name=name, payload=note_saved)
    mirrors.append((post_save, name, db.Note))
    seen = recorder(registry, name)
    async with EventRuntime(registry) as runtime:

        def create_and_update() -> tuple[int, int]:
            with transaction.atomic():
                note = db.Note.objects.create(title="first")
                published_inside = runtime.stats().published
            note.title = "second"
            note.save()
            return note.pk, published_inside

        note_id, published_inside = await in_thread(create_and_update)
        await runtime.drain()
    assert published_inside == 0
    assert [event.payload for event in seen] == [
        {"id": note_id, "title": "first", "created": True},
        {"id": note_id, "title": "second", "created": False},
    ]


@pytest.mark.anyio
async def test_a_rolled_back_save_mirrors_nothing(
    db: SimpleNamespace, registry: Registry, mirrors: list[tuple[Any, str, object]]
) -> None:
    """After the rollback and a drain, only the save that committed afterwards was mirrored."""
    name = unique("note:saved")
    mirror_signal(post_save, sender=db.Note, name=name, payload=note_saved)
    mirrors.append((post_save, name, db.Note))
    seen = recorder(registry, name)
    async with EventRuntime(registry) as runtime:

        def save_twice() -> None:
            with contextlib.suppress(Rollback), transaction.atomic():
                db.Note.objects.create(title="rolled back")
                raise Rollback
            db.Note.objects.create(title="marker")

        await in_thread(save_twice)
        await runtime.drain()
    assert [event.payload["title"] for event in seen] == ["marker"]


@pytest.mark.anyio
async def test_mirroring_twice_publishes_one_event_per_save(
    db: SimpleNamespace, registry: Registry, mirrors: list[tuple[Any, str, object]]
) -> None:
    """The same (signal, sender, name) mirrored again, as a second ready() would, adds nothing."""
    name = unique("note:saved")
    first = mirror_signal(post_save, sender=db.Note, name=name, payload=note_saved)
    again = mirror_signal(post_save, sender=db.Note, name=name, payload=note_saved)
    mirrors.append((post_save, name, db.Note))
    seen = recorder(registry, name)
    async with EventRuntime(registry) as runtime:
        await in_thread(lambda: db.Note.objects.create(title="once"))
        await runtime.drain()
    assert first == again == f"aevents:{name}"
    assert len(seen) == 1


@pytest.mark.anyio
async def test_a_mirror_sees_only_its_sender_and_skips_when_the_builder_returns_none(
    db: SimpleNamespace, registry: Registry, mirrors: list[tuple[Any, str, object]]
) -> None:
    """Saving another model publishes nothing; a ``None`` payload publishes nothing."""
    name = unique("note:saved")

    def only_kept(instance: Any, **signal: Any) -> dict[str, Any] | None:
        return {"title": instance.title} if instance.title.startswith("keep") else None

    mirror_signal(post_save, sender=db.Note, name=name, payload=only_kept)
    mirrors.append((post_save, name, db.Note))
    seen = recorder(registry, name)
    async with EventRuntime(registry) as runtime:

        def save_some() -> None:
            db.Other.objects.create(title="keep, but another model")
            db.Note.objects.create(title="skip me")
            db.Note.objects.create(title="keep me")

        await in_thread(save_some)
        await runtime.drain()
    assert [event.payload for event in seen] == [{"title": "keep me"}]


@pytest.mark.anyio
async def test_unmirror_signal_disconnects_the_mirror(
    db: SimpleNamespace, registry: Registry
) -> None:
    """Once unmirrored, saves publish nothing, and a second unmirror reports nothing to undo."""
    name = unique("note:saved")
    mirror_signal(post_save, sender=db.Note, name=name, payload=note_saved)
    assert unmirror_signal(post_save, sender=db.Note, name=name)
    assert not unmirror_signal(post_save, sender=db.Note, name=name)
    seen = recorder(registry, name)
    async with EventRuntime(registry) as runtime:
        await in_thread(lambda: db.Note.objects.create(title="unmirrored"))
        await runtime.drain()
    assert seen == []


@pytest.mark.anyio
async def test_a_signal_mirrored_without_on_commit_publishes_at_once(
    db: SimpleNamespace, registry: Registry, mirrors: list[tuple[Any, str, object]]
) -> None:
    """``on_commit=False`` publishes when the signal is sent, even in a rolled back transaction."""
    signal = Signal()
    name = unique("cache:cleared")
    mirror_signal(signal, name=name, payload=lambda key, **signal: {"key": key}, on_commit=False)
    mirrors.append((signal, name, None))
    seen = recorder(registry, name)
    async with EventRuntime(registry) as runtime:

        def send_in_rolled_back_transaction() -> None:
            with contextlib.suppress(Rollback), transaction.atomic():
                signal.send(sender=None, key="home")
                raise Rollback

        await in_thread(send_in_rolled_back_transaction)
        await runtime.drain()
    assert [event.payload for event in seen] == [{"key": "home"}]


@pytest.mark.anyio
async def test_a_mirror_with_a_key_orders_each_rows_events(
    db: SimpleNamespace, registry: Registry, mirrors: list[tuple[Any, str, object]]
) -> None:
    """``key=`` builds the ordering key from the signal's arguments; a bad key raises from
    the save, inside its transaction, which then rolls back and publishes nothing."""
    name = unique("note:saved")
    mirror_signal(
        post_save,
        sender=db.Note,
        name=name,
        payload=note_saved,
        key=lambda instance, **signal: f"note-{instance.pk}" if instance.title else "",
    )
    mirrors.append((post_save, name, db.Note))
    seen = recorder(registry, name)
    async with EventRuntime(registry) as runtime:

        def save() -> tuple[int, int]:
            with transaction.atomic():
                note = db.Note.objects.create(title="keyed")
            note.title = "keyed again"
            note.save()
            with (
                pytest.raises(aevents.PayloadError, match="key: must be 1 to 200"),
                transaction.atomic(),
            ):
                db.Note.objects.create(title="")  # the key builder returns ""
            return int(note.pk), db.Note.objects.filter(title="").count()

        note_id, untitled = await in_thread(save)
        await runtime.drain()
    assert [(event.payload["title"], event.key) for event in seen] == [
        ("keyed", f"note-{note_id}"),
        ("keyed again", f"note-{note_id}"),
    ]
    assert untitled == 0  # the bad key rolled its save back


def test_a_mirrored_save_with_no_runtime_running_saves_and_logs_the_lost_event(
    db: SimpleNamespace, mirrors: list[tuple[Any, str, object]], caplog: pytest.LogCaptureFixture
) -> None:
    """A management command or shell saving a row is not broken, and the loss is an ERROR."""
    name = unique("note:saved")
    mirror_signal(post_save, sender=db.Note, name=name, payload=note_saved)
    mirrors.append((post_save, name, db.Note))
    lost_before = lost_events()
    try:
        note = db.Note.objects.create(title="no runtime")
        assert db.Note.objects.filter(pk=note.pk).exists()
    finally:
        connections.close_all()
    assert lost_events() == lost_before + 1
    [record] = [r for r in caplog.records if r.name == "aevents.contrib.django"]
    assert record.levelno == logging.ERROR
    assert f"event {name!r} was not published: cannot publish" in record.getMessage()


def test_mirror_signal_refuses_a_bad_name_or_payload_builder() -> None:
    """A bad name or a payload that is not callable fails when the mirror is made."""
    with pytest.raises(aevents.InvalidEventNameError):
        mirror_signal(post_save, name="note saved", payload=note_saved)
    with pytest.raises(aevents.ConfigurationError, match="payload must be a callable"):
        mirror_signal(post_save, name="note:saved", payload={"id": 1})  # type: ignore[arg-type]
    with pytest.raises(aevents.ConfigurationError, match="key must be a callable or None"):
        mirror_signal(post_save, name="note:saved", payload=note_saved, key="k")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- autodiscovery


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write an importable app package with the given ``events.py`` (or none, for ``""``)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(events_source: str) -> str:
        package = unique("shop").replace("-", "_")
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("RUNS = []\n")
        if events_source:
            (tmp_path / package / "events.py").write_text(events_source)
        made.append(package)
        return package

    yield make
    for name in list(sys.modules):
        if name.partition(".")[0] in made:
            del sys.modules[name]


EVENTS_SOURCE = """
import aevents
from . import RUNS

RUNS.append(1)
SHOP = aevents.Catalog({"ORDER_PLACED": "shop:order:placed"})


@aevents.subscribe(SHOP.ORDER_PLACED)
def on_order_placed(event: aevents.Event) -> None:
    RUNS.append(dict(event.payload))
"""


@pytest.mark.anyio
async def test_ready_imports_each_apps_events_module_once_even_when_run_twice(
    db: SimpleNamespace, make_app: Callable[[str], str]
) -> None:
    """Installing the app runs ready(); running it again neither re-imports nor re-subscribes."""
    package = make_app(EVENTS_SOURCE)
    without_events = make_app("")
    with override_settings(INSTALLED_APPS=["aevents.contrib.django", package, without_events]):
        apps.get_app_config("aevents").ready()
        runs = sys.modules[package].RUNS
        subscribed = [
            subscription.receiver_id
            for subscription in aevents.default_registry.subscriptions()
            if subscription.receiver_id.startswith(package)
        ]
        assert runs == [1]
        assert subscribed == [f"{package}.events:on_order_placed"]
        async with EventRuntime() as runtime:
            await aevents.publish("shop:order:placed", payload={"order": 7})
            await runtime.drain()
        assert runs == [1, {"order": 7}]


def test_a_failing_events_module_raises_and_takes_back_its_subscriptions(
    db: SimpleNamespace, make_app: Callable[[str], str]
) -> None:
    """The import error surfaces; once fixed, autodiscover imports it without duplicate ids."""
    package = make_app("")
    with override_settings(INSTALLED_APPS=["aevents.contrib.django", package]):
        module_path = Path(sys.modules[package].__file__ or "").with_name("events.py")
        module_path.write_text(EVENTS_SOURCE + "\nraise RuntimeError('half-way through')\n")
        importlib.invalidate_caches()
        with pytest.raises(RuntimeError, match="half-way through"):
            autodiscover()
        assert not any(
            subscription.receiver_id.startswith(package)
            for subscription in aevents.default_registry.subscriptions()
        )
        module_path.write_text(EVENTS_SOURCE + "\n# fixed, and a different size\n")
        importlib.invalidate_caches()
        assert autodiscover() == [f"{package}.events"]
    assert aevents.default_registry.receiver(f"{package}.events:on_order_placed") is not None


# ---------------------------------------------------------------------- the ASGI wrapper


class Lifespan:
    """Drives an app's ASGI lifespan as a server does, one message at a time."""

    def __init__(self, app: AeventsASGI) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[dict[str, Any]](1)
        self._to_server, self._server_inbox = anyio.create_memory_object_stream[dict[str, Any]](1)

    async def run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}

        async def send(message: MutableMapping[str, Any]) -> None:
            await self._to_server.send(dict(message))

        async with self._to_server:
            await self.app(scope, self._app_inbox.receive, send)

    async def send(self, message_type: str) -> dict[str, Any]:
        await self._to_app.send({"type": message_type})
        with anyio.fail_after(10):
            return await self._server_inbox.receive()

    async def aclose(self) -> None:
        for stream in (self._to_app, self._app_inbox, self._server_inbox):
            await stream.aclose()


@contextlib.asynccontextmanager
async def lifespan_of(app: AeventsASGI) -> AsyncIterator[Lifespan]:
    lifespan = Lifespan(app)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lifespan.run)
            yield lifespan
    finally:
        await lifespan.aclose()


@pytest.mark.anyio
async def test_the_wrapper_runs_a_runtime_from_startup_to_a_drained_shutdown(
    registry: Registry,
) -> None:
    """Between startup and shutdown module-level publish works; shutdown waits for receivers."""
    release = anyio.Event()
    finished: list[Event] = []

    async def slow(event: Event) -> None:
        await release.wait()
        finished.append(event)

    registry.subscribe("report:requested", slow)
    app = AeventsASGI(app=None, runtime_factory=functools.partial(EventRuntime, registry))  # type: ignore[arg-type]
    async with lifespan_of(app) as lifespan:
        assert await lifespan.send("lifespan.startup") == {"type": "lifespan.startup.complete"}
        assert app.runtime is not None
        assert app.runtime.running
        assert lifespan.state[STATE_KEY] is app.runtime
        event = await aevents.publish("report:requested")

        async with anyio.create_task_group() as tasks:
            replies: list[dict[str, Any]] = []

            async def shut_down() -> None:
                replies.append(await lifespan.send("lifespan.shutdown"))

            tasks.start_soon(shut_down)
            await anyio.wait_all_tasks_blocked()
            assert replies == []  # still draining: the receiver has not finished
            release.set()
        assert replies == [{"type": "lifespan.shutdown.complete"}]
    assert finished == [event]
    assert app.runtime is None


@pytest.mark.anyio
async def test_bad_settings_are_reported_as_a_failed_startup(db: SimpleNamespace) -> None:
    """An unknown ``AEVENTS`` option fails the startup with a message naming it; nothing raises."""
    app = AeventsASGI(app=None)  # type: ignore[arg-type]
    with override_settings(AEVENTS={"wrokers": 2}):
        async with lifespan_of(app) as lifespan:
            reply = await lifespan.send("lifespan.startup")
    assert reply["type"] == "lifespan.startup.failed"
    assert "ConfigurationError: settings.AEVENTS: unknown option 'wrokers'" in reply["message"]
    assert app.runtime is None


@pytest.mark.anyio
async def test_a_runtime_failing_to_stop_is_reported_as_a_failed_shutdown(
    registry: Registry,
) -> None:
    """A journal that cannot close makes the shutdown fail with its message."""

    class UnclosableStore(aevents.MemoryStore):
        async def close(self) -> None:
            raise aevents.StoreError("memory", "the disk went away")

    app = AeventsASGI(
        app=None,  # type: ignore[arg-type]
        runtime_factory=lambda: EventRuntime(registry, store=UnclosableStore()),
    )
    async with lifespan_of(app) as lifespan:
        assert (await lifespan.send("lifespan.startup"))["type"] == "lifespan.startup.complete"
        reply = await lifespan.send("lifespan.shutdown")
    assert reply["type"] == "lifespan.shutdown.failed"
    assert "StoreError: journal 'memory': the disk went away" in reply["message"]


@pytest.mark.anyio
async def test_other_scopes_go_to_the_wrapped_app_untouched() -> None:
    """An HTTP scope, its receive and its send reach the wrapped app as they are."""
    calls: list[tuple[Any, ...]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "http", "path": "/"}
    await AeventsASGI(inner)(scope, receive, send)
    assert calls == [(scope, receive, send)]


@pytest.mark.anyio
async def test_each_wrapped_app_publishes_to_its_own_runtime(registry: Registry) -> None:
    """Two wrapped apps in one process: a request to each reaches that app's runtime, from
    its task (``aevents.publish``) and from a worker thread (``publish_threadsafe``)."""
    seen: dict[str, list[str]] = {"first": [], "second": []}

    def app_named(label: str) -> AeventsASGI:
        own = Registry()

        async def record(event: Event) -> None:
            seen[label].append(event.payload["via"])

        own.subscribe("page:viewed", record)

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            await aevents.publish("page:viewed", payload={"via": "task"})
            await anyio.to_thread.run_sync(
                lambda: aevents.publish_threadsafe("page:viewed", payload={"via": "thread"})
            )

        return AeventsASGI(inner, runtime_factory=functools.partial(EventRuntime, own))

    first, second = app_named("first"), app_named("second")

    async def nothing() -> dict[str, Any]:
        return {"type": "http.request"}

    async def ignore(message: Any) -> None:
        pass

    async with lifespan_of(first) as one, lifespan_of(second) as two:
        assert (await one.send("lifespan.startup"))["type"] == "lifespan.startup.complete"
        assert (await two.send("lifespan.startup"))["type"] == "lifespan.startup.complete"
        await first({"type": "http", "path": "/"}, nothing, ignore)
        await second({"type": "http", "path": "/"}, nothing, ignore)
        await second({"type": "http", "path": "/"}, nothing, ignore)
        await one.send("lifespan.shutdown")
        await two.send("lifespan.shutdown")
    assert seen == {"first": ["task", "thread"], "second": ["task", "thread"] * 2}


def test_the_wrapper_wants_a_runtime_factory_not_a_runtime() -> None:
    """A runtime starts once, so passing one (rather than a way to make one) is refused."""
    with pytest.raises(aevents.ConfigurationError, match=r"functools\.partial"):
        AeventsASGI(app=None, runtime_factory=EventRuntime())  # type: ignore[arg-type]


def test_runtime_from_settings_reads_the_aevents_setting(
    db: SimpleNamespace, tmp_path: Path
) -> None:
    """Options become EventRuntime arguments, and a store path becomes a SQLiteStore."""
    journal = tmp_path / "events.journal"
    with override_settings(AEVENTS={"workers": 3, "strict": True, "store": journal}):
        runtime = runtime_from_settings()
    assert (runtime.workers, runtime.strict) == (3, True)
    assert isinstance(runtime.store, aevents.SQLiteStore)
    assert runtime.store.path == str(journal)
    with override_settings(AEVENTS=None):
        assert runtime_from_settings().workers == EventRuntime().workers


def test_get_asgi_application_wraps_djangos_handler(db: SimpleNamespace) -> None:
    """The ``asgi.py`` one-liner gives Django's ASGI handler inside the lifespan wrapper."""
    from django.core.handlers.asgi import ASGIHandler

    application = get_asgi_application()
    assert isinstance(application, AeventsASGI)
    assert isinstance(application.app, ASGIHandler)
