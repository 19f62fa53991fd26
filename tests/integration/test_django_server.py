"""The example Django project (examples/django_project) under a real uvicorn, called over HTTP.

Each server gets a fresh state directory: ``manage.py migrate`` creates its
SQLite database there, and the runtime keeps its journal there. The receivers
in ``blog/events.py`` write one row per (event, receiver); the tests read those
rows back through ``/events/`` (or straight from the SQLite file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_project"
STOPPED_CLEANLY = (0, -signal.SIGTERM)  # uvicorn 0.29+ re-raises SIGTERM once it has shut down
Row = dict[str, Any]


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    log: Path

    def rows(self, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
        """Query the server's SQLite database directly (read-only)."""
        database = self.state_dir / "blog.sqlite3"
        with contextlib.closing(
            sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=20)
        ) as connection:
            return connection.execute(sql, parameters).fetchall()


def _env(state_dir: Path) -> dict[str, str]:
    env = {**os.environ, "BLOG_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def _migrate(state_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=PROJECT,
        env=_env(state_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (state_dir / "blog.sqlite3").is_file()


def _uvicorn_command(loop: str = "asyncio", app: str = "mysite.asgi:application") -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-access-log",
        "--loop",
        loop,
    ]


def _wait_for(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def _serve(
    state_dir: Path, loop: str, app: str = "mysite.asgi:application", log_name: str = "server.log"
) -> Iterator[Server]:
    """Run the example's ``app`` under uvicorn on ``loop`` until the block ends, then SIGTERM it."""
    log = state_dir / log_name
    with log.open("wb") as output:
        process = subprocess.Popen(
            _uvicorn_command(loop, app),
            cwd=PROJECT,
            env=_env(state_dir),
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    def started() -> re.Match[str] | None:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        return re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())

    try:
        found = _wait_for(started, "the server to start")
        yield Server(process, found.group(1), state_dir, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


LOOPS = ["asyncio", "uvloop"]


@contextlib.contextmanager
def _serve_then_stop_cleanly(
    tmp_path_factory: pytest.TempPathFactory, loop: str, app: str
) -> Iterator[Server]:
    """A migrated state directory and a server on it, which must stop cleanly at the end."""
    state_dir = tmp_path_factory.mktemp("django-server")
    _migrate(state_dir)
    with _serve(state_dir, loop, app) as running:
        yield running
        running.process.send_signal(signal.SIGTERM)
        returncode = running.process.wait(timeout=30)
        log = running.log.read_text()
        assert returncode in STOPPED_CLEANLY, log
        assert "Traceback" not in log
        assert "ERROR" not in log


@pytest.fixture(scope="module", params=LOOPS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per event loop for the tests that only call it; it must stop cleanly too."""
    with _serve_then_stop_cleanly(
        tmp_path_factory, request.param, "mysite.asgi:application"
    ) as running:
        yield running


@pytest.fixture(scope="module", params=LOOPS)
def channels_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The Channels flavour (``mysite.asgi_channels``): HTTP and WebSockets."""
    app = "mysite.asgi_channels:application"
    with _serve_then_stop_cleanly(tmp_path_factory, request.param, app) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20) as http:
        yield http


def _received(client: httpx.Client) -> list[Row]:
    response = client.get("/events/")
    assert response.status_code == 200
    rows: list[Row] = response.json()["received"]
    return rows


def _wait_for_rows(client: httpx.Client, match: Callable[[Row], bool], count: int) -> list[Row]:
    """Poll ``/events/`` until ``count`` rows match; return them."""

    def matching() -> list[Row]:
        rows = [row for row in _received(client) if match(row)]
        return rows if len(rows) >= count else []

    rows: list[Row] = _wait_for(matching, f"{count} matching rows from the receivers")
    return rows


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize(
    ("path", "via"), [("/comments/async/", "async view"), ("/comments/sync/", "sync view")]
)
def test_a_view_publishes_and_the_receiver_sees_the_event(
    client: httpx.Client, path: str, via: str
) -> None:
    """``await aevents.publish`` (async view) and ``publish_threadsafe`` (sync view) deliver."""
    text = _unique("comment")
    response = client.post(path, data={"text": text})
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    [row] = _wait_for_rows(client, lambda row: row["event_id"] == event_id, 1)
    assert row == {
        "event_id": event_id,
        "receiver": "record",
        "name": "blog:comment:posted",
        "payload": {"text": text, "via": via},
    }


@pytest.mark.parametrize(
    ("path", "via"), [("/ws/comments/", "async consumer"), ("/ws/comments/sync/", "sync consumer")]
)
def test_a_websocket_consumer_publishes_and_the_receiver_sees_the_event(
    channels_server: Server, path: str, via: str
) -> None:
    """Under Channels' router, ``aevents.publish`` (async consumer) and ``publish_threadsafe``
    (sync consumer) deliver, and plain HTTP views still reach the same runtime."""
    text = _unique("ws")
    url = channels_server.url.replace("http://", "ws://", 1) + path
    with websockets.sync.client.connect(url, open_timeout=20) as socket:
        socket.send(json.dumps({"text": text}))
        event_id = json.loads(socket.recv(timeout=20))["event_id"]
    with httpx.Client(base_url=channels_server.url, timeout=20) as client:
        [row] = _wait_for_rows(client, lambda row: row["event_id"] == event_id, 1)
        assert row == {
            "event_id": event_id,
            "receiver": "record",
            "name": "blog:comment:posted",
            "payload": {"text": text, "via": via},
        }
        response = client.post("/comments/async/", data={"text": text})
        assert response.status_code == 202, response.text
        http_id = response.json()["event_id"]
        _wait_for_rows(client, lambda row: row["event_id"] == http_id, 1)


@pytest.mark.parametrize("path", ["/articles/", "/articles/async/"])
def test_a_committed_article_publishes_its_events_once_each(
    client: httpx.Client, server: Server, path: str
) -> None:
    """The mirrored post_save and the on-commit event reach every receiver, exactly once."""
    title = _unique("article")
    response = client.post(path, data={"title": title})
    assert response.status_code == 201, response.text
    article_id = response.json()["id"]
    _wait_for_rows(client, lambda row: row["payload"].get("title") == title, 3)
    drained = client.post("/events/drain/").json()["received"]
    rows = sorted(
        (row["name"], row["receiver"], row["payload"])
        for row in drained
        if row["payload"].get("title") == title
    )
    assert rows == [
        ("blog:article:published", "notify_subscribers", {"id": article_id, "title": title}),
        ("blog:article:published", "record", {"id": article_id, "title": title}),
        ("blog:article:saved", "record", {"id": article_id, "title": title, "created": True}),
    ]
    assert server.rows("SELECT id FROM blog_article WHERE title = ?", title) == [(article_id,)]


@pytest.mark.parametrize("path", ["/articles/", "/articles/async/"])
def test_a_rolled_back_article_publishes_nothing(
    client: httpx.Client, server: Server, path: str
) -> None:
    """After the rollback, a marker event and a drain: the marker arrived, the article's did not."""
    title = _unique("rejected")
    response = client.post(path, data={"title": title, "reject": "yes"})
    assert response.status_code == 409, response.text
    marker = client.post("/comments/sync/", data={"text": f"after {title}"}).json()["event_id"]
    response = client.post("/events/drain/")  # returns once everything accepted so far is done
    assert response.status_code == 200
    drained: list[Row] = response.json()["received"]
    assert [row["event_id"] for row in drained if row["event_id"] == marker] == [marker]
    assert [row for row in drained if row["payload"].get("title") == title] == []
    assert server.rows("SELECT id FROM blog_article WHERE title = ?", title) == []


def test_a_second_server_on_the_same_journal_shares_it(server: Server) -> None:
    """A second server on the same state directory opens the same journal beside the first
    (as ``uvicorn --workers 2`` would): what it publishes is delivered once, by either."""
    with _serve(server.state_dir, "asyncio", log_name="second.log") as second:
        with httpx.Client(base_url=second.url, timeout=20) as http:
            text = _unique("second")
            response = http.post("/comments/async/", data={"text": text})
            assert response.status_code == 202, response.text
            event_id = response.json()["event_id"]
            [row] = _wait_for_rows(http, lambda row: row["event_id"] == event_id, 1)
            assert row["payload"] == {"text": text, "via": "async view"}
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=30) in STOPPED_CLEANLY, second.log.read_text()
    assert server.process.poll() is None  # the first server is unaffected


@pytest.mark.parametrize("loop", LOOPS)
def test_stopping_the_server_drains_the_deliveries_still_running(tmp_path: Path, loop: str) -> None:
    """SIGTERM while slow receivers run: the server stops cleanly once the running ones have
    finished, and hands the ones it had not started back to the journal, where the next
    server runs them: every report is built exactly once."""
    _migrate(tmp_path)
    reports = 12  # 0.2 s each on 4 workers: still running when the signal arrives
    query = "SELECT count(*) FROM blog_received WHERE receiver = 'build_report'"
    with _serve(tmp_path, loop) as server:
        with httpx.Client(base_url=server.url, timeout=20) as http:
            response = http.post("/reports/", data={"count": str(reports)})
        assert response.status_code == 202, response.text
        [(done_at_signal,)] = server.rows(query)
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=30)
    log = server.log.read_text()
    assert done_at_signal < reports, "all reports finished before the signal: nothing to drain"
    assert returncode in STOPPED_CLEANLY, log
    assert "Application shutdown complete." in log
    assert "not run" not in log  # the runtime's warning when shutdown drops deliveries
    with _serve(tmp_path, loop, log_name="restart.log") as again:
        _wait_for(lambda: again.rows(query)[0][0] >= reports, "every report")
        with httpx.Client(base_url=again.url, timeout=20) as http:
            http.post("/events/drain/").raise_for_status()
        assert again.rows(query) == [(reports,)]


def _django_docs() -> str:
    """The Django guide."""
    return (ROOT / "docs" / "django.md").read_text()


def test_the_documented_django_snippets_are_copied_from_the_example_project() -> None:
    """Every Python snippet in the Django docs appears verbatim in the files these tests run."""
    projects = (PROJECT, ROOT / "examples" / "django_outbox")  # the outbox has its own
    example = "\n".join(
        path.read_text() for project in projects for path in sorted(project.rglob("*.py"))
    )
    snippets = re.findall(r"```python\n(.*?)```", _django_docs(), re.S)
    assert len(snippets) >= 5
    assert [snippet for snippet in snippets if snippet not in example] == []
