"""PostgresStore's tables: the schema, its migrations, the version check, and naming.

Everything the store keeps lives in one PostgreSQL schema (``aevents`` unless
told otherwise) that the store creates and migrates itself. Its version is the
one row of ``aevents_schema``; a schema written by a newer aevents is refused
before anything is touched. Migrations run under a transaction-scoped advisory
lock, so processes opening the store at once migrate it once.

Also here, as they need no connection of their own: how the store names itself
in errors and logs (``display_name``, with no password in it), how a psycopg
error becomes a ``StoreError``, and ``Statements``: every statement the store
runs, rendered once with the schema's name quoted as an identifier
(``psycopg.sql.Identifier``), and every value passed as a parameter.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .._exceptions import ConfigurationError, StoreError

__all__ = [
    "SCHEMA_VERSION",
    "Statements",
    "check_and_migrate",
    "database_of",
    "display_name",
    "postgres_error",
]

# Each migration is a list of statements; ``{s}`` is the schema, quoted as an identifier.
# Times are ``timestamptz`` (microseconds, as Python's datetime).
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # ``seq`` is the event's position (``events_after``): given under the lock of the
        # one ``event_head`` row, in the order the publishing transactions commit, and
        # never given twice (the head stays when events are pruned).
        "CREATE TABLE {s}.events (seq bigint PRIMARY KEY, id text NOT NULL UNIQUE,"
        " name text NOT NULL, body bytea NOT NULL, published_at timestamptz NOT NULL,"
        " key text)",
        "CREATE TABLE {s}.event_head (head bigint NOT NULL)",
        "INSERT INTO {s}.event_head VALUES (0)",
        # state: 0 pending (ready, scheduled when ``due`` is later, leased when ``holder``
        # is set, until ``lease_until``), 1 done, 2 dead. ``attempts`` counts the attempts
        # started; ``started``: the holder started its attempt (counted in ``attempts``);
        # ``expired``: the last attempt started ended with its lease running out.
        "CREATE TABLE {s}.deliveries (event_seq bigint NOT NULL, receiver_id text NOT NULL,"
        " key text, state smallint NOT NULL DEFAULT 0, attempts integer NOT NULL DEFAULT 0,"
        " due timestamptz NOT NULL DEFAULT '-infinity', holder text,"
        " lease_until timestamptz NOT NULL DEFAULT '-infinity',"
        " started boolean NOT NULL DEFAULT false, expired boolean NOT NULL DEFAULT false,"
        " holds_key boolean NOT NULL DEFAULT false,"
        " PRIMARY KEY (event_seq, receiver_id))",
        # a claim reads one receiver's pending deliveries in publish order
        "CREATE INDEX deliveries_ready ON {s}.deliveries (receiver_id, event_seq) WHERE state = 0",
        # the deliveries a key's next one waits behind: pending, or dead and holding it
        "CREATE INDEX deliveries_lane ON {s}.deliveries (receiver_id, key, event_seq)"
        " WHERE key IS NOT NULL AND (state = 0 OR holds_key)",
        "CREATE INDEX deliveries_held ON {s}.deliveries (holder) WHERE holder IS NOT NULL",
        "CREATE INDEX deliveries_done ON {s}.deliveries (event_seq) WHERE state = 1",
        # one letter per delivery; ``n`` orders letters that failed at the same time
        "CREATE TABLE {s}.dead_letters (id text PRIMARY KEY,"
        " n bigint GENERATED ALWAYS AS IDENTITY, event_seq bigint NOT NULL,"
        " receiver_id text NOT NULL, attempts integer NOT NULL, error_type text NOT NULL,"
        " error_message text NOT NULL, failed_at timestamptz NOT NULL,"
        " UNIQUE (event_seq, receiver_id))",
        # the first event of each idempotency key, kept when the event is pruned
        "CREATE TABLE {s}.idempotency (n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " key text NOT NULL UNIQUE, occurred_at timestamptz NOT NULL, body bytea NOT NULL)",
        "CREATE INDEX idempotency_by_time ON {s}.idempotency (occurred_at)",
        # ``n`` orders registrations; ``routes`` is JSON [[pattern, receiver id], ...]
        "CREATE TABLE {s}.consumers (n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " id text NOT NULL UNIQUE, routes bytea NOT NULL,"
        " registered_at timestamptz NOT NULL, last_seen timestamptz NOT NULL,"
        " expires_at timestamptz NOT NULL)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_STATEMENTS: Final = {
    # -- publishing (``_postgres_sql.write_events``: also through a caller's connection)
    "claim_keys": (
        "INSERT INTO {s}.idempotency (key, occurred_at, body)"
        " SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::bytea[]) AS t(key, at, body)"
        " ORDER BY key ON CONFLICT (key) DO NOTHING RETURNING key"
    ),
    "key_bodies": "SELECT key, body FROM {s}.idempotency WHERE key = ANY(%s::text[])",
    # One statement takes the turn (``h``: the seq before those of the events added) and
    # adds the events and their deliveries, given as JSON text: ``[[id, name, body in
    # base64 (bytes, whatever the database's encoding), occurred_at, key], ...]`` and
    # ``[[index of the event, 1-based, receiver id, key], ...]``. JSON,
    # not arrays: one string for psycopg to send, where a list of values is dumped one
    # value at a time in Python (a batch of 64 events: 0.1 ms instead of 2). Then the
    # schema's channel is notified when the last parameter is true.
    "publish": (
        "WITH h AS (UPDATE {s}.event_head SET head = head + %s RETURNING head - %s AS base),"
        " e AS (INSERT INTO {s}.events (seq, id, name, body, published_at, key)"
        " SELECT h.base + t.i, t.v ->> 0, t.v ->> 1, decode(t.v ->> 2, 'base64'),"
        " (t.v ->> 3)::timestamptz, t.v ->> 4"
        " FROM h, jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS t(v, i)),"
        " d AS (INSERT INTO {s}.deliveries (event_seq, receiver_id, key)"
        " SELECT h.base + (t.v ->> 0)::bigint, t.v ->> 1, t.v ->> 2"
        " FROM h, jsonb_array_elements(%s::jsonb) AS t(v))"
        " SELECT h.base, CASE WHEN %s THEN pg_notify(%s, '') END FROM h"
    ),
    "notify": "SELECT pg_notify(%s, '')",
    # -- the inbox (``PostgresStore.complete_in``): done in the receiver's transaction, by
    # the attempt that runs (started, still held); the holder stays for the settle
    "complete_in": (
        "UPDATE {s}.deliveries AS d SET state = 1 FROM {s}.events AS e"
        " WHERE e.id = %s AND d.event_seq = e.seq AND d.receiver_id = %s AND d.state = 0"
        " AND d.holder IS NOT NULL AND d.started AND d.attempts = %s RETURNING d.event_seq"
    ),
}


def channel_of(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema (a NOTIFY payload is never read)."""
    digest = hashlib.sha256(schema.encode()).hexdigest()[:16]
    return f"aevents_{digest}"


def lock_id(schema: str) -> int:
    """The advisory lock that migrations of ``schema`` take (a signed 64-bit int)."""
    digest = hashlib.sha256(b"aevents-migrate:" + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Statements:
    """The store's SQL for one schema, rendered once: plain strings, runnable on any
    psycopg cursor (and any DB-API cursor whose driver adapts lists to arrays)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.channel = channel_of(schema)
        self._quoted = sql.Identifier(schema).as_string(None)

    def render(self, template: str) -> str:
        """``template`` with ``{s}`` replaced by the quoted schema."""
        return template.replace("{s}", self._quoted)

    def __getattr__(self, name: str) -> str:
        try:
            template = _STATEMENTS[name]
        except KeyError:
            raise AttributeError(name) from None
        text = self.render(template)
        setattr(self, name, text)  # cached: __getattr__ runs once per name
        return text


def check_and_migrate(conn: psycopg.Connection[Any], statements: Statements, name: str) -> int:
    """Create or migrate the schema; refuse one a newer aevents wrote. Returns its version.

    ``conn`` is in autocommit mode; everything runs in one transaction under an
    advisory lock, so concurrent opens migrate once and a failed migration leaves
    nothing behind.
    """
    schema = statements.schema
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id(schema),))
        version_table = f"{statements.render('{s}')}.aevents_schema"
        exists = conn.execute("SELECT to_regclass(%s)", (version_table,)).fetchone()
        version = 0
        if exists is not None and exists[0] is not None:
            row = conn.execute(
                statements.render("SELECT version FROM {s}.aevents_schema")
            ).fetchone()
            version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                name,
                f"was written by a newer aevents (schema version {version}, this one reads "
                f"up to {SCHEMA_VERSION}); upgrade aevents; left untouched",
            )
        if version == SCHEMA_VERSION:
            return version
        conn.execute(statements.render("CREATE SCHEMA IF NOT EXISTS {s}"))
        if version == 0:
            conn.execute(
                statements.render(
                    "CREATE TABLE IF NOT EXISTS {s}.aevents_schema (version integer NOT NULL)"
                )
            )
            conn.execute(statements.render("DELETE FROM {s}.aevents_schema"))
            conn.execute(statements.render("INSERT INTO {s}.aevents_schema VALUES (0)"))
        for migration in _MIGRATIONS[version:]:
            for statement in migration:
                conn.execute(statements.render(statement))
        conn.execute(
            statements.render("UPDATE {s}.aevents_schema SET version = %s"), (SCHEMA_VERSION,)
        )
    return SCHEMA_VERSION


def check_schema_name(schema: object) -> str:
    """A schema name: a non-empty str PostgreSQL accepts as an identifier (63 bytes)."""
    if not isinstance(schema, str) or not schema or len(schema.encode()) > 63 or "\x00" in schema:
        raise ConfigurationError(
            "PostgresStore", f"schema must be a name of 1 to 63 bytes, got {schema!r}"
        )
    return schema


def display_name(conninfo: str, schema: str) -> str:
    """How the store names itself in errors, logs and ``repr``: never with a password.

    ``postgresql://user@host:port/dbname#schema``, from the parts of the
    connection string (a URL or ``key=value`` pairs) other than the password.
    """
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return f"postgresql://(unparsable connection string)#{schema}"
    user = parts.get("user")
    host = parts.get("host") or parts.get("hostaddr") or ""
    port = parts.get("port")
    dbname = parts.get("dbname") or ""
    where = f"{user}@" if user else ""
    where += str(host) + (f":{port}" if port else "")
    return f"postgresql://{where}/{dbname}#{schema}"


def database_of(conninfo: str) -> tuple[str, str, str]:
    """``(host, port, dbname)`` of a connection string, with libpq's defaults filled in
    (local socket, 5432, the user's name), for checks that two connections reach one
    database; empty strings for an unparsable one."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return ("", "", "")
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    if host.startswith("/"):
        host = "localhost"
    port = str(parts.get("port") or "5432")
    dbname = str(parts.get("dbname") or parts.get("user") or "")
    return (host, port, dbname)


def password_of(conninfo: str) -> str | None:
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        return None
    return str(password) if password else None


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (a password) replaced by ``***``."""
    if not secret:
        return text
    return text.replace(secret, "***")


_SPACE = re.compile(r"\s+")


def postgres_error(
    name: str, exc: BaseException, doing: str, secret: str | None = None
) -> StoreError:
    """The ``StoreError`` for a psycopg error raised while ``doing``; a duplicate event id
    and a lost connection are named as such. The psycopg error stays its ``__cause__``."""
    if isinstance(exc, StoreError):
        return exc
    detail = _SPACE.sub(" ", str(exc)).strip()
    if isinstance(exc, psycopg.errors.UniqueViolation) and (
        exc.diag.constraint_name or ""
    ).startswith("events_id"):
        problem = (
            f"{doing}: an event of this publish is already stored "
            f"({exc.diag.message_detail or detail}); nothing of this publish was added"
        )
    elif isinstance(exc, psycopg.OperationalError):
        problem = f"{doing}: the connection to PostgreSQL failed ({detail})"
    else:
        problem = f"{doing}: {detail}"
    error = StoreError(name, scrub(problem, secret))
    error.__cause__ = exc
    return error
