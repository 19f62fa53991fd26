"""aevents: an in-process asynchronous event runtime for anyio (asyncio, uvloop, trio).

Publish namespaced events, subscribe async or sync receivers to names and
wildcard patterns, and let a bounded pool of workers deliver each (event,
receiver) pair independently, with retries and dead letters::

    import aevents

    @aevents.subscribe("user:account:created")
    async def send_welcome(event: aevents.Event) -> None: ...

    async with aevents.EventRuntime():
        await aevents.publish("user:account:created", payload={"user_id": 1})
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._catalog import Catalog, declared_names
from ._delivery import DeliveryInfo, current_delivery
from ._event import Event
from ._exceptions import (
    AeventsError,
    CausationDepthError,
    ConfigurationError,
    DuplicateEventError,
    DuplicateReceiverError,
    InvalidEventNameError,
    JournalInUseError,
    JournalLinkError,
    KeyInFlightError,
    PayloadError,
    QueueFullError,
    RuntimeClosedError,
    RuntimeNotRunningError,
    StoreError,
    UnknownEventError,
    WrongThreadError,
)
from ._middleware import Middleware, Publishing
from ._module import (
    publish,
    publish_many,
    publish_many_nowait,
    publish_nowait,
    publish_threadsafe,
    subscribe,
    unsubscribe,
)
from ._names import validate_name, validate_pattern
from ._policy import DeadLetter, RetryPolicy
from ._registry import Registry, Subscription, default_registry
from ._runtime import EventRuntime, RuntimeStats, current_runtime
from ._store._protocol import PendingDelivery, Store, StoreStats

if _TYPE_CHECKING:
    from ._inspect import (
        DeclaredName,
        ReceiverMatch,
        RoutingReport,
        UnmatchedPattern,
        inspect_routes,
    )
    from ._metrics import DeliveryMetrics, Histogram, Metrics, MetricsSnapshot
    from ._store._memory import MemoryStore
    from ._store._postgres import PostgresStore
    from ._store._redis import RedisStore
    from ._store._sqlite import SQLiteStore

    __version__: str


# Loaded on first use: the routing report needs difflib, metrics bisect and math.
_LAZY = {
    **dict.fromkeys(
        ("DeclaredName", "ReceiverMatch", "RoutingReport", "UnmatchedPattern", "inspect_routes"),
        "._inspect",
    ),
    **dict.fromkeys(("DeliveryMetrics", "Histogram", "Metrics", "MetricsSnapshot"), "._metrics"),
}


def __getattr__(name: str) -> _Any:
    # Loaded on first use: importlib.metadata and the SQLite store together
    # cost more at import than the whole rest of aevents.
    if name == "SQLiteStore":
        from ._store._sqlite import SQLiteStore

        return SQLiteStore
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    if name == "MemoryStore":
        from ._store._memory import MemoryStore

        return MemoryStore
    if name == "PostgresStore":
        from ._store import PostgresStore

        return PostgresStore
    if name == "RedisStore":  # needs the redis extra only when it is opened
        from ._store._redis import RedisStore

        return RedisStore
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("aevents")
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            return "0+unknown"
    raise AttributeError(f"module 'aevents' has no attribute {name!r}")


__all__ = [
    "AeventsError",
    "Catalog",
    "CausationDepthError",
    "ConfigurationError",
    "DeadLetter",
    "DeclaredName",
    "DeliveryInfo",
    "DeliveryMetrics",
    "DuplicateEventError",
    "DuplicateReceiverError",
    "Event",
    "EventRuntime",
    "Histogram",
    "InvalidEventNameError",
    "JournalInUseError",
    "JournalLinkError",
    "KeyInFlightError",
    "MemoryStore",
    "Metrics",
    "MetricsSnapshot",
    "Middleware",
    "PayloadError",
    "PendingDelivery",
    "PostgresStore",
    "Publishing",
    "QueueFullError",
    "ReceiverMatch",
    "RedisStore",
    "Registry",
    "RetryPolicy",
    "RoutingReport",
    "RuntimeClosedError",
    "RuntimeNotRunningError",
    "RuntimeStats",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreStats",
    "Subscription",
    "UnknownEventError",
    "UnmatchedPattern",
    "WrongThreadError",
    "__version__",
    "current_delivery",
    "current_runtime",
    "declared_names",
    "default_registry",
    "inspect_routes",
    "publish",
    "publish_many",
    "publish_many_nowait",
    "publish_nowait",
    "publish_threadsafe",
    "subscribe",
    "unsubscribe",
    "validate_name",
    "validate_pattern",
]
