"""A MemoryStore that offers only the journal protocol, for tests of the journal path.

``MemoryStore`` implements both store protocols, and a runtime uses a store that
implements ``LeasedStore`` through leases. The journal path (replay at start,
keyed deliveries in the runtime's lanes) is what ``SQLiteStore`` still takes;
tests of its internals use this store to keep running it in memory.
"""

from __future__ import annotations

from typing import Any

from aevents import MemoryStore

__all__ = ["JournalMemoryStore"]


class JournalMemoryStore(MemoryStore):
    """``MemoryStore`` without the ``LeasedStore`` methods: the runtime journals through it."""

    # Setting a protocol method to None opts a class out of a runtime-checkable protocol.
    publish: Any = None
    claim: Any = None
