"""JournalLock: the ``.lock`` file's flock, and the record that outlives a crash.

The lock part touches files only, so these tests drive it directly on real
files in ``tmp_path``, as the store thread would between open and close.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from aevents._store._sqlite_lock import JournalLock


def record_of(journal: Path) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(Path(f"{journal}.lock").read_bytes())
    return record


def crashed_run(journal: Path, wal_bytes: int) -> None:
    """Leave the record of a run that died with ``wal_bytes`` of -wal written."""
    record = {"state": "open", "pid": 1, "wal": wal_bytes, "losses": []}
    Path(f"{journal}.lock").write_bytes(orjson.dumps(record))


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "j.db"
    path.touch()
    return path


def test_processes_share_the_lock_and_the_last_one_records_the_close(journal: Path) -> None:
    """The first user has the journal alone while it opens, then shares it; a second user
    shares it; the first to leave leaves the record open, the last records a clean close."""
    first, second = JournalLock(str(journal)), JournalLock(str(journal))
    first.acquire(str(journal))
    assert first.alone
    first.read_last_run(str(journal), exists=True)
    first.opened(None)
    second.acquire(str(journal))
    assert not second.alone
    second.read_last_run(str(journal), exists=True)
    second.opened(None)
    assert not first.last_user()
    first.release()
    assert record_of(journal)["state"] == "open"
    assert second.last_user()
    second.release(checkpointed=True)
    assert record_of(journal)["state"] == "closed"
    assert oct(os.stat(f"{journal}.lock").st_mode & 0o777) == "0o600"


def test_only_an_opener_alone_checks_what_a_crash_left(journal: Path) -> None:
    """A crashed run's missing -wal is a loss to the opener that has the journal alone; a
    process that opens it beside another one (whose -wal is in use) checks nothing."""
    crashed_run(journal, wal_bytes=8192)  # and its -wal is gone
    holder = os.open(f"{journal}.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_SH)  # another process has the journal open
    try:
        beside = JournalLock(str(journal))
        beside.acquire(str(journal))
        assert beside.read_last_run(str(journal), exists=True) is None
        beside.opened(None)
        beside.release()
    finally:
        os.close(holder)
    alone = JournalLock(str(journal))
    alone.acquire(str(journal))
    loss = alone.read_last_run(str(journal), exists=True)
    assert loss is not None
    assert "is missing" in loss["problem"]
    alone.release()


def test_the_record_says_open_while_held_and_closed_after(journal: Path) -> None:
    """The record names this process while the run is open, and a clean close after release."""
    lock = JournalLock(str(journal))
    lock.acquire(str(journal))
    assert lock.read_last_run(str(journal), exists=True) is None  # a new lock file: no history
    assert not lock.recorded
    lock.opened(None)
    assert lock.recorded
    assert record_of(journal) == {"state": "open", "pid": os.getpid(), "wal": 0, "losses": []}
    lock.release()
    assert not lock.recorded
    assert record_of(journal)["state"] == "closed"


def test_the_wal_mark_moves_only_when_the_wal_grows(journal: Path) -> None:
    """track_wal records a larger -wal, ignores a smaller one; the last user's checkpoint
    at close resets the mark."""
    wal = Path(f"{journal}-wal")
    lock = JournalLock(str(journal))
    lock.acquire(str(journal))
    lock.read_last_run(str(journal), exists=True)
    lock.opened(None)
    wal.write_bytes(b"\0" * 4096)
    lock.track_wal()
    assert record_of(journal)["wal"] == 4096
    wal.write_bytes(b"\0" * 100)
    lock.track_wal()
    assert record_of(journal)["wal"] == 4096
    assert lock.last_user()
    lock.release(checkpointed=True)
    assert record_of(journal)["wal"] == 0


def test_a_lost_wal_is_reported_kept_and_forgotten_on_request(
    journal: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crashed run's missing -wal is a loss: logged, kept across opens until forget()."""
    crashed_run(journal, wal_bytes=8192)  # and its -wal is gone
    lock = JournalLock(str(journal))
    lock.acquire(str(journal))
    loss = lock.read_last_run(str(journal), exists=True)
    assert loss is not None
    assert "is missing" in loss["problem"]
    with caplog.at_level(logging.WARNING, logger="aevents.store"):
        lock.opened(loss)
    assert [record.levelno for record in caplog.records] == [logging.ERROR]
    assert lock.losses == [loss]
    lock.release()
    assert record_of(journal)["losses"] == [loss]

    caplog.clear()
    again = JournalLock(str(journal))
    again.acquire(str(journal))
    assert again.read_last_run(str(journal), exists=True) is None  # it closed cleanly
    assert again.losses == [loss]
    with caplog.at_level(logging.WARNING, logger="aevents.store"):
        again.opened(None)
    assert "1 earlier loss of data not acknowledged" in caplog.records[0].getMessage()
    assert again.forget() == [loss]
    assert again.losses == []
    assert record_of(journal)["losses"] == []
    again.release()


def test_a_journal_that_did_not_exist_has_lost_nothing(journal: Path) -> None:
    """A record of a crashed run means nothing for a journal file that is not there."""
    crashed_run(journal, wal_bytes=8192)  # and its -wal is gone
    lock = JournalLock(str(journal))
    lock.acquire(str(journal))
    assert lock.read_last_run(str(journal), exists=False) is None
    lock.release()


def test_without_the_flock_nothing_is_written(journal: Path) -> None:
    """A store opened read-only never acquires: recording and releasing create no lock file."""
    lock = JournalLock(str(journal))
    lock.opened(None)
    lock.track_wal()
    assert lock.forget() == []
    lock.release()
    assert not lock.recorded
    assert not Path(f"{journal}.lock").exists()


def test_an_exclusive_lock_stays_exclusive_and_says_so(journal: Path) -> None:
    """An exclusive lock keeps the flock exclusive while open (another descriptor cannot
    even share it) and records it, with its pid; the clean close drops the mark."""
    lock = JournalLock(str(journal), exclusive=True)
    lock.acquire(str(journal))
    lock.read_last_run(str(journal), exists=True)
    lock.opened(None)
    assert record_of(journal) == {
        "state": "open",
        "pid": os.getpid(),
        "wal": 0,
        "losses": [],
        "exclusive": True,
    }
    other = os.open(f"{journal}.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert lock.last_user()
        lock.release(checkpointed=True)
        assert "exclusive" not in record_of(journal)
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free once released
    finally:
        os.close(other)
