"""SQLiteStore: the leased-store conformance suite, with consumers in other processes,
and what sharing one file between processes adds: the lock, links, migration, plans."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.register_assert_rewrite("aevents._conformance_leases")

from aevents._conformance import PersistentStoreConformance  # noqa: E402
from aevents._conformance_leases import (  # noqa: E402
    ClaimAndStartConformance,
    ManualClock,
    PublishAndClaimConformance,
    TwoProcessLeasedConformance,
    claim_in_another_process,
)
from aevents._event import Event, make_event  # noqa: E402
from aevents._exceptions import (  # noqa: E402
    ConfigurationError,
    JournalLinkError,
    StoreError,
)
from aevents._policy import DeadLetter  # noqa: E402
from aevents._store import (  # noqa: E402
    Clock,
    Completed,
    ConsumerId,
    LeasedStore,
    Route,
    SQLiteStore,
    Store,
    StoreStats,
    new_consumer_id,
)
from aevents._store._sqlite_leased_sql import (  # noqa: E402
    CLAIM,
    CLAIM_EXPIRED,
    CLAIM_EXPIRED_PLAN,
    CLAIM_PLAN,
    LeasedSQL,
)
from aevents._store._sqlite_schema import SCHEMA_VERSION  # noqa: E402


def leased(directory: Path, clock: Clock) -> LeasedStore:
    """The store the suite and its child processes open: one file in ``directory``.

    Without ``reclaim_dead_pids``: the suite checks what every store promises, that a
    dead consumer's leases pass when they run out (this file checks the shortcut)."""
    return SQLiteStore(
        directory / "queue.db", clock=clock, synchronous="NORMAL", reclaim_dead_pids=False
    )


class TestLeasedSQLiteStore(
    TwoProcessLeasedConformance, PublishAndClaimConformance, ClaimAndStartConformance
):
    def make_leased_store(self, directory: Path, clock: Clock) -> LeasedStore:
        return leased(directory, clock)

    def child_store_factory(self) -> str:
        return f"{__name__}:leased"


class TestLeasedSQLiteStoreAsAJournal(PersistentStoreConformance):
    """The journal's protocol on the same file and deliveries, as MemoryStore offers both:
    what the runtime will call until it claims through leases."""

    def make_store(self, directory: Path) -> Store:
        return SQLiteStore(directory / "queue.db", synchronous="NORMAL")


# -- what sharing one file adds ------------------------------------------------------------


def _routes(*receivers: str) -> list[Route]:
    return [Route("**", receiver) for receiver in receivers]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.mark.anyio
async def test_a_symlink_opens_the_same_queue_and_a_hard_link_is_refused(
    tmp_path: Path, anyio_backend: object
) -> None:
    """Every spelling through symlinks shares one file and one -wal; a second name is refused."""
    path = tmp_path / "queue.db"
    alias = tmp_path / "alias.db"
    alias.symlink_to("queue.db")
    real, linked = SQLiteStore(path), SQLiteStore(alias)
    await real.open()
    await linked.open()
    try:
        event = make_event("shared:event", {}, {})
        await real.publish([(event, ["r"])])
        consumer = new_consumer_id()
        await linked.register(consumer, _routes("r"), ttl=60)
        assert [c.event for c in await linked.claim(consumer, 10, lease=30)] == [event]
    finally:
        await real.close()
        await linked.close()
    assert not (tmp_path / "alias.db-wal").exists()
    os.link(path, tmp_path / "second-name.db")
    with pytest.raises(JournalLinkError):
        await SQLiteStore(path).open()


@pytest.mark.anyio
async def test_a_file_that_is_not_a_queue_is_refused_naming_it(
    tmp_path: Path, anyio_backend: object
) -> None:
    """A foreign file, a newer schema and a claim without registering name the file and the fix."""
    foreign = tmp_path / "notes.txt"
    foreign.write_bytes(b"not a database at all, but long enough to have a header" * 4)
    with pytest.raises(StoreError, match="not an aevents journal") as refused:
        await SQLiteStore(foreign).open()
    assert str(foreign) in str(refused.value)
    newer = tmp_path / "newer.db"
    store = SQLiteStore(newer)
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(newer)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer aevents"):
        await SQLiteStore(newer).open()
    ours = SQLiteStore(tmp_path / "ours.db")
    await ours.open()
    try:
        with pytest.raises(StoreError, match="register it again") as unknown:
            await ours.claim(new_consumer_id(), 1, lease=30)
        assert "ours.db" in str(unknown.value)
    finally:
        await ours.close()


@pytest.mark.anyio
async def test_a_journal_is_migrated_into_a_queue(path: Path, anyio_backend: object) -> None:
    """Pending journal deliveries become ready ones in publish and key order; dead letters
    stay dead letters; done ones stay done."""
    k1, free, k2, done, dead = (
        make_event("journal:event", {"n": 1}, {}, "k"),
        make_event("journal:event", {"n": 2}, {}),
        make_event("journal:event", {"n": 3}, {}, "k"),
        make_event("journal:event", {"n": 4}, {}),
        make_event("journal:event", {"n": 5}, {}, "k"),
    )
    journal = SQLiteStore(path)
    await journal.open()
    for event in (k1, free, k2, done, dead):
        await journal.append(event, ["r"])
    await journal.start_attempts([(k1.id, "r", 2)])
    await journal.complete([(done.id, "r")])
    letter = DeadLetter("letter-1", dead, "r", 3, "builtins.ValueError", "boom", dead.occurred_at)
    await journal.dead_letter([letter])
    await journal.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as the journal wrote version 2
        for statement in (
            "DROP TABLE consumers",
            "DROP TABLE event_head",
            "DROP INDEX deliveries_free",
            "DROP INDEX deliveries_leased",
            "DROP INDEX deliveries_lane",
            "DROP INDEX deliveries_held",
            *(
                f"ALTER TABLE deliveries DROP COLUMN {column}"
                for column in ("key", "due", "holder", "lease_until", "holds_key", "started")
            ),
            "PRAGMA user_version = 2",
        ):
            conn.execute(statement)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.dead_letters() == [letter]
        assert await store.held_keys() == {}
        consumer = new_consumer_id()
        await store.register(consumer, _routes("r"), ttl=60)
        claims = await store.claim(consumer, 10, lease=30)
        assert [(c.event, c.attempt) for c in claims] == [(k1, 3), (free, 1)]
        await store.settle(consumer, [Completed(claims[0])])
        assert [c.event for c in await store.claim(consumer, 10, lease=30)] == [k2]
        assert await store.stats() == StoreStats(events=5, pending=2, done=2, dead=1)
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_a_version_4_queue_keeps_its_leases_and_free_deliveries_across_the_upgrade(
    path: Path, anyio_backend: object
) -> None:
    """Version 5 reads free deliveries and expired leases through two indexes: a queue made
    by version 4, with a lease that ran out ahead of a free delivery, is claimed as before."""
    first, second = make_event("v4:event", {"n": 1}, {}), make_event("v4:event", {"n": 2}, {})
    store = SQLiteStore(path)
    await store.open()
    holder = new_consumer_id()
    await store.register(holder, _routes("r"), ttl=60)
    await store.publish([(first, ["r"]), (second, ["r"])])
    held = await store.claim(holder, 1, lease=0.05)
    await store.start(holder, held)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as version 4 left it
        for statement in (
            "DROP INDEX deliveries_free",
            "DROP INDEX deliveries_leased",
            "CREATE INDEX deliveries_ready ON deliveries (receiver_id, event_seq) WHERE state = 0",
            "PRAGMA user_version = 4",
        ):
            conn.execute(statement)
    await anyio.sleep(0.1)  # the lease runs out
    store = SQLiteStore(path)
    await store.open()
    try:
        consumer = new_consumer_id()
        await store.register(consumer, _routes("r"), ttl=60)
        claims = await store.claim(consumer, 10, lease=30)
        assert [(c.event, c.attempt) for c in claims] == [(first, 2), (second, 1)]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"deliveries_free", "deliveries_leased"} <= names
        assert "deliveries_ready" not in names


@pytest.mark.anyio
async def test_a_version_3_queue_keeps_its_leased_attempts_counted(
    path: Path, anyio_backend: object
) -> None:
    """Version 3 counted an attempt when it was claimed: after the migration to 4, what
    it had leased counts as started, so a crash then still costs that attempt."""
    store = SQLiteStore(path, synchronous="NORMAL", reclaim_dead_pids=False)
    await store.open()
    events = [make_event("queue:event", {"n": n}, {}) for n in range(2)]
    await store.publish([(event, ["r"]) for event in events])
    consumer = new_consumer_id()
    await store.register(consumer, _routes("r"), ttl=60)
    held = await store.claim(consumer, 1, lease=0.5)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as version 3 wrote it
        conn.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE holder IS NOT NULL")
        conn.execute("DROP INDEX deliveries_free")  # version 5's: made again on the upgrade
        conn.execute("DROP INDEX deliveries_leased")
        conn.execute(
            "CREATE INDEX deliveries_ready ON deliveries (receiver_id, event_seq) WHERE state = 0"
        )
        conn.execute("ALTER TABLE deliveries DROP COLUMN started")
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    store = SQLiteStore(path, synchronous="NORMAL", reclaim_dead_pids=False)
    await store.open()
    try:
        (lease,) = await store.leases()
        assert (lease.event_id, lease.attempt) == (held[0].event.id, 1)
        await anyio.sleep(1.0)  # the lease runs out: its process died mid-attempt
        other = new_consumer_id()
        await store.register(other, _routes("r"), ttl=60)
        claims = await store.claim(other, 10, lease=30)
        assert [(c.event, c.attempt, c.lease_expired) for c in claims] == [
            (events[0], 2, True),
            (events[1], 1, False),
        ]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_journal_can_open_a_queue_file_once_its_users_are_gone(
    path: Path, anyio_backend: object
) -> None:
    """The journal reads what the queue left (pending includes leased) and writes keys the
    queue then orders by."""
    store = SQLiteStore(path)
    await store.open()
    k1 = make_event("queue:event", {}, {}, "k")
    await store.publish([(k1, ["r"])])
    await store.close()
    journal = SQLiteStore(path)
    await journal.open()
    k2 = make_event("queue:event", {}, {}, "k")
    await journal.append(k2, ["r"])
    assert [d.event async for d in journal.pending()] == [k1, k2]
    await journal.close()
    await store.open()
    try:
        consumer = new_consumer_id()
        await store.register(consumer, _routes("r"), ttl=60)
        assert [c.event for c in await store.claim(consumer, 10, lease=30)] == [k1]
    finally:
        await store.close()


def test_a_claim_reads_its_receivers_rows_through_indexes_and_sorts_nothing(path: Path) -> None:
    """The claim queries' plans: one receiver's free deliveries in publish order through an
    index (no sort), its expired leases through another, a key's earlier deliveries by
    index search, events by primary key; no scan."""
    anyio.run(_create, path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        plan = tuple(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + CLAIM, ("r", 0, 10)))
        expired = tuple(
            row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + CLAIM_EXPIRED, ("r", 0, 10))
        )
    assert plan == CLAIM_PLAN
    assert not any(line.startswith("SCAN") or "TEMP B-TREE" in line for line in plan)
    assert expired == CLAIM_EXPIRED_PLAN
    assert not any(line.startswith("SCAN") for line in expired)


async def _create(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()


@pytest.mark.anyio
async def test_concurrent_publishes_share_transactions(
    path: Path, anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: publishes from many tasks at once are written in far fewer transactions."""
    transactions: list[int] = []
    write = LeasedSQL.write

    def counting(self: LeasedSQL, requests: Sequence[tuple[Any, ...]]) -> None:
        transactions.append(len(requests))
        write(self, requests)

    monkeypatch.setattr(LeasedSQL, "write", counting)
    store = SQLiteStore(path)
    await store.open()
    try:
        events = [make_event("group:event", {"n": n}, {}) for n in range(200)]
        async with anyio.create_task_group() as group:
            for event in events:
                group.start_soon(store.publish, [(event, ["r"])])
        assert (await store.stats()).events == 200
    finally:
        await store.close()
    assert sum(transactions) == 200
    assert len(transactions) < 200
    assert max(transactions) > 1


_PUBLISH_ONE_KEY = """
import sys, anyio
from aevents._event import make_event
from aevents._store._sqlite import SQLiteStore

async def main():
    store = SQLiteStore(sys.argv[1])
    await store.open()
    sys.stdin.readline()
    firsts = set()
    for n in range(30):
        event = make_event("keyed:event", {"n": n}, {"idempotency_key": "once"})
        (first,) = await store.publish([(event, ["r"])])
        firsts.add(first.id)
    await store.close()
    print(*firsts)

anyio.run(main)
"""


def test_processes_publishing_one_idempotency_key_at_once_add_one_event(path: Path) -> None:
    """Three processes create the file and repeat a key together: one of them makes the
    schema, the UNIQUE index lets one event in, and every process gets that event back."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISH_ONE_KEY, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [child.communicate("go\n", timeout=60)[0].split() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0]
    assert len({first for output in outputs for first in output}) == 1

    async def count() -> StoreStats:
        store = SQLiteStore(path)
        await store.open()
        try:
            return await store.stats()
        finally:
            await store.close()

    assert anyio.run(count) == StoreStats(events=1, pending=1, done=0, dead=0, idempotency_keys=1)


@pytest.mark.anyio
async def test_a_killed_process_leases_pass_at_once_with_reclaim_dead_pids(
    tmp_path: Path, clock: ManualClock, anyio_backend: object
) -> None:
    """With ``reclaim_dead_pids``, the leases of a consumer on this host whose process is
    gone are claimable at once: the one it started as expired, the one it only claimed
    at its old attempt; a live one's are not."""
    events = [make_event("crash:event", {"n": n}, {}) for n in range(3)]
    store = SQLiteStore(tmp_path / "queue.db", clock=clock, reclaim_dead_pids=True)
    await store.open()
    try:
        await store.publish([(event, ["r"]) for event in events])
        dead, claimed = await claim_in_another_process(
            f"{__name__}:leased", tmp_path, clock(), ["r"], limit=2, die=True, start=1
        )
        assert [c[0] for c in claimed] == [e.id for e in events[:2]]
        here = new_consumer_id()
        await store.register(here, _routes("r"), ttl=60)
        taken = await store.claim(here, 10, lease=30)  # no time has passed
        assert [(c.event, c.attempt, c.lease_expired) for c in taken] == [
            (events[0], 2, True),
            (events[1], 1, False),
            (events[2], 1, False),
        ]
        assert [c.id for c in await store.consumers()] == [here]
        assert dead not in {str(lease.consumer) for lease in await store.leases()}
    finally:
        await store.close()


@pytest.mark.anyio
async def test_reclaim_dead_pids_leaves_a_live_process_its_leases(
    tmp_path: Path, clock: ManualClock, anyio_backend: object
) -> None:
    """A consumer whose process is alive keeps its leases until it is killed."""
    event = make_event("crash:event", {}, {})
    store = SQLiteStore(tmp_path / "queue.db", clock=clock, reclaim_dead_pids=True)
    await store.open()
    sleeper = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        await store.publish([(event, ["r"])])
        mine = new_consumer_id()
        other = ConsumerId(mine.host, sleeper.pid, "sleeper1")  # a consumer in that process
        await store.register(other, _routes("r"), ttl=60)
        claims = await store.claim(other, 1, lease=30)
        assert [c.event for c in claims] == [event]
        assert await store.start(other, claims) == []
        await store.register(mine, _routes("r"), ttl=60)
        assert await store.claim(mine, 1, lease=30) == []
        sleeper.kill()
        await sleeper.wait()  # reaped: its pid is gone
        (taken,) = await store.claim(mine, 1, lease=30)
        assert (taken.event, taken.attempt, taken.lease_expired) == (event, 2, True)
    finally:
        if sleeper.returncode is None:
            sleeper.kill()
        await sleeper.aclose()
        await store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_it_is_a_leased_store_and_checks_its_options() -> None:
    """The protocol holds statically and at run time; bad options raise ConfigurationError."""
    store: LeasedStore = SQLiteStore("unused.db")
    journal: Store = SQLiteStore("unused.db")
    assert isinstance(store, LeasedStore)
    assert isinstance(journal, Store)
    for options in ({"synchronous": "OFF"}, {"busy_timeout": -1}, {"max_batch": 0}):
        with pytest.raises(ConfigurationError, match="SQLiteStore"):
            SQLiteStore("unused.db", **options)


@pytest.mark.anyio
async def test_a_settled_batch_is_one_transaction_and_a_bad_publish_fails_alone(
    path: Path, anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settling many claims writes once; a publish repeating a stored event id fails on its
    own while the publishes committed with it go in."""
    store = SQLiteStore(path)
    await store.open()
    try:
        events = [make_event("batch:event", {"n": n}, {}) for n in range(50)]
        await store.publish([(event, ["r"]) for event in events])
        consumer = new_consumer_id()
        await store.register(consumer, _routes("r"), ttl=60)
        claims = await store.claim(consumer, 50, lease=30)
        transactions: list[int] = []
        write = LeasedSQL.write

        def counting(self: LeasedSQL, requests: Sequence[tuple[Any, ...]]) -> None:
            transactions.append(len(requests))
            write(self, requests)

        monkeypatch.setattr(LeasedSQL, "write", counting)
        assert await store.settle(consumer, [Completed(claim) for claim in claims]) == []
        assert transactions == [1]
        fresh = [make_event("batch:event", {"n": n}, {}) for n in range(3)]
        failed: list[BaseException] = []

        async def publish(batch: list[Event]) -> None:
            try:
                await store.publish([(event, ["r"]) for event in batch])
            except StoreError as error:
                failed.append(error)

        async with anyio.create_task_group() as group:
            group.start_soon(publish, fresh[:1])
            group.start_soon(publish, [fresh[1], events[0]])
            group.start_soon(publish, fresh[2:])
        assert len(failed) == 1
        assert f"event {events[0].id!r} is already stored" in str(failed[0])
        assert str(path) in str(failed[0])
        assert (await store.stats()).events == 52
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_write_lock_held_past_busy_timeout_raises_store_error_naming_it(
    path: Path, anyio_backend: object
) -> None:
    """Another connection holding the write lock makes a write wait busy_timeout, then fail
    with a StoreError naming the file and the timeout; the store goes on afterwards."""
    store = SQLiteStore(path, busy_timeout=0)
    await store.open()
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="busy_timeout=0s") as busy:
                await store.publish([(make_event("busy:event", {}, {}), ["r"])])
            assert str(path) in str(busy.value)
            other.execute("ROLLBACK")
        await store.publish([(make_event("busy:event", {}, {}), ["r"])])
        assert (await store.stats()).events == 1
    finally:
        await store.close()


@pytest.mark.anyio
async def test_both_protocols_work_on_one_set_of_deliveries(
    path: Path, anyio_backend: object
) -> None:
    """What ``append`` records can be claimed; a leased delivery is ``pending``, with its
    attempt counted once started; completing it through the journal ends its lease."""
    store = SQLiteStore(path)
    await store.open()
    try:
        first, second = make_event("both:event", {}, {}, "k"), make_event("both:event", {}, {}, "k")
        await store.append(first, ["r"])
        await store.publish([(second, ["r"])])
        consumer = new_consumer_id()
        await store.register(consumer, _routes("r"), ttl=60)
        (claim,) = await store.claim(consumer, 10, lease=30)
        assert claim.event == first  # the key's order holds across both ways in
        assert [(d.event, d.attempts) async for d in store.pending()] == [(first, 0), (second, 0)]
        assert await store.start(consumer, [claim]) == []
        assert [(d.event, d.attempts) async for d in store.pending()] == [(first, 1), (second, 0)]
        await store.complete([(first.id, "r")])
        assert await store.leases() == []
        assert [c.event for c in await store.claim(consumer, 10, lease=30)] == [second]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_version_5_queue_loses_its_per_write_index_and_trigger_keeping_positions(
    path: Path, anyio_backend: object
) -> None:
    """Version 6 indexes no done delivery and moves ``event_head`` only before a prune: a
    queue made by version 5 (its done index and head trigger) keeps its position, and no
    seq is given twice, across the upgrade and across a prune of every event."""
    store = SQLiteStore(path)
    await store.open()
    await store.publish([(make_event("v5:event", {"n": n}, {}), ["r"]) for n in range(3)])
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as version 5 left it
        for statement in (
            "CREATE INDEX deliveries_done ON deliveries (event_seq) WHERE state = 1",
            "CREATE TRIGGER event_head_moves AFTER INSERT ON events"
            " BEGIN UPDATE event_head SET head = NEW.seq WHERE head < NEW.seq; END",
            "UPDATE event_head SET head = 3",
            "PRAGMA user_version = 5",
        ):
            conn.execute(statement)
        conn.commit()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.event_position() == 3
        consumer = new_consumer_id()
        await store.register(consumer, _routes("r"), ttl=60)
        claims = await store.claim(consumer, 10, lease=30)
        await store.start(consumer, claims)
        assert await store.settle(consumer, [Completed(claim) for claim in claims]) == []
        assert await store.prune() == 3
        assert (await store.stats()).events == 0
        assert await store.event_position() == 3  # pruned seqs are not given again
        await store.publish([(make_event("v6:event", {}, {}), ["r"])])
        assert await store.event_position() == 4
        page = await store.events_after(3, 10)
        assert [event.name for event in page.events] == ["v6:event"]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert not {"deliveries_done", "event_head_moves"} & names
        assert conn.execute("SELECT head FROM event_head").fetchone()[0] == 3
