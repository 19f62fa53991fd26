"""The journal's ``.lock`` file: who has the journal, and what its last run left behind.

``JournalLock`` holds the exclusive ``flock`` on ``<file>.lock`` while a store
has the journal open read-write, and keeps the small JSON record in that file
up to date: whether this run is open, how far its ``-wal`` has grown (the
high-water mark, rewritten only when a durable commit makes it grow), and the
losses noticed so far. The next open reads the record: if the last run did not
close cleanly and its ``-wal`` is gone, shorter or garbled, the commits it held
may be lost (see ``_sqlite_schema``), and the loss stays in ``losses`` and in
the record until ``forget`` acknowledges it.

A store holds one ``JournalLock`` for its whole life, so ``losses`` outlives a
close. Every method runs on the store thread, between open and close.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .._text import counted
from ._sqlite_schema import (
    _losses_of,
    _wal_loss,
    acquire_lock,
    describe_loss,
    read_record,
    write_record,
)

logger = logging.getLogger("aevents.store")


class JournalLock:
    """The flock on ``<path>.lock`` and the record in it, for one store."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.losses: list[dict[str, Any]] = []
        """Losses of data noticed after a crash and not acknowledged yet, oldest first."""
        self._fd: int | None = None
        self._wal_path = path + "-wal"
        self._wal_recorded = 0  # the -wal size the record holds
        self._recorded = False  # the record says "open" for this run

    @property
    def recorded(self) -> bool:
        """Whether the record says this run is open (it holds the lock and wrote to it)."""
        return self._recorded

    def acquire(self, real: str) -> None:
        """Take the exclusive flock on ``<real>.lock``, whatever spelling of the path led there.

        Raises ``JournalInUseError`` if another store has it, ``StoreError`` if
        the lock file cannot be made.
        """
        self._fd = acquire_lock(self.path, real)
        self._wal_path = real + "-wal"

    def read_last_run(self, real: str, *, exists: bool) -> dict[str, Any] | None:
        """Load the losses the record keeps; return a new one if the last run's -wal lost
        commits (only a journal file that ``exists`` can have lost any)."""
        assert self._fd is not None, "acquire() first"
        record = read_record(self._fd)
        self.losses = _losses_of(record)
        return _wal_loss(self.path, real, record) if exists else None

    def opened(self, loss: dict[str, Any] | None) -> None:
        """Warn about earlier losses, report and keep ``loss``, and record this run as open."""
        if self.losses:  # found by an earlier open and not acknowledged yet
            logger.warning(
                "journal %r: %s of data not acknowledged; "
                "`python -m aevents journal PATH stats` shows them, `forget-losses` acknowledges",
                self.path,
                counted(len(self.losses), "earlier loss"),
            )
        if loss is not None:
            self.losses.append(loss)
            logger.error("%s", describe_loss(self.path, loss))
        self._wal_recorded = self._wal_size()
        self._record("open")

    def track_wal(self) -> None:
        """After a durable commit: record the -wal's new size if it grew past the mark."""
        size = self._wal_size()
        if size > self._wal_recorded:  # the high-water mark: rarely moves
            self._wal_recorded = size
            self._record("open")

    def checkpointed(self) -> None:
        """After a checkpoint emptied the -wal: no commit of this run can be lost with it."""
        self._wal_recorded = 0
        self._record("open")

    def forget(self) -> list[dict[str, Any]]:
        """Acknowledge every loss: forget them, in the record too, and return them."""
        forgotten, self.losses = self.losses, []
        self._record("open")
        return forgotten

    def release(self) -> None:
        """Record a clean close (if this run was recorded open), then drop the flock."""
        if self._recorded:
            self._record("closed")
            self._recorded = False
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except OSError:
            return 0

    def _record(self, state: str) -> None:
        if self._fd is None:  # opened read-only: there is no lock to write to
            return
        record = {
            "state": state,
            "pid": os.getpid(),
            "wal": self._wal_recorded,
            "losses": self.losses,
        }
        try:
            write_record(self._fd, record)
        except OSError as exc:
            logger.warning("journal %r: cannot update its lock file (%s)", self.path, exc)
            return
        self._recorded = state == "open"
