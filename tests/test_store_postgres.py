"""PostgresStore: the leased-store conformance suite (with consumers in other processes)
and the journal's, each test in a schema of its own, dropped after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("aevents._conformance_leases", "aevents._conformance")

from aevents._conformance import PersistentStoreConformance  # noqa: E402
from aevents._conformance_leases import TwoProcessLeasedConformance  # noqa: E402
from aevents._store import Clock, LeasedStore, PostgresStore, Store  # noqa: E402

from .pg import drop_schema, leased, schema_for  # noqa: E402


@pytest.fixture(autouse=True)
def _own_schema(postgres_dsn: str, tmp_path: Path) -> Iterator[None]:
    """Each test's schema is dropped once its stores are closed."""
    yield
    drop_schema(postgres_dsn, schema_for(tmp_path))


class TestLeasedPostgresStore(TwoProcessLeasedConformance):
    def make_leased_store(self, directory: Path, clock: Clock) -> LeasedStore:
        return leased(directory, clock)

    def child_store_factory(self) -> str:
        return "tests.pg:leased"


class TestPostgresStoreAsAJournal(PersistentStoreConformance):
    def make_store(self, directory: Path) -> Store:
        from .services import POSTGRES

        return PostgresStore(POSTGRES.url, schema=schema_for(directory))
