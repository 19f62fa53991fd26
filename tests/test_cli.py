"""``python -m aevents journal``: tables, JSON, exit codes and friendly errors."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson
import pytest

from aevents._cli import main
from aevents._event import Event, make_event
from aevents._policy import DeadLetter
from aevents._store import Route, SQLiteStore, StoreStats, new_consumer_id


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def events(path: Path) -> list[Event]:
    """A journal with three events: one done, one pending, one dead; one has an idempotency key."""
    made = [make_event("user.created", {"n": n}, {}) for n in range(2)]
    made.append(make_event("user.created", {"n": 2}, {"idempotency_key": "signup-2"}))

    async def fill() -> None:
        store = SQLiteStore(path)
        await store.open()
        try:
            for event in made:
                await store.append(event, ["audit", "mail\x1b[31m"])
            await store.complete([(made[0].id, "audit"), (made[0].id, "mail\x1b[31m")])
            await store.dead_letter(
                [
                    DeadLetter("letter-1", made[2], "audit", 3, "builtins.ValueError", "boom", now)
                    for now in [datetime.now(UTC)]
                ]
            )
        finally:
            await store.close()

    anyio.run(fill)
    return made


def stats(path: Path) -> StoreStats:
    async def read() -> StoreStats:
        store = SQLiteStore(path)
        await store.open()
        try:
            return await store.stats()
        finally:
            await store.close()

    return anyio.run(read)


@contextmanager
def held(path: Path) -> Iterator[None]:
    """Hold the journal's lock as a process of an older aevents would: alone."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_table_and_json(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stats`` prints counts as a table, or as JSON with --json."""
    code, out, _ = run(capsys, "journal", str(path), "stats")
    assert code == 0
    assert [line.split() for line in out.splitlines()[2:7]] == [
        ["events", "3"],
        ["pending", "3"],
        ["done", "2"],
        ["dead", "1"],
        ["idempotency_keys", "1"],
    ]
    code, out, _ = run(capsys, "journal", str(path), "stats", "--json")
    assert (code, orjson.loads(out)) == (
        0,
        {
            "events": 3,
            "pending": 3,
            "done": 2,
            "dead": 1,
            "idempotency_keys": 1,
            "consumers": [],
            "leases": [],
        },
    )


def test_stats_lists_live_consumers_and_their_leases_while_they_run(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a process consumes from the journal, ``stats`` shows it and what it holds, and
    ``redeliver`` writes at once beside it."""

    async def consume_then_ask() -> tuple[int, str, int, str]:
        store = SQLiteStore(path)
        await store.open()
        try:
            consumer = new_consumer_id()
            await store.register(consumer, [Route("**", "audit")], ttl=60)
            (claim,) = await store.claim(consumer, 1, lease=30)
            code, out, _ = await anyio.to_thread.run_sync(
                run, capsys, "journal", str(path), "stats", "--json"
            )
            data = orjson.loads(out)
            assert [c["id"] for c in data["consumers"]] == [str(consumer)]
            assert data["consumers"][0]["leases"] == 1
            assert [(lease["event_id"], lease["consumer"]) for lease in data["leases"]] == [
                (claim.event.id, str(consumer))
            ]
            table_code, table, _ = await anyio.to_thread.run_sync(
                run, capsys, "journal", str(path), "stats"
            )
            assert str(consumer) in table
            redeliver_code, redelivered, _ = await anyio.to_thread.run_sync(
                run, capsys, "journal", str(path), "redeliver", "--all", "--json"
            )
            assert redeliver_code == 0
            assert orjson.loads(redelivered) == {"redelivered": 1}
            assert (await store.stats()).dead == 0
            return code, table, table_code, str(consumer)
        finally:
            await store.close()

    code, _, table_code, _ = anyio.run(consume_then_ask)
    assert (code, table_code) == (0, 0)


def test_pending_lists_deliveries_and_escapes_control_characters(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pending`` shows one row per delivery; control characters never reach the terminal."""
    code, out, _ = run(capsys, "journal", str(path), "pending")
    assert code == 0
    assert "\x1b" not in out
    assert "mail\\x1b[31m" in out
    assert len(out.splitlines()) == 2 + 3
    code, out, _ = run(capsys, "journal", str(path), "pending", "--json", "--limit", "1")
    (only,) = orjson.loads(out)
    assert (only["event"]["id"], only["receiver_id"]) == (events[1].id, "audit")
    assert only["attempts"] == 0
    assert only["event"]["payload"] == {"n": 1}


def test_dead_letters_json_has_every_field(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dead-letters --json`` gives each letter's id, event, receiver, attempts and error."""
    code, out, _ = run(capsys, "journal", str(path), "dead-letters", "--json")
    (letter,) = orjson.loads(out)
    assert code == 0
    assert letter["id"] == "letter-1"
    assert letter["event"]["id"] == events[2].id
    assert (letter["receiver_id"], letter["attempts"]) == ("audit", 3)
    assert (letter["error_type"], letter["error_message"]) == ("builtins.ValueError", "boom")


def test_redeliver_applies_directly_when_the_journal_is_free(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no process holding the journal, ``redeliver`` makes letters pending at once."""
    code, out, _ = run(capsys, "journal", str(path), "redeliver", "letter-1", "--json")
    assert (code, orjson.loads(out)) == (0, {"redelivered": 1})
    assert stats(path) == StoreStats(events=3, pending=4, done=2, dead=0, idempotency_keys=1)


def test_redeliver_while_in_use_is_applied_on_the_next_start(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While an older aevents holds the journal alone, ``redeliver --all`` leaves a request
    (which the older aevents applies when it next opens the journal)."""
    with held(path):
        code, out, _ = run(capsys, "journal", str(path), "redeliver", "--all")
        assert code == 0
        assert "applied on the next start" in out
        assert stats_read_only(path).dead == 1
    assert stats(path).dead == 0


def stats_read_only(path: Path) -> StoreStats:
    async def read() -> StoreStats:
        store = SQLiteStore(path, read_only=True)
        await store.open()
        try:
            return await store.stats()
        finally:
            await store.close()

    return anyio.run(read)


def test_reading_commands_work_while_in_use(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stats`` reads a journal an older aevents holds alone read-only instead of failing."""
    with held(path):
        code, out, _ = run(capsys, "journal", str(path), "stats", "--json")
    assert (code, orjson.loads(out)["pending"]) == (0, 3)


def test_prune_while_in_use_exits_3(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``prune`` cannot open a journal an older aevents holds alone: it exits 3 with a
    message."""
    with held(path):
        code, out, err = run(capsys, "journal", str(path), "prune")
    assert (code, out) == (3, "")
    assert "in use" in err
    assert "Traceback" not in err


def test_prune_removes_done_deliveries(
    events: list[Event], path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``prune`` deletes done deliveries; ``--older-than`` spares recent ones."""
    code, out, _ = run(capsys, "journal", str(path), "prune", "--older-than", "1", "--json")
    assert (code, orjson.loads(out)) == (0, {"pruned": 0})
    code, out, _ = run(capsys, "journal", str(path), "prune", "--json")
    assert (code, orjson.loads(out)) == (0, {"pruned": 2})
    assert stats(path) == StoreStats(events=2, pending=3, done=0, dead=1, idempotency_keys=1)


def test_a_missing_journal_is_a_friendly_error_and_not_created(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path with no journal exits 1 with one line, and creates nothing."""
    code, out, err = run(capsys, "journal", str(path), "stats")
    assert (code, out) == (1, "")
    assert err == f"aevents: no journal at {str(path)!r}\n"
    assert not path.exists()


def test_a_foreign_file_is_a_friendly_error(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not a journal exits 1 naming it, without a traceback."""
    path.write_text("hello")
    code, _, err = run(capsys, "journal", str(path), "pending")
    assert code == 1
    assert str(path) in err
    assert "Traceback" not in err
    assert path.read_text() == "hello"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["journal"],
        ["journal", "x.db"],
        ["journal", "x.db", "frobnicate"],
        ["journal", "x.db", "redeliver"],
        ["journal", "x.db", "redeliver", "id-1", "--all"],
        ["journal", "x.db", "pending", "--limit", "-1"],
        ["journal", "x.db", "prune", "--older-than", "soon"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors exit 2 with argparse's message."""
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` prints the commands and exits 0."""
    code, out, _ = run(capsys, "journal", "x.db", "--help")
    assert code == 0
    assert "dead-letters" in out


def test_python_dash_m_runs_the_cli(events: list[Event], path: Path) -> None:
    """``python -m aevents journal PATH stats --json`` works from a shell."""
    result = subprocess.run(
        [sys.executable, "-m", "aevents", "journal", str(path), "stats", "--json"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["events"] == 3
