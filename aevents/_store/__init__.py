"""Persistence: the store protocols and the built-in stores (loaded on first use)."""

from typing import TYPE_CHECKING, Any

from ._protocol import (
    Backlog,
    Claim,
    Clock,
    Completed,
    Consumer,
    ConsumerId,
    DeadLettered,
    EventPage,
    Lease,
    LeasedStore,
    Outcome,
    PendingDelivery,
    Released,
    Rescheduled,
    Route,
    Store,
    StoreStats,
    new_consumer_id,
    system_clock,
)

if TYPE_CHECKING:
    from ._memory import MemoryStore
    from ._postgres import PostgresStore
    from ._redis import RedisStore
    from ._sqlite import SQLiteStore

__all__ = [
    "Backlog",
    "Claim",
    "Clock",
    "Completed",
    "Consumer",
    "ConsumerId",
    "DeadLettered",
    "EventPage",
    "Lease",
    "LeasedStore",
    "MemoryStore",
    "Outcome",
    "PendingDelivery",
    "PostgresStore",
    "RedisStore",
    "Released",
    "Rescheduled",
    "Route",
    "SQLiteStore",
    "Store",
    "StoreStats",
    "new_consumer_id",
    "system_clock",
]


def __getattr__(name: str) -> Any:
    if name == "SQLiteStore":
        from ._sqlite import SQLiteStore

        return SQLiteStore
    if name == "RedisStore":
        from ._redis import RedisStore

        return RedisStore
    if name == "MemoryStore":
        from ._memory import MemoryStore

        return MemoryStore
    if name == "PostgresStore":
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "PostgresStore needs psycopg 3: pip install 'aevents[postgres]'"
            ) from exc
        from ._postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'aevents._store' has no attribute {name!r}")
