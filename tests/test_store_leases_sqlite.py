"""SQLiteLeasedStore: the leased-store conformance suite, with consumers in other processes,
and what sharing one file between processes adds: the lock, links, migration, plans."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.register_assert_rewrite("aevents._conformance_leases")

from aevents._conformance_leases import TwoProcessLeasedConformance  # noqa: E402
from aevents._store import Clock, LeasedStore  # noqa: E402
from aevents._store._sqlite_leased import SQLiteLeasedStore  # noqa: E402


def leased(directory: Path, clock: Clock) -> LeasedStore:
    """The store the suite and its child processes open: one file in ``directory``."""
    return SQLiteLeasedStore(directory / "queue.db", clock=clock, synchronous="NORMAL")


class TestLeasedSQLiteStore(TwoProcessLeasedConformance):
    def make_leased_store(self, directory: Path, clock: Clock) -> LeasedStore:
        return leased(directory, clock)

    def child_store_factory(self) -> str:
        return f"{__name__}:leased"
