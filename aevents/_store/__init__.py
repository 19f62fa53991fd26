"""Persistence: the store protocol and the built-in stores (loaded on first use)."""

from typing import TYPE_CHECKING, Any

from ._protocol import PendingDelivery, Store, StoreStats

if TYPE_CHECKING:
    from ._memory import MemoryStore
    from ._sqlite import SQLiteStore

__all__ = ["MemoryStore", "PendingDelivery", "SQLiteStore", "Store", "StoreStats"]


def __getattr__(name: str) -> Any:
    if name == "SQLiteStore":
        from ._sqlite import SQLiteStore

        return SQLiteStore
    if name == "MemoryStore":
        from ._memory import MemoryStore

        return MemoryStore
    raise AttributeError(f"module 'aevents._store' has no attribute {name!r}")
