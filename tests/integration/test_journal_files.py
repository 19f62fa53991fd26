"""The SQLite journal's files under attack: other names, crashes, lost logs, reading commands.

Real processes: a journal is held open, or left behind by ``os._exit``, by a
child Python process, and the command line runs as ``python -m aevents``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import aevents
import aevents._cli
from aevents import JournalLinkError, SQLiteStore
from aevents._event import make_event
from aevents._policy import DeadLetter

# A child process: `seed PATH N` appends N events (receiver "a") and dies with os._exit
# before any checkpoint or close (`seed-wait` waits for a SIGKILL instead); `hold PATH`
# keeps the journal open until stdin closes.
CHILD = textwrap.dedent(
    """
    import os, sys
    import anyio
    from aevents import SQLiteStore
    from aevents._event import make_event

    async def main(mode, path, count):
        store = SQLiteStore(path)
        await store.open()
        if mode.startswith("seed"):
            for n in range(count):
                await store.append(make_event("journal:test:event", {"n": n}, {}), ["a"])
            print("seeded", flush=True)
            if mode == "seed":
                os._exit(0)
            await anyio.sleep_forever()  # until SIGKILL
        print("open", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
        await store.close()

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    """
)


def _child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """A child process holds the journal at ``path`` open."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, "hold", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "open\n"
        yield
    finally:
        process.stdin.close()
        assert process.wait(timeout=60) == 0
        process.stdout.close()


def _cli(path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aevents", "journal", str(path), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _digests(directory: Path) -> dict[str, str]:
    """The sha256 of every file in ``directory`` (symlinks as their target's name)."""
    found = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            found[entry.name] = "-> " + os.readlink(entry)
        else:
            found[entry.name] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return found


def _open_close(path: Path) -> SQLiteStore:
    async def go() -> SQLiteStore:
        store = SQLiteStore(path)
        await store.open()
        await store.close()
        return store

    return anyio.run(go)


def _stats_json(path: Path) -> dict[str, object]:
    result = _cli(path, "stats", "--json")
    loaded: dict[str, object] = orjson.loads(result.stdout)
    return loaded


# -- 1. one lock per file, whatever its name ------------------------------------------------


def test_a_symlink_opens_the_journal_in_use_beside_its_holder(tmp_path: Path) -> None:
    """An opener through a symlink shares the journal another process has open, as through
    the same name: one lock file, one -wal, and writes the holder sees."""
    journal = _healthy(tmp_path)
    alias = tmp_path / "alias.db"
    alias.symlink_to("j.db")
    (tmp_path / "linked").symlink_to(tmp_path, target_is_directory=True)
    with _held(journal):
        _open_close(alias)
        _open_close(tmp_path / "linked" / "j.db")  # a symlinked directory is another spelling
        assert _cli(alias, "redeliver", "--all").returncode == 0  # written at once
        assert _cli(alias, "prune").returncode == 0
    assert not (tmp_path / "alias.db.lock").exists()
    assert not (tmp_path / "alias.db-wal").exists()
    assert not (tmp_path / "j.db.requests").exists()
    assert _stats_json(journal)["dead"] == 0


def test_a_directory_is_not_a_journal(tmp_path: Path) -> None:
    result = _cli(tmp_path, "stats")
    assert result.returncode == 1
    assert "is a directory" in result.stderr


def test_a_hard_linked_journal_is_refused(tmp_path: Path) -> None:
    """SQLite gives each name of a file its own -wal: a journal with two names is refused."""
    journal = tmp_path / "j.db"
    _open_close(journal)
    os.link(journal, tmp_path / "alias.db")
    before = _digests(tmp_path)
    for name in ("j.db", "alias.db"):
        with pytest.raises(JournalLinkError, match=r"hard link .*2 names.*-wal"):
            anyio.run(SQLiteStore(tmp_path / name).open)
        result = _cli(tmp_path / name, "stats")
        assert result.returncode == 1
        assert "hard link" in result.stderr
    assert _digests(tmp_path) == before
    assert issubclass(JournalLinkError, aevents.StoreError)


def test_a_journal_linked_while_open_is_refused_to_the_second_name(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    with _held(journal):
        os.link(journal, tmp_path / "alias.db")
        with pytest.raises(JournalLinkError):
            anyio.run(SQLiteStore(tmp_path / "alias.db").open)


# -- 2. nothing world-readable through a dangling symlink -----------------------------------


def test_a_dangling_symlink_gets_a_0600_journal(tmp_path: Path) -> None:
    directory = tmp_path / "x"
    directory.mkdir()
    (directory / "j.db").symlink_to("target.db")
    old = os.umask(0o022)
    try:

        async def go() -> None:
            store = SQLiteStore(directory / "j.db")
            await store.open()
            try:
                await store.append(make_event("journal:test:event", {}, {}), ["a"])
                modes = {
                    entry.name: stat.S_IMODE(entry.lstat().st_mode)
                    for entry in directory.iterdir()
                    if not entry.is_symlink()
                }
                assert modes == {
                    "target.db": 0o600,
                    "target.db-wal": 0o600,
                    "target.db-shm": 0o600,
                    "target.db.lock": 0o600,
                }
            finally:
                await store.close()

        anyio.run(go)
    finally:
        os.umask(old)
    assert (directory / "j.db").is_symlink()
    assert stat.S_IMODE((directory / "target.db").stat().st_mode) == 0o600


# -- 3. a lost or garbled -wal after a crash is noticed and reported ------------------------


def _crashed(tmp_path: Path, count: int = 15, *, first: bool = False) -> Path:
    """A journal whose writer died (os._exit) with ``count`` acknowledged events in its -wal
    (on its ``first`` run, the tables too)."""
    journal = tmp_path / "j.db"
    if not first:
        _open_close(journal)
    assert _child("seed", str(journal), str(count)).stdout == "seeded\n"
    assert (tmp_path / "j.db-wal").stat().st_size > 0
    return journal


def _delete(wal: Path) -> None:
    wal.unlink()


def _garble(wal: Path) -> None:
    wal.write_bytes(os.urandom(wal.stat().st_size))


def _truncate(wal: Path) -> None:
    with wal.open("r+b") as file:
        file.truncate(wal.stat().st_size // 2)


@pytest.mark.parametrize("first", [False, True], ids=["later-run", "first-run"])
@pytest.mark.parametrize("damage", [_delete, _garble, _truncate], ids=lambda f: f.__name__[1:])
def test_a_lost_wal_after_a_crash_is_reported_until_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object, first: bool
) -> None:
    journal = _crashed(tmp_path, first=first)
    assert callable(damage)
    damage(tmp_path / "j.db-wal")

    before = _digests(tmp_path)
    result = _cli(journal, "stats")
    assert result.returncode == 4, result
    assert "j.db-wal" in result.stdout
    assert "may have lost data" in result.stdout
    assert "forget-losses" in result.stdout
    assert _digests(tmp_path) == before  # reporting it changed nothing

    caplog.set_level(logging.ERROR, logger="aevents.store")
    store = _open_close(journal)
    assert len(store.losses) == 1
    assert store.losses[0]["file"] == str(tmp_path / "j.db-wal")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "j.db-wal" in errors[0]
    assert "did not close cleanly" in errors[0]
    assert "acknowledged" in errors[0]

    # Recorded: still reported after a clean run, until acknowledged.
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="aevents.store")
    assert _open_close(journal).losses == store.losses
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "1 earlier loss of data not acknowledged" in caplog.records[0].getMessage()
    reported = _stats_json(journal)
    assert reported["losses"] == store.losses
    forgotten = _cli(journal, "forget-losses", "--json")
    assert forgotten.returncode == 0
    assert orjson.loads(forgotten.stdout) == {"forgotten": store.losses}
    assert _cli(journal, "stats").returncode == 0
    assert _open_close(journal).losses == []


@pytest.mark.anyio
async def test_a_runtime_after_sigkill_and_a_lost_wal_logs_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runtime no longer opens without a word when the -wal of a killed run is gone."""
    journal = tmp_path / "j.db"
    first = SQLiteStore(journal)
    await first.open()
    await first.close()
    async with await anyio.open_process(
        [sys.executable, "-c", CHILD, "seed-wait", str(journal), "15"]
    ) as process:
        assert process.stdout is not None
        try:
            output = b""
            while not output.endswith(b"seeded\n"):
                output += await process.stdout.receive()
        finally:
            process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    (tmp_path / "j.db-wal").unlink()

    caplog.set_level(logging.INFO)
    registry = aevents.Registry()
    registry.subscribe("journal:test:*", lambda event: None, id="a")
    store = SQLiteStore(journal)
    async with aevents.EventRuntime(registry, store=store) as runtime:
        await runtime.drain()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.name for r in errors] == ["aevents.store"]
    assert f"{journal}-wal" in errors[0].getMessage()
    assert "is missing" in errors[0].getMessage()
    assert len(store.losses) == 1
    stats = await anyio.run_process(
        [sys.executable, "-m", "aevents", "journal", str(journal), "stats"], check=False
    )
    assert stats.returncode == 4


def test_a_crash_with_its_wal_intact_loses_nothing_and_reports_nothing(tmp_path: Path) -> None:
    journal = _crashed(tmp_path)
    result = _cli(journal, "stats", "--json")
    assert result.returncode == 0, result
    assert orjson.loads(result.stdout)["pending"] == 15
    store = _open_close(journal)
    assert store.losses == []
    assert _stats_json(journal)["pending"] == 15


def test_a_clean_close_then_a_missing_wal_reports_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"

    async def go() -> None:
        store = SQLiteStore(journal)
        await store.open()
        await store.append(make_event("journal:test:event", {}, {}), ["a"])
        await store.close()

    anyio.run(go)
    assert not (tmp_path / "j.db-wal").exists()  # everything is in the file itself
    assert _cli(journal, "stats").returncode == 0
    assert _open_close(journal).losses == []


def test_forget_losses_works_while_processes_have_the_journal(tmp_path: Path) -> None:
    """A recorded loss is reported while a process has the journal, and acknowledged
    beside it."""
    journal = _crashed(tmp_path)
    (tmp_path / "j.db-wal").unlink()
    _open_close(journal)  # the first opener alone notices and records the loss
    with _held(journal):
        result = _cli(journal, "stats")  # read while in use: the recorded loss is reported
        assert result.returncode == 4
        assert _cli(journal, "forget-losses").returncode == 0
        assert _cli(journal, "stats").returncode == 0
    assert _cli(journal, "stats").returncode == 0


# -- 4. reading commands change no byte -----------------------------------------------------

READS = [["stats"], ["pending"], ["dead-letters"], ["stats", "--json"]]


def _healthy(tmp_path: Path) -> Path:
    """A closed journal with 3 dead letters and 12 pending deliveries."""
    journal = tmp_path / "j.db"
    made = [make_event("journal:test:event", {"n": n}, {}) for n in range(15)]

    async def fill() -> None:
        store = SQLiteStore(journal)
        await store.open()
        for event in made:
            await store.append(event, ["a"])
        now = datetime.now(UTC)
        await store.dead_letter(
            [DeadLetter(f"letter-{n}", made[n], "a", 3, "E", "boom", now) for n in range(3)]
        )
        await store.close()

    anyio.run(fill)
    return journal


def _with_wal(tmp_path: Path) -> Path:
    return _crashed(tmp_path)


def _with_damaged_wal(tmp_path: Path) -> Path:
    journal = _crashed(tmp_path)
    _garble(tmp_path / "j.db-wal")
    return journal


def _with_lost_first_run(tmp_path: Path) -> Path:
    journal = _crashed(tmp_path, first=True)
    _delete(tmp_path / "j.db-wal")
    return journal


def _with_requests(tmp_path: Path) -> Path:
    journal = _healthy(tmp_path)
    (tmp_path / "j.db.requests").write_bytes(b'{"redeliver":"all"}\n')
    return journal


@pytest.mark.parametrize(
    "make",
    [_healthy, _with_wal, _with_damaged_wal, _with_lost_first_run, _with_requests],
    ids=lambda f: f.__name__,
)
def test_reading_commands_change_no_byte(tmp_path: Path, make: object) -> None:
    assert callable(make)
    journal = make(tmp_path)
    before = _digests(tmp_path)
    for argv in READS:
        result = _cli(journal, *argv)
        assert result.returncode in (0, 4), result
        assert _digests(tmp_path) == before, argv


def test_reading_a_closed_journal_reads_it_in_place_without_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cleanly closed journal (no -wal) is read where it is, never copied: a copy would
    cost time and temporary disk space in proportion to the journal."""
    journal = _healthy(tmp_path)
    assert not (tmp_path / "j.db-wal").exists()

    def no_copies(*args: object, **kwargs: object) -> None:
        raise AssertionError("the journal was copied")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_copies)
    before = _digests(tmp_path)
    assert aevents._cli.main(["journal", str(journal), "stats", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["pending"] == 12
    assert _digests(tmp_path) == before


def test_reading_commands_never_apply_queued_redelivery(tmp_path: Path) -> None:
    journal = _with_requests(tmp_path)
    assert _stats_json(journal) == {
        "events": 15,
        "pending": 12,
        "done": 0,
        "dead": 3,
        "idempotency_keys": 0,
        "consumers": [],
        "leases": [],
    }
    assert _stats_json(journal)["dead"] == 3  # still: nothing was consumed
    assert (tmp_path / "j.db.requests").exists()


def test_reading_commands_see_what_the_wal_holds(tmp_path: Path) -> None:
    journal = _with_wal(tmp_path)
    assert _stats_json(journal)["pending"] == 15
    pending = _cli(journal, "pending", "--json", "--limit", "0")
    assert len(orjson.loads(pending.stdout)) == 15


@pytest.mark.parametrize("argv", READS, ids=" ".join)
def test_reading_an_empty_or_missing_file_creates_nothing(tmp_path: Path, argv: list[str]) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    before = _digests(tmp_path)
    for journal in (empty, tmp_path / "missing.db"):
        result = _cli(journal, *argv)
        assert result.returncode == 1, result
        assert result.stderr.startswith("aevents: ")
        assert _digests(tmp_path) == before
    assert "empty file" in _cli(empty, *argv).stderr


def test_reading_an_old_journal_reports_instead_of_migrating(tmp_path: Path) -> None:
    journal = _healthy(tmp_path)
    os.unlink(f"{journal}.lock")
    conn = sqlite3.connect(journal)
    conn.execute("PRAGMA user_version = 0")
    conn.commit()
    conn.close()
    before = _digests(tmp_path)
    result = _cli(journal, "stats")
    assert result.returncode == 1
    assert "older schema" in result.stderr
    assert _digests(tmp_path) == before


# -- 11. the replay says what it found ------------------------------------------------------


class JournalOnlySQLiteStore(SQLiteStore):
    """``SQLiteStore`` offering only the journal protocol, as a third-party journal store
    would: the runtime replays it at start (the path that logs the replay line)."""

    # Setting a protocol method to None opts a class out of a runtime-checkable protocol.
    publish: Any = None
    claim: Any = None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("events", "receivers", "letters", "expected"),
    [
        (1, 1, 1, "journal replay found 1 pending delivery of 1 event, and 1 dead letter"),
        (2, 2, 2, "journal replay found 4 pending deliveries of 2 events, and 2 dead letters"),
        (0, 1, 0, "journal replay found 0 pending deliveries of 0 events, and 0 dead letters"),
    ],
)
async def test_a_replay_logs_one_line_of_what_it_found(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    events: int,
    receivers: int,
    letters: int,
    expected: str,
) -> None:
    ids = ["a", "b"][:receivers]
    journal = tmp_path / "j.db"
    store = SQLiteStore(journal)
    await store.open()
    made = [make_event("journal:test:event", {"n": n}, {}) for n in range(events + letters)]
    for event in made:
        await store.append(event, ids)
    now = datetime.now(UTC)
    await store.dead_letter(
        [DeadLetter(f"l{n}", made[events + n], ids[0], 3, "E", "boom", now) for n in range(letters)]
    )
    if receivers > 1:  # the letters' events keep their other receivers pending: finish them
        await store.complete([(event.id, "b") for event in made[events:]])
    await store.close()

    registry = aevents.Registry()
    seen: list[str] = []

    for receiver_id in ids:

        async def receiver(event: aevents.Event) -> None:
            seen.append(event.id)

        registry.subscribe("journal:test:*", receiver, id=receiver_id)
    caplog.set_level(logging.INFO, logger="aevents.journal")
    async with aevents.EventRuntime(registry, store=JournalOnlySQLiteStore(journal)) as runtime:
        await runtime.drain()
    lines = [r.getMessage() for r in caplog.records if "journal replay found" in r.getMessage()]
    assert lines == [expected]
    assert len(seen) == events * receivers
