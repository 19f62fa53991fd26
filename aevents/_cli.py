"""``python -m aevents``: ``inspect`` an app's routes, run a ``worker``, read a ``journal``.

::

    python -m aevents inspect TARGET [TARGET ...] [--registry MODULE:ATTRIBUTE] [--strict]
                              [--allow PATTERN ...]

    python -m aevents worker TARGET [--store PATH] [--concurrency N] [--backend NAME]

    python -m aevents journal PATH stats
    python -m aevents journal PATH pending [--limit N]
    python -m aevents journal PATH dead-letters [--limit N]
    python -m aevents journal PATH redeliver (ID ... | --all)
    python -m aevents journal PATH prune [--older-than DAYS]
    python -m aevents journal PATH forget-losses

``inspect`` imports the TARGET modules (``package.module`` or, as uvicorn takes
it, ``package.module:attribute``) from the current directory first, then prints
which receivers each declared name routes to and what reaches nothing (see
``aevents._inspect``). It exits 1 when a target fails to import, and with
``--strict`` when the report shows a problem that no ``--allow`` excuses.

Every command takes ``--json`` for scripts. Exit codes: 0 done, 1 the
journal is missing or unusable, 2 bad usage, 3 a process of an older aevents
holds the journal alone (it does not share it) and the command writes
(``prune``, ``forget-losses``), 4 ``stats`` found that the journal may have lost
data (a missing or damaged -wal after a crash; ``forget-losses`` acknowledges it).

``stats``, ``pending`` and ``dead-letters`` change no byte of any file. A
closed journal (no -wal) is read in place as immutable; one left with a -wal
by a crash is read from a private copy of the file and its -wal (so nothing is
checkpointed, migrated or consumed); while processes have it open, they read it
read-only. ``stats`` also lists the live consumers and the leases they hold.
``redeliver``, ``prune`` and ``forget-losses`` open the journal beside the
processes that have it and write at once; only a journal an older aevents holds
alone gets a redelivery request, applied when it next opens.

PATH may also be a ``postgresql://`` URL (with ``--schema``) or a ``redis://`` or
``rediss://`` URL (with ``--prefix``): the same commands but ``forget-losses`` run on
that store while its processes use it. Output names the URL with ``***`` for its
password.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import anyio
import orjson

from ._exceptions import InvalidEventNameError, JournalInUseError, StoreError
from ._inspect import inspect_routes
from ._names import validate_pattern
from ._registry import Registry
from ._store._protocol import Consumer, LeasedStore, PendingDelivery
from ._store._sqlite import SQLiteStore, request_redelivery
from ._store._sqlite_schema import (
    check_links,
    describe_loss,
    in_use,
    losses_of,
    read_record_at,
    real_path,
    wal_loss,
)
from ._targets import (
    POSTGRES_URLS,
    REDIS_URLS,
    LoadError,
    UsageError,
    check_spec,
    escape,
    load_target,
    use_app_dir,
)
from ._text import counted, with_article
from ._worker import add_worker_parser, worker_command

__all__ = ["main"]

EXIT_OK, EXIT_JOURNAL, EXIT_USAGE, EXIT_IN_USE, EXIT_LOSSES = 0, 1, 2, 3, 4
_READS = frozenset({"stats", "pending", "dead-letters"})
EXIT_ERROR = EXIT_JOURNAL  # inspect: a target failed to load, or --strict found a problem
_CELL = 48  # widest table cell before it is cut with "…"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aevents", description="aevents command-line tools."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect = commands.add_parser(
        "inspect",
        parents=[output],
        help="print which receivers each declared event name routes to",
        description=(
            "Import the TARGET modules, then print which receivers each declared event name "
            "routes to, patterns that match no declared name, subscribed names no catalog "
            "declares (likely typos) and declared names with no receiver."
        ),
    )
    inspect.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="a module to import: 'package.module', or 'package.module:attribute' as uvicorn "
        "takes it (the attribute must exist)",
    )
    inspect.add_argument(
        "--registry",
        metavar="MODULE:ATTRIBUTE",
        help="the Registry to inspect (default: aevents.default_registry)",
    )
    inspect.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="import targets from DIR before sys.path (default: the current directory)",
    )
    inspect.add_argument(
        "--store",
        metavar="PATH_OR_URL",
        help="also compare with the live consumers of this shared store: a journal path, "
        "a postgresql:// or a redis:// URL (read only)",
    )
    inspect.add_argument("--strict", action="store_true", help="exit 1 if any problem is found")
    inspect.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PATTERN",
        help="excuse known problems: declared or subscribed names this name or pattern "
        "matches, or a wildcard subscription equal to it (repeatable)",
    )
    inspect.add_argument(
        "--traceback", action="store_true", help="print the traceback of a target that fails"
    )
    add_worker_parser(commands)
    journal = commands.add_parser(
        "journal",
        help="inspect and repair an SQLite journal, a PostgreSQL store or a Redis store",
        description="Inspect and repair an aevents SQLite journal, or a PostgresStore or a "
        "RedisStore given by URL (postgresql://..., redis://... or rediss://...).",
    )
    journal.add_argument(
        "path",
        metavar="PATH",
        help="the journal file, or a postgresql://, redis:// or rediss:// URL",
    )
    journal.add_argument(
        "--schema",
        default="aevents",
        help="with a postgresql:// URL: the schema of the store (default: aevents)",
    )
    journal.add_argument(
        "--prefix",
        default="aevents",
        help="with a redis:// or rediss:// URL: the key prefix of the store (default: aevents)",
    )
    actions = journal.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "stats", parents=[output], help="count events, deliveries by state, and idempotency keys"
    )
    for name, what in (("pending", "pending deliveries"), ("dead-letters", "dead letters")):
        action = actions.add_parser(name, parents=[output], help=f"list {what}, oldest first")
        action.add_argument(
            "--limit", type=_count, default=100, help="show at most N (0: all; default 100)"
        )
    redeliver = actions.add_parser(
        "redeliver",
        parents=[output],
        help="make dead letters pending again (at once, also while processes run)",
    )
    redeliver.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids")
    redeliver.add_argument("--all", action="store_true", help="every dead letter")
    prune = actions.add_parser(
        "prune", parents=[output], help="delete done deliveries (and events with nothing left)"
    )
    prune.add_argument(
        "--older-than", type=_days, metavar="DAYS", help="only events older than DAYS days"
    )
    actions.add_parser(
        "forget-losses",
        parents=[output],
        help="acknowledge the data losses stats reports (exit code 4), so it stops reporting them",
    )
    return parser


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text!r}")
    return value


def _days(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1e6:
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse reports usage errors and --help itself
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "inspect": _inspect,
        "journal": _journal,
        "worker": worker_command,
    }
    command = commands[args.command]
    try:
        return command(args)
    except UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"python -m aevents: error: {error}", file=sys.stderr)
        return EXIT_USAGE


# -- inspect ------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    for spec in args.targets:
        check_spec(spec, "TARGET", attribute_required=False)
    if args.registry is not None:
        check_spec(args.registry, "--registry", attribute_required=True)
    for entry in args.allow:
        try:
            validate_pattern(entry)
        except InvalidEventNameError as error:
            raise UsageError(f"--allow {escape(repr(entry))}: {escape(str(error))}") from None
    use_app_dir(args.app_dir)
    try:
        registry = _load_app(args)
    except LoadError as error:
        return _fail(escape(str(error)), EXIT_ERROR)
    consumers = None
    if args.store is not None:
        if "://" not in args.store and not os.path.isfile(args.store):
            return _fail(f"--store {escape(repr(args.store))}: no such journal file")
        try:
            consumers = anyio.run(_live_consumers, args.store)
        except StoreError as error:
            return _fail(escape(str(error)))
    report = inspect_routes(registry, allow=args.allow, consumers=consumers)
    _print(args, report.to_dict(), report.to_text())
    return EXIT_ERROR if args.strict and not report.ok else EXIT_OK


async def _live_consumers(spec: str) -> list[Consumer]:
    """The live consumers of the store ``spec`` names, read without changing it."""
    store: LeasedStore
    if spec.startswith(POSTGRES_URLS):
        from ._store._postgres import PostgresStore

        store = PostgresStore(spec, read_only=True)
    elif spec.startswith(REDIS_URLS):
        from ._store._redis import RedisStore

        store = RedisStore(spec)
    else:
        store = SQLiteStore(spec, read_only=True)
    await store.open()
    try:
        return await store.consumers()
    finally:
        await store.close()


def _load_app(args: argparse.Namespace) -> Registry | None:
    """Import the targets, then find the registry ``--registry`` names (None: the default)."""
    # Whatever the app prints while it is imported must not mix into the report.
    with contextlib.redirect_stdout(sys.stderr):
        for spec in args.targets:
            load_target(spec, show_traceback=args.traceback)
        if args.registry is None:
            return None
        registry = load_target(args.registry, show_traceback=args.traceback)
    if not isinstance(registry, Registry):
        raise LoadError(
            f"--registry {args.registry!r} is {with_article(type(registry).__name__)}, "
            "not an aevents.Registry"
        )
    return registry


# -- journal ------------------------------------------------------------------------------


def _journal(args: argparse.Namespace) -> int:
    if args.action == "redeliver" and bool(args.ids) == bool(args.all):
        raise UsageError("redeliver takes dead letter ids or --all (one or the other)")
    path = args.path
    if path.startswith(POSTGRES_URLS):
        try:
            return anyio.run(_postgres_journal, args)
        except StoreError as error:
            return _fail(str(error))
    if path.startswith(REDIS_URLS):
        try:
            return anyio.run(_redis_journal, args)
        except StoreError as error:
            return _fail(str(error))
    if not os.path.exists(path):
        return _fail(f"no journal at {path!r}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return _fail(f"{path!r} is an empty file, not a journal: nothing was ever written to it")
    try:
        return anyio.run(_journal_async, args)
    except JournalInUseError as error:
        return _fail(str(error), EXIT_IN_USE)
    except StoreError as error:
        return _fail(str(error))


async def _postgres_journal(args: argparse.Namespace) -> int:
    """A command on a ``PostgresStore``: the reading ones in read-only transactions."""
    from ._store._postgres import PostgresStore

    if args.action == "forget-losses":
        raise UsageError("forget-losses is for SQLite journals; a PostgreSQL store has none")
    reads = args.action in _READS
    store = PostgresStore(args.path, schema=args.schema, read_only=reads)
    args.path = store.path  # what the output names: the URL without its password
    await store.open()
    try:
        await _ACTIONS[args.action](store, args)  # type: ignore[arg-type]
    finally:
        await store.close()
    return EXIT_OK


async def _redis_journal(args: argparse.Namespace) -> int:
    """A command on a ``RedisStore``; the reading ones run reading scripts only."""
    from ._store._redis import RedisStore

    if args.action == "forget-losses":
        raise UsageError("forget-losses is for SQLite journals; a Redis store has none")
    store = RedisStore(args.path, prefix=args.prefix, retention=None)
    args.path = store.path  # what the output names: the URL without its password
    await store.open()
    try:
        await _ACTIONS[args.action](store, args)  # type: ignore[arg-type]
    finally:
        await store.close()
    return EXIT_OK


def _fail(message: str, code: int = EXIT_JOURNAL) -> int:
    print(f"aevents: {message}", file=sys.stderr)
    return code


async def _journal_async(args: argparse.Namespace) -> int:
    if args.action in _READS:
        return await _read(args)
    store = SQLiteStore(args.path)
    try:
        await store.open()
    except JournalInUseError:
        if args.action != "redeliver":
            raise
        ids = None if args.all else list(args.ids)
        request_redelivery(args.path, ids)
        what = "every dead letter" if ids is None else counted(len(ids), "dead letter")
        _print(
            args,
            {"requested": "all" if ids is None else ids, "applied": "on the next start"},
            f"the journal is in use: redelivery of {what} requested, applied on the next start",
        )
        return EXIT_OK
    try:
        await _ACTIONS[args.action](store, args)
    finally:
        await store.close()
    return EXIT_OK


async def _read(args: argparse.Namespace) -> int:
    """Run a reading command without changing a byte of the journal or its side files."""
    path = args.path
    real = real_path(path)
    check_links(path, real)
    record = read_record_at(real)
    losses = args.losses = losses_of(record)
    if in_use(real):  # the processes that have it keep its files consistent: read them as they are
        await _read_store(SQLiteStore(path, read_only=True), args)
    else:
        loss = wal_loss(path, real, record)  # noticed now, recorded by the next open
        if loss is not None:
            losses.append(loss)
        if not _has_wal(real):
            # Everything is in the file itself (a clean close checkpoints and
            # removes the -wal): read it in place, with no lock and no -shm.
            store = SQLiteStore(path, read_only=True)
            store.immutable = True
            await _read_store(store, args)
        else:  # a crashed run's -wal: read a private copy, so nothing is checkpointed
            with tempfile.TemporaryDirectory(prefix="aevents-journal-") as directory:
                copy = os.path.join(directory, "journal.db")
                if not _copy_journal(real, copy):  # a process opened it while we copied
                    await _read_store(SQLiteStore(path, read_only=True), args)
                else:
                    await _read_store(SQLiteStore(copy, read_only=True), args, shown=path)
    if args.action == "stats" and losses:
        return EXIT_LOSSES
    for loss in losses:
        print(f"aevents: {describe_loss(path, loss)}", file=sys.stderr)
    return EXIT_OK


def _has_wal(real: str) -> bool:
    return os.path.exists(real + "-wal")


def _copy_journal(real: str, copy: str) -> bool:
    """Copy the journal file and its -wal; False if either changed while it was copied."""

    def state() -> list[tuple[int, int] | None]:
        result: list[tuple[int, int] | None] = []
        for name in (real, real + "-wal"):
            try:
                found = os.stat(name)
            except FileNotFoundError:
                result.append(None)
            else:
                result.append((found.st_size, found.st_mtime_ns))
        return result

    before = state()
    try:
        shutil.copyfile(real, copy)
        if before[1] is not None:
            shutil.copyfile(real + "-wal", copy + "-wal")
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreError(real, f"cannot be read ({exc.strerror})") from exc
    return state() == before and not in_use(real)


async def _read_store(store: SQLiteStore, args: argparse.Namespace, shown: str = "") -> None:
    try:
        await store.open()
    except StoreError as error:
        if shown:  # name the journal, not the private copy
            raise StoreError(shown, error.problem) from None
        raise
    try:
        await _ACTIONS[args.action](store, args)
    finally:
        await store.close()


async def _stats(store: SQLiteStore, args: argparse.Namespace) -> None:
    stats = await store.stats()
    counts = {
        "events": stats.events,
        "pending": stats.pending,
        "done": stats.done,
        "dead": stats.dead,
        "idempotency_keys": stats.idempotency_keys,
    }
    consumers = await store.consumers()
    leases = await store.leases()
    text = _table(["", "count"], [[name, str(n)] for name, n in counts.items()])
    text += "\n\nLive consumers:\n" + _table(
        ["consumer", "receivers", "leases", "last seen", "expires at"],
        [
            [
                str(consumer.id),
                ", ".join(sorted({route.receiver_id for route in consumer.routes})),
                str(consumer.leases),
                _time(consumer.last_seen),
                _time(consumer.expires_at),
            ]
            for consumer in consumers
        ],
    )
    text += "\n\nLeases:\n" + _table(
        ["event id", "name", "receiver", "attempt", "consumer", "expires at"],
        [
            [
                lease.event_id,
                lease.name,
                lease.receiver_id,
                str(lease.attempt),
                str(lease.consumer),
                _time(lease.expires_at),
            ]
            for lease in leases
        ],
    )
    data: dict[str, Any] = {
        **counts,
        "consumers": [
            {
                "id": str(consumer.id),
                "routes": [[route.pattern, route.receiver_id] for route in consumer.routes],
                "registered_at": consumer.registered_at,
                "last_seen": consumer.last_seen,
                "expires_at": consumer.expires_at,
                "leases": consumer.leases,
            }
            for consumer in consumers
        ],
        "leases": [
            {
                "event_id": lease.event_id,
                "name": lease.name,
                "receiver_id": lease.receiver_id,
                "key": lease.key,
                "attempt": lease.attempt,
                "consumer": str(lease.consumer),
                "expires_at": lease.expires_at,
            }
            for lease in leases
        ],
    }
    losses = getattr(args, "losses", [])
    if not losses:
        _print(args, data, text)
        return
    lines = [f"- {escape(describe_loss(args.path, loss))}" for loss in losses]
    text += "\n\nThe journal may have lost data:\n" + "\n".join(lines)
    text += f"\n(`python -m aevents journal {args.path} forget-losses` acknowledges this)"
    _print(args, {**data, "losses": losses}, text)


async def _pending(store: SQLiteStore, args: argparse.Namespace) -> None:
    rows: list[PendingDelivery] = []
    async for delivery in store.pending():
        if args.limit and len(rows) == args.limit:
            break
        rows.append(delivery)
    _print(
        args,
        [
            {"event": _event(d.event), "receiver_id": d.receiver_id, "attempts": d.attempts}
            for d in rows
        ],
        _table(
            ["event id", "name", "receiver", "attempts", "occurred at"],
            [
                [
                    d.event.id,
                    d.event.name,
                    d.receiver_id,
                    str(d.attempts),
                    _time(d.event.occurred_at),
                ]
                for d in rows
            ],
        ),
    )


async def _dead_letters(store: SQLiteStore, args: argparse.Namespace) -> None:
    letters = await store.dead_letters(limit=args.limit or None)
    _print(
        args,
        [
            {
                "id": letter.id,
                "event": _event(letter.event),
                "receiver_id": letter.receiver_id,
                "attempts": letter.attempts,
                "error_type": letter.error_type,
                "error_message": letter.error_message,
                "failed_at": letter.failed_at,
            }
            for letter in letters
        ],
        _table(
            ["id", "event", "receiver", "attempts", "error", "failed at"],
            [
                [
                    letter.id,
                    letter.event.name,
                    letter.receiver_id,
                    str(letter.attempts),
                    f"{letter.error_type}: {letter.error_message}",
                    _time(letter.failed_at),
                ]
                for letter in letters
            ],
        ),
    )


async def _redeliver(store: SQLiteStore, args: argparse.Namespace) -> None:
    count = await store.redeliver(None if args.all else args.ids)
    _print(args, {"redelivered": count}, f"{counted(count, 'dead letter')} made pending again")


async def _prune(store: SQLiteStore, args: argparse.Namespace) -> None:
    older_than = None
    if args.older_than is not None:
        older_than = datetime.now(UTC) - timedelta(days=args.older_than)
    count = await store.prune(older_than=older_than)
    _print(args, {"pruned": count}, f"{counted(count, 'done delivery')} pruned")


async def _forget_losses(store: SQLiteStore, args: argparse.Namespace) -> None:
    forgotten = await store.forget_losses()
    _print(
        args,
        {"forgotten": forgotten},
        f"{counted(len(forgotten), 'recorded loss')} acknowledged and forgotten",
    )


_ACTIONS: dict[str, Callable[[SQLiteStore, argparse.Namespace], Awaitable[None]]] = {
    "stats": _stats,
    "pending": _pending,
    "dead-letters": _dead_letters,
    "redeliver": _redeliver,
    "prune": _prune,
    "forget-losses": _forget_losses,
}


# -- output -------------------------------------------------------------------------------


def _print(args: argparse.Namespace, data: Any, text: str, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    if args.json:
        stream.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        stream.write(text + "\n")


def _event(event: Any) -> Any:
    return orjson.loads(event.to_json())


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: str) -> str:
    """Printable and short: control characters never reach the terminal raw."""
    if not value.isprintable():
        value = repr(value)[1:-1]
    return value if len(value) <= _CELL else value[: _CELL - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(header), *cells]) for i in range(len(header))]
    lines = [header, ["-" * width for width in widths], *cells]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
