"""The journal's ``.lock`` file: who has the journal, and what its last run left behind.

Every process that opens the journal read-write holds a *shared* ``flock`` on
``<file>.lock`` while it has it open, so the processes of a host share the
file. The lock file also keeps a small JSON record: whether a run is open, how
far the ``-wal`` has grown (the high-water mark, rewritten only when a durable
commit makes it grow past it), and the losses noticed so far.

Opening and closing are serialised by a guard (a POSIX ``lockf`` on the lock
file, and a thread lock for the stores of one process). Under it, an opener
tries the ``flock`` exclusively first: if it gets it, no other process has the
journal, and the record tells whether the last run closed cleanly. If it did not
and its ``-wal`` is gone, shorter or garbled, the commits it held may be lost
(see ``_sqlite_schema``); the loss stays in ``losses`` and in the record until
``forget`` acknowledges it. The opener then records the run as open and keeps
the lock shared. A closer that can take the ``flock`` exclusively is the last
one: it checkpoints and records a clean close. A process that dies releases its
``flock`` with it, and the record keeps saying "open" until the last user
closes; only when every user died is the -wal checked again.

An exclusive store (``SQLiteStore(exclusive=True)``) keeps the ``flock``
exclusive for its whole run and says so in the record, so that another opener
fails with ``JournalInUseError`` naming its pid; it cannot open a journal that
another process has open.

A store holds one ``JournalLock`` for its whole life, so ``losses`` outlives a
close. Every method runs on the store thread, between open and close.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from .._text import counted
from ._sqlite_schema import (
    describe_loss,
    lock_journal,
    losses_of,
    open_lock_file,
    read_record,
    wal_loss,
    write_record,
)

logger = logging.getLogger("aevents.store")

_IN_PROCESS = threading.RLock()  # lockf does not exclude the stores of one process


@contextlib.contextmanager
def guarded(fd: int) -> Iterator[None]:
    """Hold the guard that serialises opening, closing and record updates of one journal."""
    with _IN_PROCESS:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)


class JournalLock:
    """The flock on ``<path>.lock`` and the record in it, for one store."""

    def __init__(self, path: str, *, exclusive: bool = False) -> None:
        self.path = path
        self.exclusive = exclusive
        """Hold the flock exclusively for the whole run (``SQLiteStore(exclusive=True)``)."""
        self.losses: list[dict[str, Any]] = []
        """Losses of data noticed after a crash and not acknowledged yet, oldest first."""
        self._fd: int | None = None
        self._alone = False  # no other process had the journal when this one opened it
        self._guard: contextlib.ExitStack | None = None
        self._wal_path = path + "-wal"
        self._wal_recorded = 0  # the -wal size the record holds, as this store last saw it
        self._recorded = False  # this run is open in the record

    @property
    def recorded(self) -> bool:
        """Whether this run holds the lock and recorded itself open."""
        return self._recorded

    @property
    def alone(self) -> bool:
        """Whether no other process had the journal open when this one opened it."""
        return self._alone

    def acquire(self, real: str) -> None:
        """Take the guard, then the flock on ``<real>.lock``, whatever spelling led there:
        exclusively if no other process has it, else shared. ``opened`` or ``release``
        drops the guard.

        Raises ``JournalInUseError`` if an older aevents or an exclusive store holds the
        journal alone, or if this store is exclusive and another process has it,
        ``StoreError`` if the lock file cannot be made.
        """
        fd = open_lock_file(self.path, real)
        try:
            self._take_guard(fd)
            self._alone = lock_journal(self.path, fd, exclusive=self.exclusive)
        except BaseException:
            self._drop_guard()
            os.close(fd)
            raise
        self._fd = fd
        self._wal_path = real + "-wal"

    def _take_guard(self, fd: int) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(guarded(fd))
        self._guard = stack

    def _drop_guard(self) -> None:
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.close()

    def read_last_run(self, real: str, *, exists: bool) -> dict[str, Any] | None:
        """Load the losses the record keeps; return a new one if the last run's -wal lost
        commits (checked only when no other process has the journal open, and only a
        journal file that ``exists`` can have lost any)."""
        assert self._fd is not None, "acquire() first"
        record = read_record(self._fd)
        self.losses = losses_of(record)
        mark = record.get("wal")
        self._wal_recorded = mark if type(mark) is int else 0
        if not self._alone or not exists:
            return None
        return wal_loss(self.path, real, record)

    def opened(self, loss: dict[str, Any] | None) -> None:
        """Warn about earlier losses, report and keep ``loss``, record this run as open,
        share the flock and drop the guard."""
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
        if self._fd is None:  # opened read-only
            return
        if self._alone:
            self._wal_recorded = self._wal_size()
            self._record("open")
            if not self.exclusive:  # others may open it now (the guard still holds)
                fcntl.flock(self._fd, fcntl.LOCK_SH)
        else:
            self._recorded = True
        self._drop_guard()

    def track_wal(self) -> None:
        """After a durable commit: record the -wal's new size if it grew past the mark."""
        size = self._wal_size()
        if size <= self._wal_recorded or self._fd is None:  # the high-water mark: rarely moves
            return
        with guarded(self._fd):
            record = read_record(self._fd)
            mark = record.get("wal")
            self._wal_recorded = max(size, mark if type(mark) is int else 0)
            self.losses = losses_of(record)  # another process may have found or forgotten some
            self._record("open")

    def forget(self) -> list[dict[str, Any]]:
        """Acknowledge every loss: forget them, in the record too, and return them."""
        forgotten, self.losses = self.losses, []
        if self._fd is not None:
            with guarded(self._fd):
                mark = read_record(self._fd).get("wal")
                self._wal_recorded = max(self._wal_recorded, mark if type(mark) is int else 0)
                self._record("open")
        return forgotten

    def last_user(self) -> bool:
        """Before closing: take the guard and, if no other process has the journal, the
        flock exclusively. True when this is its last user (the caller then checkpoints);
        ``release`` drops the guard."""
        if self._fd is None or not self._recorded:
            return False
        self._take_guard(self._fd)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def release(self, *, checkpointed: bool = False) -> None:
        """Drop the flock and the guard. The last user records a clean close (the -wal
        emptied if ``checkpointed``); the others leave the record to it."""
        try:
            if self._recorded and self._fd is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    pass  # another process still has it: it records the close
                else:
                    if checkpointed:
                        self._wal_recorded = 0
                    # another process may have found or forgotten losses meanwhile
                    self.losses = losses_of(read_record(self._fd))
                    self._record("closed")
            self._recorded = False
        finally:
            self._drop_guard()
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
        record: dict[str, Any] = {
            "state": state,
            "pid": os.getpid(),
            "wal": self._wal_recorded,
            "losses": self.losses,
        }
        if self.exclusive and state == "open":
            record["exclusive"] = True  # an opener refused can name this process
        try:
            write_record(self._fd, record)
        except OSError as exc:
            logger.warning("journal %r: cannot update its lock file (%s)", self.path, exc)
            return
        self._recorded = state == "open"
