"""PostgresStore's connections: the session its store thread drives, and the listener.

``PostgresSession`` is the ``Session`` a ``StoreThread`` drives (see
``_sqlite_thread``): one sync psycopg connection, used only by that thread, in
autocommit mode with explicit transactions (a claim is one statement, which is
its own transaction). psycopg's async connection runs on
asyncio only; a thread with a sync connection serves asyncio, uvloop and trio
alike, and lets concurrent publishes, starts and settlements share one
transaction (group commit), as in ``SQLiteStore``.

Reconnecting: when the server restarts or the backend is terminated, the
connection breaks. A transaction that broke before its COMMIT was sent
committed nothing, so it is run again once on a new connection; one that broke
during the COMMIT may or may not have committed, and its callers get a
``StoreError`` saying so (a publish is then the caller's to retry or report).
A failed connection attempt fails the call with a ``StoreError``; the next call
connects again. A deadlock or serialization failure is retried the same way.

``Listener`` is a thread with a connection of its own that LISTENs on the
schema's channel and calls ``wake`` (on the event loop) for each batch of
notifications, and once after each reconnect, since notifications sent while
it was away are lost. It only makes idle consumers claim sooner: they also poll.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql

from .._exceptions import StoreError
from ._postgres_queries import Queries
from ._postgres_schema import SCHEMA_VERSION, Statements, check_and_migrate, postgres_error, scrub
from ._postgres_sql import QueueWrites

__all__ = ["Listener", "PostgresSession", "application_name"]

logger = logging.getLogger("aevents.store")

_T = TypeVar("_T")
_TRIES: Final = 2  # a transaction that committed nothing runs again once after a failure
_LISTEN_WAIT: Final = 0.25  # seconds the listener waits for notifications between checks


def application_name(schema: str, role: str = "store") -> str:
    """What ``pg_stat_activity`` shows for the store's connections (63 bytes at most)."""
    return f"aevents-{role}:{schema}"[:63]


class PostgresSession:
    """One connection, reconnected when lost; transactions with one retry."""

    idle_at = math.inf  # no background pass

    def __init__(
        self,
        conninfo: str,
        statements: Statements,
        *,
        name: str,
        secret: str | None,
        connect_timeout: float,
        read_only: bool,
    ) -> None:
        self.name = name
        self.statements = statements
        self.writes = QueueWrites(statements)
        self.queries = Queries(statements)
        self.read_only = read_only
        self._conninfo = conninfo
        self._secret = secret
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0

    @classmethod
    def open(
        cls,
        conninfo: str,
        statements: Statements,
        *,
        name: str,
        secret: str | None,
        connect_timeout: float,
        read_only: bool,
    ) -> PostgresSession:
        """Connect, then create or migrate the schema (check it only, when read-only)."""
        session = cls(
            conninfo,
            statements,
            name=name,
            secret=secret,
            connect_timeout=connect_timeout,
            read_only=read_only,
        )
        conn = session.connection()
        try:
            if read_only:
                session.check_readable(conn)
            else:
                check_and_migrate(conn, statements, name)
        except BaseException:
            session.close()
            raise
        return session

    def check_readable(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse to read a schema of another version (read-only: nothing is migrated)."""
        version = self.version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                self.name,
                f"was written by a newer aevents (schema version {version}, this one "
                f"reads up to {SCHEMA_VERSION}); upgrade aevents; left untouched",
            )
        if version < SCHEMA_VERSION:
            raise StoreError(self.name, "holds no aevents store to read (no such schema)")

    def version(self, conn: psycopg.Connection[Any]) -> int:
        table = f"{self.statements.render('{s}')}.aevents_schema"
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if found is None or found[0] is None:
            return 0
        row = conn.execute(
            self.statements.render("SELECT version FROM {s}.aevents_schema")
        ).fetchone()
        return 0 if row is None else int(row[0])

    def connection(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one (raising ``StoreError`` if none can be made)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop()
        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=max(1, math.ceil(self._connect_timeout)),
                application_name=application_name(self.statements.schema),
            )
        except psycopg.Error as exc:
            raise self.error(exc, "could not connect") from exc
        self._conn = conn
        return conn

    def error(self, exc: BaseException, doing: str) -> StoreError:
        return postgres_error(self.name, exc, doing, self._secret)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing to release
                logger.debug("store %s: closing a broken connection failed", self.name)

    # -- transactions ----------------------------------------------------------------------

    def transact(
        self,
        work: Callable[[psycopg.Cursor[Any]], _T],
        *,
        read_only: bool = False,
        alone: bool = False,
    ) -> _T:
        """Run ``work(cursor)`` in one transaction and commit; run it again once on a new
        connection if the connection broke (or a deadlock was detected) before COMMIT.

        ``alone``: ``work`` runs one statement, which is its own transaction (autocommit):
        no BEGIN and COMMIT round trips. It runs again too if the connection broke
        during it; only for a statement whose effect, if it committed unseen, does no
        harm (a claim: what it leased comes back when the lease runs out)."""
        for attempt in range(1, _TRIES + 1):
            conn = self.connection()
            committing = False
            try:
                with conn.cursor() as cursor:
                    if alone:
                        return work(cursor)
                    cursor.execute("BEGIN READ ONLY" if read_only else "BEGIN")
                    result = work(cursor)
                    committing = True
                    cursor.execute("COMMIT")
            except psycopg.OperationalError as exc:
                lost = conn.closed or conn.broken
                if lost:
                    self._drop()
                else:
                    self.rollback()
                if committing and lost:
                    raise StoreError(
                        self.name,
                        "the connection to PostgreSQL was lost while committing; whether "
                        f"this write was recorded is unknown ({scrub(str(exc), self._secret)})",
                    ) from exc
                retry = lost or isinstance(exc, psycopg.errors.TransactionRollback)
                if retry and attempt < _TRIES:
                    self.reconnects += lost
                    logger.info(
                        "store %s: %s; trying again on %s",
                        self.name,
                        "the connection was lost" if lost else "a transaction was rolled back",
                        "a new connection" if lost else "the same connection",
                    )
                    continue
                raise
            except BaseException:
                self.rollback()
                raise
            else:
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def write(self, requests: Sequence[tuple[Any, ...]]) -> object:
        """The thread's group commit: every request in one transaction."""
        if self.read_only:
            raise StoreError(self.name, "was opened read-only")

        def work(cursor: psycopg.Cursor[Any]) -> None:
            if self.writes.write(cursor, requests):
                self.queries.notify(cursor)

        self.transact(work)
        return None

    def rollback(self) -> None:
        """End a transaction a failed call left open; never raises."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except Exception:
            self._drop()

    def idle(self) -> None:
        """Nothing to do in the background."""

    def close(self) -> None:
        self._drop()


class Listener:
    """A thread that LISTENs on the store's channel and calls ``wake`` on notifications.

    ``wake`` is called from this thread; it must be safe to call from any thread
    (the store passes one that schedules the real callback on the event loop).
    Stops within ``_LISTEN_WAIT`` seconds of ``stop()``; not joined.
    """

    def __init__(
        self, conninfo: str, schema: str, channel: str, *, name: str, wake: Callable[[], None]
    ) -> None:
        self._schema = schema
        self._conninfo = conninfo
        self._channel = channel
        self._name = name
        self._wake = wake
        self._stopped = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"aevents-listen:{name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        delay = 0.1
        while not self._stopped.is_set():
            try:
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name=application_name(self._schema, "listen"),
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self.listening.set()
                    delay = 0.1
                    self._wake()  # what was published while not listening
                    while not self._stopped.is_set():
                        woken = False
                        for _ in conn.notifies(timeout=_LISTEN_WAIT, stop_after=1):
                            woken = True
                        if woken:
                            self._wake()
            except psycopg.Error as exc:
                self.listening.clear()
                logger.info(
                    "store %s: listening for notifications stopped (%s); trying again in %gs",
                    self._name,
                    type(exc).__name__,
                    delay,
                )
                self._stopped.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # a bug: consumers still poll
                logger.exception("store %s: the listener stopped", self._name)
                return
        self.listening.clear()
