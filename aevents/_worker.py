"""``python -m aevents worker``: run an app's receivers in a process of their own.

::

    python -m aevents worker TARGET [--store PATH|URL] [--concurrency N] [--start-ahead N]
                                    [--backend asyncio|uvloop|trio]
                                    [--shutdown-timeout SECONDS] [--app-dir DIR]

The analogue of ``manage.py db_worker`` and ``celery worker -A``. It imports
TARGET, which subscribes the receivers, starts a runtime on the app's store,
runs deliveries until SIGTERM or SIGINT, then drains what it started for up
to the shutdown timeout and stops. A second signal stops it at once.

TARGET is ``package.module`` (its receivers on ``aevents.default_registry``)
or ``package.module:attribute``, where the attribute is an ``EventRuntime``
that has not started, a ``Registry``, or a function that returns an
``EventRuntime``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
import anyio.abc

from ._exceptions import ConfigurationError, StoreError
from ._registry import Registry, default_registry
from ._runtime import EventRuntime
from ._store._protocol import LeasedStore, Store
from ._store._sqlite import SQLiteStore
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

__all__ = ["add_worker_parser", "runtime_for", "serve", "show_logs", "worker_command"]

logger = logging.getLogger("aevents.worker")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
BACKENDS = ("asyncio", "uvloop", "trio")


def add_worker_parser(commands: Any) -> None:
    """The ``worker`` subcommand, on the CLI's subparsers."""
    worker = commands.add_parser(
        "worker",
        help="run an app's receivers until SIGTERM",
        description=(
            "Import TARGET, which subscribes the receivers, start a runtime on the app's "
            "store, run deliveries until SIGTERM or SIGINT, then drain and stop."
        ),
    )
    worker.add_argument(
        "target",
        metavar="TARGET",
        help="'package.module' (receivers on the default registry) or "
        "'package.module:attribute' naming an EventRuntime, a Registry or a function "
        "returning an EventRuntime",
    )
    worker.add_argument(
        "--store",
        metavar="PATH|URL",
        help="the store to consume (when TARGET is a module or a Registry): a journal "
        "file, or a postgresql:// or redis:// (rediss://) URL",
    )
    worker.add_argument(
        "--schema",
        metavar="NAME",
        help="with a postgresql:// --store: the schema of the store (default: aevents)",
    )
    worker.add_argument(
        "--prefix",
        metavar="NAME",
        help="with a redis:// --store: the key prefix of the store (default: aevents)",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="deliveries run at once (the runtime's workers; default 8)",
    )
    worker.add_argument(
        "--start-ahead",
        type=_positive_int,
        metavar="N",
        help="claims whose attempt is recorded as started ahead of the workers, so that "
        "a batch takes fewer store calls; a worker that dies counts an attempt for each "
        "(the runtime's start_ahead; default: as many as --concurrency)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="how long to drain after SIGTERM before cancelling (default 10)",
    )
    worker.add_argument("--backend", choices=BACKENDS, default="asyncio")
    worker.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="import TARGET from DIR before sys.path (default: the current directory)",
    )
    worker.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="when the app configured no logging (default: info)",
    )
    worker.add_argument(
        "--traceback", action="store_true", help="print the traceback of a TARGET that fails"
    )


def store_for(
    spec: str | None, *, schema: str | None = None, prefix: str | None = None
) -> Store | LeasedStore | None:
    """The store ``--store`` names: a journal path, or a PostgreSQL or Redis URL.

    Raises ``UsageError`` when ``--schema`` or ``--prefix`` does not fit the store, and
    ``LoadError`` when the store's extra is not installed.
    """
    if spec is None:
        if schema is not None or prefix is not None:
            raise UsageError("--schema and --prefix go with a --store URL")
        return None
    if spec.startswith(POSTGRES_URLS):
        if prefix is not None:
            raise UsageError("--prefix is for a redis:// store; a PostgreSQL store has --schema")
        try:
            from ._store import PostgresStore

            return PostgresStore(spec) if schema is None else PostgresStore(spec, schema=schema)
        except (ImportError, ConfigurationError) as error:  # no extra, or a bad schema
            raise LoadError(str(error)) from None
    if spec.startswith(REDIS_URLS):
        if schema is not None:
            raise UsageError("--schema is for a postgresql:// store; a Redis store has --prefix")
        from ._store import RedisStore

        try:
            return RedisStore(spec) if prefix is None else RedisStore(spec, prefix=prefix)
        except ConfigurationError as error:  # without the extra, or a prefix it refuses
            raise LoadError(str(error)) from None
    if schema is not None or prefix is not None:
        raise UsageError(
            "--schema and --prefix go with a postgresql:// or redis:// --store, not a journal file"
        )
    return SQLiteStore(spec)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text!r}")
    return value


def worker_command(args: argparse.Namespace) -> int:
    """``python -m aevents worker``: returns the exit code (0 after a clean stop)."""
    check_spec(args.target, "TARGET", attribute_required=False)
    use_app_dir(args.app_dir)
    show_logs(args.log_level.upper())
    try:
        target = load_target(args.target, show_traceback=args.traceback)
        runtime = runtime_for(
            target,
            args.target,
            store=store_for(args.store, schema=args.schema, prefix=args.prefix),
            concurrency=args.concurrency,
            start_ahead=args.start_ahead,
            shutdown_timeout=args.shutdown_timeout,
        )
    except LoadError as error:
        print(f"python -m aevents worker: {escape(str(error))}", file=sys.stderr)
        return 1
    backend, options = args.backend, {}
    if backend == "uvloop":
        backend, options = "asyncio", {"use_uvloop": True}
    try:
        anyio.run(serve, runtime, backend=backend, backend_options=options)
    except StoreError as error:
        print(f"python -m aevents worker: {escape(str(error))}", file=sys.stderr)
        return 1
    return 0


def show_logs(level: str = "INFO") -> None:
    """Print aevents' logs to stderr at ``level``, unless the app configured logging for them."""
    if logging.getLogger("aevents").hasHandlers():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    aevents_logger = logging.getLogger("aevents")
    aevents_logger.addHandler(handler)
    aevents_logger.setLevel(level)


def runtime_for(
    target: object,
    spec: str,
    *,
    store: Store | LeasedStore | None,
    concurrency: int | None,
    shutdown_timeout: float | None,
    start_ahead: int | None = None,
) -> EventRuntime:
    """The runtime a worker runs for ``target`` (what ``spec`` named), with the CLI's options.

    Raises ``UsageError`` when options clash with the target, and
    ``LoadError`` when the target is not something a worker can run.
    """
    if isinstance(target, EventRuntime):
        given = [
            flag
            for flag, value in (
                ("--store", store),
                ("--concurrency", concurrency),
                ("--start-ahead", start_ahead),
                ("--shutdown-timeout", shutdown_timeout),
            )
            if value is not None
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)}: TARGET {spec!r} is an EventRuntime, which has its own "
                "options; set them where it is created, or name its Registry instead"
            )
        runtime = target
    elif isinstance(target, Registry | ModuleType):
        registry = target if isinstance(target, Registry) else default_registry
        if store is None:
            raise UsageError(
                f"TARGET {spec!r} is {'a Registry' if isinstance(target, Registry) else 'a module'}"
                " and no --store was given: a worker without a store runs only what it "
                "publishes itself; pass --store PATH"
            )
        options: dict[str, Any] = {"registry": registry, "store": store}
        if concurrency is not None:
            options["workers"] = concurrency
        if start_ahead is not None:
            options["start_ahead"] = start_ahead
        if shutdown_timeout is not None:
            options["shutdown_timeout"] = shutdown_timeout
        runtime = EventRuntime(**options)
    elif callable(target):
        made = target()
        if not isinstance(made, EventRuntime):
            raise LoadError(
                f"TARGET {spec!r} returned {type(made).__name__}, not an aevents.EventRuntime"
            )
        return runtime_for(
            made,
            spec,
            store=store,
            concurrency=concurrency,
            shutdown_timeout=shutdown_timeout,
            start_ahead=start_ahead,
        )
    else:
        raise LoadError(
            f"TARGET {spec!r} is {type(target).__name__}: name a module, an EventRuntime, "
            "a Registry or a function returning an EventRuntime"
        )
    if runtime.store is None:
        raise UsageError(
            f"TARGET {spec!r} is an EventRuntime without a store: a worker without a store "
            "runs only what it publishes itself; give it store=..."
        )
    if runtime.running:
        raise LoadError(f"TARGET {spec!r} is an EventRuntime that is already running")
    return runtime


async def serve(
    runtime: EventRuntime,
    *,
    signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run ``runtime`` until one of ``signals``; drain; a second signal stops at once.

    Raises ``StoreError`` itself, not in an exception group, when the store cannot be
    opened or fails, so that the commands print its message instead of a traceback.
    """
    try:
        await _serve(runtime, signals=signals, ready=ready)
    except BaseExceptionGroup as group:
        failures, rest = group.split(StoreError)
        if failures is None or rest is not None:
            raise
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _serve(
    runtime: EventRuntime,
    *,
    signals: tuple[signal.Signals, ...],
    ready: Callable[[], None] | None,
) -> None:
    identity = f"{socket.gethostname()}:{os.getpid()}"
    with anyio.open_signal_receiver(*signals) as received:
        async with anyio.create_task_group() as tasks:
            stop = anyio.Event()

            async def watch() -> None:
                async for signum in received:
                    name = signal.Signals(signum).name
                    if not stop.is_set():
                        logger.info(
                            "worker %s: %s received, draining for up to %s s "
                            "(send it again to stop at once)",
                            identity,
                            name,
                            runtime.shutdown_timeout,
                        )
                        stop.set()
                    else:
                        logger.warning("worker %s: %s received again, stopping now", identity, name)
                        tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            async with runtime:
                receivers = sorted({sub.receiver_id for sub in runtime.registry.subscriptions()})
                logger.info(
                    "worker %s started: %d receivers (%s), %d at once, store %r",
                    identity,
                    len(receivers),
                    ", ".join(receivers) or "none",
                    runtime.workers,
                    runtime.store,
                )
                if ready is not None:
                    ready()
                await stop.wait()
            stats = runtime.stats()
            logger.info(
                "worker %s stopped: %d delivered, %d failed, %d dead-lettered",
                identity,
                stats.delivered,
                stats.failed,
                stats.dead,
            )
            tasks.cancel_scope.cancel()
