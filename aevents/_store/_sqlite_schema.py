"""The SQLite journal's file: schema, migrations, identity checks and sidecars.

Everything here is about the file on disk and needs no store thread: the
tables and their migrations (``JournalSchema``, one per connection), how a
time is stored, the header and ``application_id``/``user_version`` checks
that refuse a foreign or newer file before it is touched, opening the
connection and naming its errors (``sqlite_error``), the ``synchronous``
PRAGMAs, the ``<path>.lock`` flock and its JSON record, and the JSON lines of
``<path>.requests`` (written by ``request_redelivery``, read back by
``parse_requests``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
import struct
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from .._exceptions import JournalInUseError, JournalLinkError, StoreError

logger = logging.getLogger("aevents.store")

APPLICATION_ID: Final = 0x61657674  # "aevt" in the header, so a foreign SQLite file is recognised

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # v1. Times are integer microseconds since the epoch (UTC): exact round trips.
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
        " name TEXT NOT NULL, body BLOB NOT NULL, published_at INTEGER NOT NULL)",
        # state: 0 pending, 1 done, 2 dead
        "CREATE TABLE deliveries (event_seq INTEGER NOT NULL, receiver_id TEXT NOT NULL,"
        " state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (event_seq, receiver_id)) WITHOUT ROWID",
        # start-up replay reads this instead of skipping over every done delivery
        "CREATE INDEX deliveries_pending ON deliveries (event_seq, receiver_id) WHERE state = 0",
        "CREATE TABLE dead_letters (id TEXT PRIMARY KEY, event_seq INTEGER NOT NULL,"
        " receiver_id TEXT NOT NULL, attempts INTEGER NOT NULL, error_type TEXT NOT NULL,"
        " error_message TEXT NOT NULL, failed_at INTEGER NOT NULL,"
        " UNIQUE (event_seq, receiver_id))",
    ),
    (  # v2. Idempotency keys, one row per key (the first event appended with it), kept
        # apart from events so that pruning an event leaves its key; `body` is its copy.
        # `id` orders records that share a time by when they were appended.
        "CREATE TABLE idempotency (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
        " occurred_at INTEGER NOT NULL, body BLOB NOT NULL)",
        # start-up reads the newest keys; forgetting deletes the oldest
        "CREATE INDEX idempotency_by_time ON idempotency (occurred_at)",
    ),
    (  # v3. The leased queue several processes share (``SQLiteStore``). A pending
        # delivery (state 0) is ready, scheduled (``due`` in the future) or leased
        # (``holder`` set, until ``lease_until``); the journal leaves all three at their
        # defaults. ``key`` copies the event's ordering key so that per-(receiver, key)
        # order is one index lookup; ``holds_key`` marks a dead letter that holds its key.
        "ALTER TABLE deliveries ADD COLUMN key TEXT",
        "ALTER TABLE deliveries ADD COLUMN due INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE deliveries ADD COLUMN holder TEXT",
        "ALTER TABLE deliveries ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE deliveries ADD COLUMN holds_key INTEGER NOT NULL DEFAULT 0",
        # Journal rows: pending ones become ready deliveries, dead letters stay dead (not
        # holding their key: the journal kept that in memory). Done rows need no key.
        "UPDATE deliveries SET key = (SELECT CASE WHEN json_valid(CAST(e.body AS TEXT))"
        " THEN json_extract(CAST(e.body AS TEXT), '$.key') END"
        " FROM events AS e WHERE e.seq = deliveries.event_seq) WHERE state != 1",
        # a claim reads one receiver's pending deliveries in publish order
        "CREATE INDEX deliveries_ready ON deliveries (receiver_id, event_seq) WHERE state = 0",
        # the deliveries a key's next one waits behind: pending, or dead and holding it
        "CREATE INDEX deliveries_lane ON deliveries (receiver_id, key, event_seq)"
        " WHERE key IS NOT NULL AND (state = 0 OR holds_key = 1)",
        # what a consumer holds (unregister, lease counts, leases of a dead process)
        "CREATE INDEX deliveries_held ON deliveries (holder) WHERE holder IS NOT NULL",
        # pruning in bounded batches reads done deliveries oldest first
        "CREATE INDEX deliveries_done ON deliveries (event_seq) WHERE state = 1",
        # `seq` orders registrations; `routes` is JSON [[pattern, receiver id], ...];
        # `pid_ns` and `started` (Linux: the registering process's pid namespace inode and
        # the start time of `pid`) tell a dead process from a live one or a reused pid
        "CREATE TABLE consumers (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
        " host TEXT NOT NULL, pid INTEGER NOT NULL, routes BLOB NOT NULL,"
        " registered_at INTEGER NOT NULL, last_seen INTEGER NOT NULL,"
        " expires_at INTEGER NOT NULL, pid_ns INTEGER, started INTEGER)",
        # The newest seq ever given to an event, kept when events are pruned, so that no
        # seq is given twice: seq is the position other processes tail events from.
        "CREATE TABLE event_head (head INTEGER NOT NULL)",
        "INSERT INTO event_head SELECT coalesce(max(seq), 0) FROM events",
        "CREATE TRIGGER event_head_moves AFTER INSERT ON events"
        " BEGIN UPDATE event_head SET head = NEW.seq WHERE head < NEW.seq; END",
    ),
    (  # v4. An attempt counts when its holder starts it, not when it is claimed:
        # ``attempts`` counts started attempts, and ``started`` says whether the holder's
        # claim is one of them. Version 3 counted claims: what it leased counts as started.
        "ALTER TABLE deliveries ADD COLUMN started INTEGER NOT NULL DEFAULT 0",
        "UPDATE deliveries SET started = 1 WHERE holder IS NOT NULL AND state = 0",
    ),
    (  # v5. A claim reads a receiver's deliveries that nobody holds, in publish order, and
        # apart from them those whose lease ran out, soonest first: it no longer steps over
        # every delivery leased ahead of the first free one (all a busy fleet has in flight).
        "CREATE INDEX deliveries_free ON deliveries (receiver_id, event_seq)"
        " WHERE state = 0 AND holder IS NULL",
        "CREATE INDEX deliveries_leased ON deliveries (receiver_id, lease_until)"
        " WHERE state = 0 AND holder IS NOT NULL",
        "DROP INDEX deliveries_ready",
    ),
    (  # v6. Cheaper writes: a done delivery is no longer indexed (pruning walks events in
        # seq order and deletes each one's done deliveries by primary key), and adding an
        # event no longer moves ``event_head`` (a trigger, a write per event): the newest
        # seq is max(the events' max seq, ``head``), and ``head`` is raised to the events'
        # max seq before a prune deletes any event.
        "DROP INDEX IF EXISTS deliveries_done",
        "DROP TRIGGER IF EXISTS event_head_moves",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
_TABLES_OF_VERSION: Final[tuple[frozenset[str], ...]] = (
    frozenset(),
    frozenset({"events", "deliveries", "dead_letters"}),
    frozenset({"events", "deliveries", "dead_letters", "idempotency"}),
    frozenset({"events", "deliveries", "dead_letters", "idempotency", "consumers", "event_head"}),
    frozenset({"events", "deliveries", "dead_letters", "idempotency", "consumers", "event_head"}),
    frozenset({"events", "deliveries", "dead_letters", "idempotency", "consumers", "event_head"}),
    frozenset({"events", "deliveries", "dead_letters", "idempotency", "consumers", "event_head"}),
)

_SET_APPLICATION_ID: Final = f"PRAGMA application_id = {APPLICATION_ID}"
_SET_USER_VERSION: Final = f"PRAGMA user_version = {SCHEMA_VERSION}"
SYNCHRONOUS: Final = {"FULL": "PRAGMA synchronous = FULL", "NORMAL": "PRAGMA synchronous = NORMAL"}

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND: Final = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    if moment.tzinfo is None:  # the protocol's times are aware; be lenient and read UTC
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def check_header(path: str, real: str) -> bool:
    """Reject what is plainly not our journal before touching anything; say if it exists."""
    try:
        with open(real, "rb") as file:
            header = file.read(100)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(real)):
            raise StoreError(path, "cannot be created: its directory does not exist") from None
        return False
    except IsADirectoryError:
        raise StoreError(path, "is a directory, not a journal file") from None
    except OSError as exc:
        raise StoreError(path, f"cannot be read ({exc.strerror})") from exc
    if not header:
        return True  # an empty file is an empty database
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise StoreError(path, "is not an aevents journal: not an SQLite database; left untouched")
    application_id = int.from_bytes(header[68:72], "big")
    version = int.from_bytes(header[60:64], "big")
    _check_identity(path, application_id, version, has_tables=False)
    return True


def _check_identity(path: str, application_id: int, version: int, *, has_tables: bool) -> None:
    application_id &= 0xFFFFFFFF
    if application_id not in (0, APPLICATION_ID) or (
        application_id == 0 and (version or has_tables)
    ):
        raise StoreError(
            path,
            "is not an aevents journal: an SQLite database of another application "
            f"(application_id {application_id:#x}); left untouched",
        )
    if application_id == APPLICATION_ID and version > SCHEMA_VERSION:
        raise StoreError(
            path,
            f"was written by a newer aevents (schema version {version}, this one reads up "
            f"to {SCHEMA_VERSION}); upgrade aevents; left untouched",
        )


class JournalSchema:
    """The tables behind one connection: checked against what this aevents reads, then
    brought up to date.

    ``version`` is the journal's schema version once ``check`` has read it;
    ``prepare_for_writes`` raises it to ``SCHEMA_VERSION``. Only a journal opened
    read-only keeps an older one: 0 for an empty file, which has no tables yet.
    """

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.path = path
        self.version = 0
        self._conn = conn

    @property
    def has_tables(self) -> bool:
        """Whether there is anything to read (an empty file opened read-only has nothing)."""
        return self.version > 0

    @property
    def has_keys(self) -> bool:
        """Whether the idempotency key records exist (schema version 2 and later)."""
        return self.version >= 2

    @property
    def has_leases(self) -> bool:
        """Whether the leased queue's columns and consumers exist (schema version 3 and later)."""
        return self.version >= 3

    def check(self, *, read_only: bool) -> None:
        """Refuse a foreign, newer, corrupt or (read-only) unmigrated journal; read its version."""
        conn, path = self._conn, self.path
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                path, f"is corrupt or not an SQLite database ({exc}); left untouched"
            ) from exc
        _check_identity(path, application_id, version, has_tables=bool(tables))
        if version == 0 and read_only:
            if not tables:  # created, but nothing ever reached the file: an empty journal
                self.version = 0
                return
            raise StoreError(path, "has an older schema; open it once read-write to migrate it")
        expected = _TABLES_OF_VERSION[version]
        if not tables >= expected:
            missing = ", ".join(sorted(expected - tables))
            raise StoreError(path, f"is corrupt: tables missing ({missing}); left untouched")
        self.version = int(version)

    def prepare_for_writes(self) -> None:
        """Switch to WAL mode, then run the migrations the journal lacks in one transaction.

        Raises ``StoreError`` if SQLite will not use WAL mode; a failed migration
        raises its ``sqlite3.Error`` and leaves the journal at its old version.
        """
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(self.path, f"cannot use WAL mode (journal_mode is {mode!r})")
        if self.version < SCHEMA_VERSION:
            self._migrate()
            self.version = SCHEMA_VERSION

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process sharing the file may have migrated it since ``check``.
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            _check_identity(self.path, APPLICATION_ID, current, has_tables=True)
            for statements in _MIGRATIONS[max(self.version, current) :]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(_SET_APPLICATION_ID)
            conn.execute(_SET_USER_VERSION)
            conn.execute("COMMIT")
        except BaseException:
            rollback_transaction(conn, self.path)
            raise


def rollback_transaction(conn: sqlite3.Connection | None, path: str) -> None:
    """Roll back the transaction ``conn`` has open, if any, without raising."""
    if conn is not None and conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # SQLite may have rolled back already
            logger.debug("journal %r: rollback failed", path, exc_info=True)


def sqlite_error(path: str, exc: BaseException, doing: str, *, busy_timeout: float) -> StoreError:
    """The ``StoreError`` for ``exc``, raised while ``doing``: a lock held past ``busy_timeout``
    and a full disk are named as such; the sqlite3 error stays its ``__cause__``."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        problem = (
            f"{doing}: another connection held the journal locked for longer than "
            f"busy_timeout={busy_timeout:g}s"
        )
    elif name.startswith("SQLITE_FULL"):
        problem = f"{doing}: the disk is full ({exc})"
    else:
        problem = f"{doing}: {exc}"
    error = StoreError(path, problem)
    error.__cause__ = exc
    return error


def connect(
    path: str, real: str, *, busy_timeout: float, read_only: bool, immutable: bool = False
) -> sqlite3.Connection:
    """The journal's one connection: no implicit transactions (the store BEGINs itself).

    ``immutable`` (read-only only) tells SQLite the file cannot change: it then
    takes no locks and neither reads nor writes ``-shm``, so a closed journal is
    read without touching any file. It ignores a ``-wal``: only for a journal
    that has none.
    """
    quoted = urllib.parse.quote(real)
    if read_only:
        target, uri = f"file:{quoted}?mode=ro{'&immutable=1' if immutable else ''}", True
    else:
        target, uri = real, False
    try:
        return sqlite3.connect(
            target,
            timeout=busy_timeout,
            isolation_level=None,
            cached_statements=64,
            uri=uri,
        )
    except sqlite3.Error as exc:
        raise StoreError(path, f"cannot be opened ({exc})") from exc


def real_path(path: str) -> str:
    """The file ``path`` names, symlinks resolved (a dangling one to where it points)."""
    return os.path.realpath(path)


def check_links(path: str, real: str) -> None:
    """Refuse a journal file with several names: SQLite gives each name its own -wal."""
    try:
        found = os.stat(real)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(path, f"cannot be read ({exc.strerror})") from exc
    if stat.S_ISDIR(found.st_mode):
        raise StoreError(path, "is a directory, not a journal file")
    if found.st_nlink > 1:
        raise JournalLinkError(path, found.st_nlink)


OLDER_OWNER: Final = (
    "is in use by a process of an older aevents, which holds it alone (its SQLiteStore "
    "does not share a journal); stop it, or upgrade it"
)
HELD_ALONE: Final = (
    "is held alone by {holder}, opened with SQLiteStore(exclusive=True); stop it, or open "
    "it shared there too (exclusive=False, the default)"
)
NOT_ALONE: Final = (
    "is open in another process, and SQLiteStore(exclusive=True) needs it alone; stop the "
    "other processes, or open it shared (exclusive=False, the default)"
)


def open_lock_file(path: str, real: str) -> int:
    """Open (or create, mode 0600) ``<real path>.lock``: one lock per file, whatever its
    spelling. Raises ``StoreError`` if it cannot."""
    target = real + ".lock"
    try:
        return os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise StoreError(path, f"cannot create its lock file ({exc.strerror})") from exc


def lock_journal(path: str, fd: int, *, exclusive: bool = False) -> bool:
    """Take the ``flock`` on the open lock file ``fd``: exclusively when no other process
    has the journal (return True), else shared (return False). A shared store takes it
    shared while open; an exclusive one (``exclusive``), or an older aevents, holds it
    exclusively for its whole run: then ``JournalInUseError``, and an exclusive store
    gets that error too when another process has the journal. Call it under the guard
    (it reads the record to name an exclusive holder)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if exclusive:
            raise JournalInUseError(path, NOT_ALONE) from None
    except OSError as exc:
        raise StoreError(path, f"cannot lock its lock file ({exc})") from exc
    else:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        record = read_record(fd)
        if record.get("exclusive") is True:
            pid = record.get("pid")
            holder = f"process {pid}" if type(pid) is int else "another process"
            raise JournalInUseError(path, HELD_ALONE.format(holder=holder)) from None
        raise JournalInUseError(path, OLDER_OWNER) from None
    except OSError as exc:
        raise StoreError(path, f"cannot lock its lock file ({exc})") from exc
    return False


def in_use(real: str) -> bool:
    """Whether a store holds the lock of the journal at ``real``; creates and changes nothing."""
    try:
        fd = os.open(real + ".lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False  # no lock file: no store has ever held it (or it cannot be ours)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the lock just taken
    return False


def create_file(path: str, real: str) -> None:
    """Create the journal file with mode 0600, never through a symlink (``real`` is resolved)."""
    try:
        fd = os.open(
            real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        return  # appeared meanwhile: the schema check decides
    except OSError as exc:
        raise StoreError(path, f"cannot be created ({exc.strerror})") from exc
    os.close(fd)


# -- the lock file's record: did the last run close cleanly, and what did its -wal hold? ----

_WAL_MAGIC: Final = (0x377F0682, 0x377F0683)
_WAL_VERSION: Final = 3007000


def read_record(fd: int) -> dict[str, Any]:
    """The JSON record in the lock file; empty (an older aevents, or new) when unreadable."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    try:
        record = orjson.loads(b"".join(chunks) or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def read_record_at(real: str) -> dict[str, Any]:
    """The lock file's record, read without a lock and without creating anything."""
    try:
        fd = os.open(real + ".lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        return read_record(fd)
    finally:
        os.close(fd)


def write_record(fd: int, record: dict[str, Any]) -> None:
    """Replace the record with one ``pwrite``: padded with spaces over a longer old one,
    never truncated, so a kill at any moment leaves either record whole."""
    data = orjson.dumps(record) + b"\n"
    os.pwrite(fd, data.ljust(os.fstat(fd).st_size), 0)


def losses_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    losses = record.get("losses")
    if not isinstance(losses, list):
        return []
    return [loss for loss in losses if isinstance(loss, dict)]


def wal_loss(path: str, real: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """What the last run may have lost, if it did not close cleanly and its -wal is gone or bad.

    The record says how many bytes the -wal had grown to at the last run's
    commits. A -wal that is missing, shorter than that, or whose header is not
    a valid SQLite WAL header (magic, version, checksum) cannot hold those
    commits any more: SQLite would silently open the journal without them.
    """
    expected = record.get("wal")
    if record.get("state") != "open" or type(expected) is not int or expected <= 0:
        return None  # closed cleanly, written by an older aevents, or nothing was committed
    wal = real + "-wal"
    problem: str | None
    try:
        with open(wal, "rb") as file:
            header = file.read(32)
            size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        problem = "is missing"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    else:
        problem = _wal_header_problem(header)
        if problem is None and size < expected:
            problem = f"is {size} bytes long, shorter than the {expected} bytes the last run wrote"
    if problem is None:
        return None
    return {
        "detected_at": datetime.now(UTC).isoformat(),
        "file": wal,
        "problem": f"the last run did not close cleanly and its write-ahead log {problem}",
        "lost": (
            "whatever it committed since the last checkpoint (up to "
            f"{expected} bytes of log): events it acknowledged, deliveries it marked done "
            "(these run again) and dead letters may be missing from the journal"
        ),
    }


def _wal_header_problem(header: bytes) -> str | None:
    if not header:
        return "is empty"
    if len(header) < 32:
        return "is shorter than a WAL header (garbled)"
    magic, version, *_, check1, check2 = struct.unpack(">8I", header)
    if magic not in _WAL_MAGIC or version != _WAL_VERSION:
        return "is not an SQLite write-ahead log (garbled)"
    words = struct.unpack((">" if magic & 1 else "<") + "6I", header[:24])
    sum1 = sum2 = 0
    for first, second in zip(words[::2], words[1::2], strict=True):
        sum1 = (sum1 + first + sum2) & 0xFFFFFFFF
        sum2 = (sum2 + second + sum1) & 0xFFFFFFFF
    if (sum1, sum2) != (check1, check2):
        return "has a header whose checksum does not match (garbled)"
    return None


def describe_loss(path: str, loss: dict[str, Any]) -> str:
    """One line for a recorded loss."""
    return (
        f"journal {path!r}: {loss.get('problem', 'data was lost')} ({loss.get('file', '?')}, "
        f"noticed {loss.get('detected_at', '?')}); {loss.get('lost', '')}"
    )


def parse_requests(data: bytes, path: str) -> tuple[bool, list[str]]:
    """``(redeliver everything?, letter ids)`` from the JSON lines of a requests file."""
    everything, letter_ids = False, []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            request = orjson.loads(line)
            wanted = request["redeliver"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            logger.warning("journal %r: ignoring unreadable request on line %d", path, number)
            continue
        if wanted == "all":
            everything = True
        elif isinstance(wanted, list) and all(isinstance(item, str) for item in wanted):
            letter_ids += wanted
        else:
            logger.warning("journal %r: ignoring malformed request on line %d", path, number)
    return everything, letter_ids


def request_redelivery(path: str | os.PathLike[str], letter_ids: Sequence[str] | None) -> None:
    """Ask for dead letters (all when ``None``) to be redelivered the next time ``path`` opens.

    Appends one JSON line to ``<path>.requests`` (mode 0600) under an ``flock``,
    so it is safe while the owning process starts up and consumes the file.
    """
    target = real_path(os.fsdecode(os.fspath(path))) + ".requests"
    wanted: str | list[str] = "all" if letter_ids is None else list(letter_ids)
    line = orjson.dumps({"redeliver": wanted}) + b"\n"
    while True:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(target)
            except FileNotFoundError:
                continue  # consumed while we waited: write a fresh file
            if os.path.samestat(current, os.fstat(fd)):
                os.write(fd, line)
                return
        finally:
            os.close(fd)
