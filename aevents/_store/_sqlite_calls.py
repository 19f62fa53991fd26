"""The SQLiteStore's calls: the requests that run alone on the store thread.

``_JournalCalls`` adds to the thread loop of ``_sqlite_thread`` what a
``_Call`` runs, one at a time and never inside a write batch: opening the
journal (checks, lock, migration, pending ``.requests``) and closing it,
listing dead letters, redelivering them, paging through pending deliveries
(parking unreadable rows as dead letters), counting, and pruning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from .._event import Event, _make_event, new_event_id
from .._exceptions import InvalidEventNameError, StoreError
from .._names import validate_name
from .._policy import DeadLetter, describe_error
from .._text import counted
from ._protocol import PendingDelivery, StoreStats
from ._sqlite_schema import (
    EPOCH,
    JournalSchema,
    _check_links,
    _real_path,
    check_header,
    connect,
    create_file,
    from_us,
    parse_requests,
    to_us,
)
from ._sqlite_thread import _DEAD, _OPEN, _OPENING, _JournalThread

logger = logging.getLogger("aevents.store")

UNREADABLE_EVENT: Final = "aevents.journal.unreadable"

_PENDING_PAGE: Final = (
    "SELECT d.event_seq, d.receiver_id, d.attempts, e.id, e.name, e.body, e.published_at"
    " FROM deliveries AS d JOIN events AS e ON e.seq = d.event_seq"
    " WHERE d.state = 0 AND (d.event_seq, d.receiver_id) > (?, ?) AND d.event_seq <= ?"
    " ORDER BY d.event_seq, d.receiver_id LIMIT ?"
)
_DEAD_LETTERS: Final = (
    "SELECT l.id, l.receiver_id, l.attempts, l.error_type, l.error_message, l.failed_at,"
    " e.id, e.name, e.body, e.published_at"
    " FROM dead_letters AS l JOIN events AS e ON e.seq = l.event_seq"
    " ORDER BY l.failed_at, l.rowid LIMIT ?"
)
_REVIVE_ALL: Final = (
    "UPDATE deliveries SET state = 0, attempts = 0"
    " WHERE (event_seq, receiver_id) IN (SELECT event_seq, receiver_id FROM dead_letters)"
)
_REVIVE_ONE: Final = (
    "UPDATE deliveries SET state = 0, attempts = 0 WHERE (event_seq, receiver_id)"
    " IN (SELECT event_seq, receiver_id FROM dead_letters WHERE id = ?)"
)
_RECENT_KEYS: Final = (
    "SELECT key, body FROM (SELECT id, key, occurred_at, body FROM idempotency"
    " WHERE occurred_at >= ? ORDER BY occurred_at DESC, id DESC LIMIT ?)"
    " ORDER BY occurred_at, id"
)
_FORGET_KEYS: Final = (
    "DELETE FROM idempotency WHERE id IN"
    " (SELECT id FROM idempotency WHERE occurred_at < ? ORDER BY occurred_at LIMIT ?)"
)
_DELETE_ALL_LETTERS: Final = "DELETE FROM dead_letters"
_DELETE_LETTER: Final = "DELETE FROM dead_letters WHERE id = ?"

_PAGE: Final = 512  # pending deliveries fetched per round trip to the thread
_FORGET_CHUNK: Final = 2000  # key records deleted per transaction
_RAW_CHARS: Final = 1000  # how much of an unreadable body a dead letter keeps


class _JournalCalls(_JournalThread):
    """What a ``_Call`` runs on the store thread: open, close, reads and maintenance."""

    read_only: bool
    immutable: bool  # read-only, of a closed journal with no -wal (set by the CLI)
    unreadable: int
    _schema_version: int

    def _open_on_thread(self) -> None:
        try:
            self._open_journal()
        except BaseException:
            self._close_on_thread()
            raise
        with self._lock:
            if self._state == _OPENING:
                self._state = _OPEN
                self._writable = not self.read_only

    def _open_journal(self) -> None:
        real = self._real = _real_path(self.path)
        loss = None
        exists = check_header(self.path, real)
        _check_links(self.path, real)
        if not self.read_only:
            self._lock_file.acquire(real)
            _check_links(self.path, real)  # linked while we waited for the lock
            loss = self._lock_file.read_last_run(real, exists=exists)
            if not exists:
                create_file(self.path, real)
        elif not exists:
            raise StoreError(self.path, "does not exist")
        conn = connect(
            self.path,
            real,
            busy_timeout=self.busy_timeout,
            read_only=self.read_only,
            immutable=self.immutable,
        )
        self._conn = conn
        schema = JournalSchema(conn, self.path)
        schema.check(read_only=self.read_only)
        self._schema_version = schema.version
        if self.read_only:
            return
        try:
            schema.prepare_for_writes()
            self._schema_version = schema.version
            self._set_synchronous(self.synchronous)
            self._next_seq = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM events"
            ).fetchone()[0]
        except sqlite3.Error as exc:
            raise self._error(exc, "could not be prepared") from exc
        self._lock_file.opened(loss)
        self._apply_requests()
        if self.retention is not None:  # the first chunk now, the rest in the background
            self._retention_after = 0
            self._retention_pass()

    def _apply_requests(self) -> None:
        """Apply ``<path>.requests`` left by ``request_redelivery``, then delete it."""
        target = self._real + ".requests"
        try:
            fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("journal %r: cannot read %r (%s)", self.path, target, exc.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            everything, letter_ids = parse_requests(b"".join(chunks), self.path)
            try:
                count = self._redeliver_on_thread(None if everything else letter_ids)
            except sqlite3.Error as exc:
                logger.warning(
                    "journal %r: redelivery requests kept for the next start: %s", self.path, exc
                )
                self._rollback()
                return
            logger.info(
                "journal %r: redelivered %s as requested", self.path, counted(count, "dead letter")
            )
            os.unlink(target)
        finally:
            os.close(fd)

    def _close_on_thread(self) -> None:
        self._rollback()
        self._release()

    def _dead_letters_on_thread(self, limit: int) -> list[DeadLetter]:
        assert self._conn is not None
        if self._schema_version == 0:  # an empty file opened read-only: no tables yet
            return []
        letters = []
        for row in self._conn.execute(_DEAD_LETTERS, (limit,)).fetchall():
            letter_id, receiver_id, attempts, error_type, message, failed, *stored = row
            event, _ = self._decode(*stored)
            failed_at = from_us(failed)
            letters.append(
                DeadLetter(letter_id, event, receiver_id, attempts, error_type, message, failed_at)
            )
        return letters

    def _redeliver_on_thread(self, letter_ids: list[str] | None) -> int:
        self._check_writable()
        conn = self._conn
        assert conn is not None
        self._set_synchronous(self.synchronous)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if letter_ids is None:
                conn.execute(_REVIVE_ALL)
                count = conn.execute(_DELETE_ALL_LETTERS).rowcount
            else:
                count = 0
                for letter_id in dict.fromkeys(letter_ids):
                    conn.execute(_REVIVE_ONE, (letter_id,))
                    count += conn.execute(_DELETE_LETTER, (letter_id,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return count

    def _pending_page_on_thread(
        self, after: tuple[int, str], upto: int | None
    ) -> tuple[list[PendingDelivery], tuple[int, str] | None, int]:
        conn = self._conn
        assert conn is not None
        if self._schema_version == 0:
            return [], None, 0
        if upto is None:  # the first page fixes the snapshot: events appended later are not seen
            upto = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        rows = conn.execute(_PENDING_PAGE, (*after, upto, _PAGE)).fetchall()
        page: list[PendingDelivery] = []
        unreadable: list[tuple[Any, ...]] = []
        last_seq, event, reason = None, None, ""
        for seq, receiver_id, attempts, event_id, name, body, published in rows:
            if seq != last_seq:
                (event, reason), last_seq = self._decode(event_id, name, body, published), seq
            assert event is not None
            if not reason:
                page.append(PendingDelivery(event, receiver_id, attempts))
                continue
            unreadable.append(
                (
                    new_event_id(),
                    event_id,
                    name,
                    body,
                    published,
                    receiver_id,
                    attempts,
                    "aevents.journal.UnreadableEvent",
                    f"the journal row could not be read: {reason}",
                    to_us(datetime.now(UTC)),
                )
            )
        if unreadable:
            try:
                self._write_requests([(_DEAD, unreadable)])
            except sqlite3.Error as exc:  # they stay pending; the next start tries again
                logger.warning("journal %r: could not park unreadable rows: %s", self.path, exc)
            else:
                self.unreadable += len(unreadable)
                logger.warning(
                    "journal %r: %d unreadable deliver%s turned into dead letters",
                    self.path,
                    len(unreadable),
                    "y" if len(unreadable) == 1 else "ies",
                )
        last = rows[-1] if len(rows) == _PAGE else None
        return page, None if last is None else (last[0], last[1]), upto

    def _stats_on_thread(self) -> StoreStats:
        conn = self._conn
        assert conn is not None
        if self._schema_version == 0:
            return StoreStats(events=0, pending=0, done=0, dead=0)
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        counts = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
        keys = 0
        if self._schema_version >= 2:
            keys = conn.execute("SELECT count(*) FROM idempotency").fetchone()[0]
        return StoreStats(
            events=events,
            pending=counts.get(0, 0),
            done=counts.get(1, 0),
            dead=counts.get(2, 0),
            idempotency_keys=keys,
        )

    def _recent_keys_on_thread(self, since: int, limit: int) -> list[Event]:
        conn = self._conn
        assert conn is not None
        if self._schema_version < 2:  # an old journal opened read-only: it has no keys
            return []
        events, unreadable = [], []
        for key, body in conn.execute(_RECENT_KEYS, (since, limit)).fetchall():
            try:
                events.append(Event.from_json(body))
            except Exception:
                unreadable.append(key)
        if unreadable:  # the runtime can still start; a retry with one of these publishes again
            logger.warning(
                "journal %r: skipped %s, such as %r",
                self.path,
                counted(len(unreadable), "unreadable idempotency key record"),
                unreadable[0],
            )
        return events

    def _forget_keys_on_thread(self, before: int) -> int:
        self._check_writable()
        conn = self._conn
        assert conn is not None
        self._set_synchronous(self.synchronous)
        removed = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                count = conn.execute(_FORGET_KEYS, (before, _FORGET_CHUNK)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            removed += count
            if count < _FORGET_CHUNK:
                return removed

    def _prune_on_thread(self, cutoff: int | None) -> int:
        self._check_writable()
        removed, after = 0, 0
        while True:
            count, resume = self._prune_chunk(after, cutoff, stop_at_newer=False)
            removed += count
            if resume is None:
                return removed
            after = resume

    def _forget_losses_on_thread(self) -> list[dict[str, Any]]:
        self._check_writable()
        return self._lock_file.forget()

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(self.path, "was opened read-only")

    def _decode(self, event_id: Any, name: Any, body: Any, published: Any) -> tuple[Event, str]:
        """The stored event, or a placeholder and the reason it could not be read."""
        try:
            return Event.from_json(body), ""
        except Exception as exc:
            _, reason = describe_error(exc)
        raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
        try:
            label = validate_name(name)
        except InvalidEventNameError:
            label = UNREADABLE_EVENT
        occurred_at = from_us(published) if isinstance(published, int) else EPOCH
        payload = {"raw": raw.decode("utf-8", "replace")[:_RAW_CHARS]}
        return _make_event(str(event_id), label, payload, occurred_at, {}), reason
