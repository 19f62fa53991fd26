"""An open journal: what the store thread drives between open and close.

``OpenJournal.open`` runs on the store thread and puts the parts together in
order: it checks the file (header, links), takes the ``.lock`` (read-write
only; shared with the other processes that have the journal), connects,
checks and migrates the schema, prepares the SQL, records the run as open,
applies the redelivery requests an older aevents left in ``<file>.requests``
and runs the first retention pass. Whatever fails on the way is undone, and
the file is left as it was.

The open journal owns the connection, its ``JournalSchema``, its
``JournalSQL`` and the ``LeasedSQL`` over it (``queue``), and drives the
store's ``JournalLock``. It is the thread's ``Session``: ``write`` commits a
batch and moves the lock record's ``-wal`` mark, ``idle`` prunes a chunk for
``retention``, ``close`` checkpoints if it is the journal's last user, closes
the connection and releases the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from .._exceptions import StoreError
from .._text import counted
from ._protocol import PendingDelivery
from ._sqlite_leased_sql import LeasedSQL
from ._sqlite_lock import JournalLock
from ._sqlite_schema import (
    JournalSchema,
    check_header,
    check_links,
    connect,
    create_file,
    parse_requests,
    real_path,
    sqlite_error,
    to_us,
)
from ._sqlite_sql import DEAD, JournalSQL

logger = logging.getLogger("aevents.store")

_RETENTION_EVERY: Final = 60.0  # seconds between retention passes when nothing is left over


@attrs.frozen
class JournalOptions:
    """How to open a journal: ``SQLiteStore``'s options, read when it opens."""

    path: str
    synchronous: str
    busy_timeout: float
    retention: timedelta | None
    read_only: bool
    immutable: bool  # read-only, of a closed journal with no -wal (the CLI sets it)


class OpenJournal:
    """A journal opened on the store thread: its connection and the parts that use it.

    Make one with ``open``, on the thread that will use it; every method runs
    there.
    """

    def __init__(
        self, conn: sqlite3.Connection, options: JournalOptions, lock: JournalLock
    ) -> None:
        self.options = options
        self.connection = conn
        self.lock = lock
        self.schema = JournalSchema(conn, options.path)
        self.sql = JournalSQL(conn, self.schema, path=options.path, synchronous=options.synchronous)
        self.queue = LeasedSQL(
            conn, self.sql, synchronous=options.synchronous, alone=lock.exclusive
        )
        self.idle_at = math.inf  # when the next retention pass is due
        self._retention_after: int | None = 0  # where it resumes

    @classmethod
    def open(cls, options: JournalOptions, lock: JournalLock) -> OpenJournal:
        """Check, lock, connect, migrate and prepare the journal ``options.path``.

        Raises ``StoreError`` naming the path if it is not a usable journal,
        ``JournalInUseError`` if another store holds its lock; what was taken
        on the way is released.
        """
        path = options.path
        real = real_path(path)
        exists = check_header(path, real)
        check_links(path, real)
        loss = None
        if options.read_only:
            if not exists:
                raise StoreError(path, "does not exist")
        else:
            lock.acquire(real)
            try:
                check_links(path, real)  # linked while we waited for the lock
                loss = lock.read_last_run(real, exists=exists)
                if not exists:
                    create_file(path, real)
            except BaseException:
                lock.release()
                raise
        try:
            conn = connect(
                path,
                real,
                busy_timeout=options.busy_timeout,
                read_only=options.read_only,
                immutable=options.immutable,
            )
        except BaseException:
            lock.release()
            raise
        journal = cls(conn, options, lock)
        try:
            journal._prepare(real, loss)
        except BaseException:
            journal.rollback()
            journal.close()
            raise
        return journal

    def _prepare(self, real: str, loss: dict[str, Any] | None) -> None:
        self.schema.check(read_only=self.options.read_only)
        if self.options.read_only:
            return
        try:
            self.schema.prepare_for_writes()
            self.sql.prepare_for_writes()
        except sqlite3.Error as exc:
            raise self._error(exc, "could not be prepared") from exc
        self.lock.opened(loss)
        self._apply_requests(real + ".requests")
        if self.options.retention is not None:  # the first chunk now, the rest in the background
            self.idle()

    def _apply_requests(self, target: str) -> None:
        """Apply the redelivery requests that ``request_redelivery`` left, then delete them."""
        path = self.options.path
        try:
            fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("journal %r: cannot read %r (%s)", path, target, exc.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            everything, letter_ids = parse_requests(b"".join(chunks), path)
            try:
                count = self.sql.redeliver(None if everything else letter_ids)
            except sqlite3.Error as exc:
                logger.warning(
                    "journal %r: redelivery requests kept for the next start: %s", path, exc
                )
                self.rollback()
                return
            logger.info(
                "journal %r: redelivered %s as requested", path, counted(count, "dead letter")
            )
            os.unlink(target)
        finally:
            os.close(fd)

    # -- the thread's Session ----------------------------------------------------------------

    def write(self, requests: Sequence[tuple[Any, ...]]) -> None:
        """Write ``requests`` in one transaction (see ``LeasedSQL.write``)."""
        if self.queue.write(requests):
            self.lock.track_wal()

    def rollback(self) -> None:
        """Roll back a transaction a failed call left open; never raises."""
        self.sql.rollback()

    def idle(self) -> None:
        """Prune one chunk for ``retention``; due again at once if there is more, else in a
        minute."""
        retention = self.options.retention
        assert retention is not None
        if self._retention_after is None:
            self._retention_after = 0
        cutoff = to_us(datetime.now(UTC) - retention)
        try:
            _, self._retention_after = self.sql.prune_chunk(
                self._retention_after, cutoff, stop_at_newer=True
            )
        except sqlite3.Error as exc:
            logger.warning("journal %r: retention pruning failed: %s", self.options.path, exc)
            self._retention_after = None
        more = self._retention_after is not None
        self.idle_at = time.monotonic() + (0.0 if more else _RETENTION_EVERY)

    def close(self) -> None:
        """The journal's last user leaves nothing in the -wal; the others checkpoint what
        no reader needs, never waiting. Close the connection, release the lock."""
        checkpointed = False
        try:
            if self.lock.last_user():
                checkpointed = self.sql.checkpoint()
            elif not self.options.read_only:
                with contextlib.suppress(sqlite3.Error):
                    self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            try:
                self.connection.close()
            except sqlite3.Error:
                logger.debug("journal %r: close failed", self.options.path, exc_info=True)
        finally:
            self.lock.release(checkpointed=checkpointed)

    # -- what a store call needs beyond JournalSQL -------------------------------------------

    def pending_page(
        self, after: tuple[int, str], upto: int | None
    ) -> tuple[list[PendingDelivery], tuple[int, str] | None, int, int]:
        """A page of pending deliveries (see ``JournalSQL.pending_page``), with unreadable
        rows turned into dead letters; the last item counts those."""
        page, unreadable, after_page, upto = self.sql.pending_page(after, upto)
        parked = 0
        if unreadable:
            path = self.options.path
            try:
                self.write([(DEAD, unreadable)])
            except sqlite3.Error as exc:  # they stay pending; the next start tries again
                logger.warning("journal %r: could not park unreadable rows: %s", path, exc)
            else:
                parked = len(unreadable)
                logger.warning(
                    "journal %r: %d unreadable deliver%s turned into dead letters",
                    path,
                    parked,
                    "y" if parked == 1 else "ies",
                )
        return page, after_page, upto, parked

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        return sqlite_error(self.options.path, exc, doing, busy_timeout=self.options.busy_timeout)
