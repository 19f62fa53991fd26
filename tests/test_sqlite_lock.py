"""JournalLock: the ``.lock`` file's flock, and the record that outlives a crash.

The lock part touches files only, so these tests drive it directly on real
files in ``tmp_path``, as the store thread would between open and close.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from aevents._exceptions import JournalInUseError
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


def test_a_second_lock_on_the_journal_is_refused_until_release(journal: Path) -> None:
    """Only one JournalLock holds a journal; the next one can take it once it is released."""
    first, second = JournalLock(str(journal)), JournalLock(str(journal))
    first.acquire(str(journal))
    with pytest.raises(JournalInUseError):
        second.acquire(str(journal))
    first.release()
    second.acquire(str(journal))
    second.release()
    assert oct(os.stat(f"{journal}.lock").st_mode & 0o777) == "0o600"


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
    """track_wal records a larger -wal, ignores a smaller one; a checkpoint resets the mark."""
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
    lock.checkpointed()
    assert record_of(journal)["wal"] == 0
    lock.release()


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
