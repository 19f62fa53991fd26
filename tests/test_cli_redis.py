"""``python -m aevents journal redis://...``: the journal commands on a RedisStore."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import anyio
import orjson
import pytest

from aevents._cli import main
from aevents._event import Event, make_event
from aevents._policy import DeadLetter
from aevents._store import Completed, DeadLettered, Route, StoreStats, new_consumer_id
from aevents._store._redis import RedisStore
from tests.services import delete_redis_prefix


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards."""
    name = "aevents-test-" + os.urandom(6).hex()
    yield name
    anyio.run(delete_redis_prefix, redis_url, name)


def fill(url: str, prefix: str) -> tuple[list[Event], str]:
    """Three events to receivers audit and mail: one done for both, one dead for audit, one
    leased to a live consumer (audit) and ready (mail). Returns them and the consumer id."""
    made = [make_event("user.created", {"n": n}, {}) for n in range(3)]

    async def write() -> str:
        store = RedisStore(url, prefix=prefix, retention=None)
        await store.open()
        try:
            await store.publish([(event, ["audit", "mail"]) for event in made])
            consumer = new_consumer_id()
            await store.register(consumer, [Route("user.*", "audit")], ttl=600)
            first, second, third = await store.claim(consumer, 3, lease=600)
            await store.start(consumer, [second])
            letter = DeadLetter(
                "letter-1", made[1], "audit", 1, "builtins.ValueError", "boom", datetime.now(UTC)
            )
            await store.settle(consumer, [Completed(first), DeadLettered(second, letter)])
            mail = new_consumer_id()
            await store.register(mail, [Route("user.*", "mail")], ttl=600)
            claims = await store.claim(mail, 1, lease=600)
            await store.settle(mail, [Completed(claim) for claim in claims])
            await store.unregister(mail)
            assert third.event == made[2]
            return str(consumer)
        finally:
            await store.close()

    return made, anyio.run(write)


def stats(url: str, prefix: str) -> StoreStats:
    async def read() -> StoreStats:
        store = RedisStore(url, prefix=prefix, retention=None)
        await store.open()
        try:
            return await store.stats()
        finally:
            await store.close()

    return anyio.run(read)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_pending_and_dead_letters_read_a_redis_store(
    redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats (with the live consumer and its lease), pending and dead-letters take a
    redis:// URL and --prefix like a journal path."""
    made, consumer = fill(redis_url, prefix)
    journal = ("journal", redis_url, "--prefix", prefix)
    code, out, err = run(capsys, *journal, "stats", "--json")
    assert code == 0, err
    data = orjson.loads(out)
    assert {name: data[name] for name in ("events", "pending", "done", "dead")} == {
        "events": 3,
        "pending": 3,
        "done": 2,
        "dead": 1,
    }
    assert [(c["id"], c["leases"]) for c in data["consumers"]] == [(consumer, 1)]
    assert [
        (lease["event_id"], lease["receiver_id"], lease["consumer"]) for lease in data["leases"]
    ] == [(made[2].id, "audit", consumer)]
    code, out, _ = run(capsys, *journal, "stats")
    assert code == 0
    assert consumer in out
    assert made[2].id in out
    code, out, _ = run(capsys, *journal, "pending", "--json")
    assert code == 0
    assert [
        (row["event"]["id"], row["receiver_id"], row["attempts"]) for row in orjson.loads(out)
    ] == [
        (made[1].id, "mail", 0),
        (made[2].id, "audit", 0),
        (made[2].id, "mail", 0),
    ]
    code, out, _ = run(capsys, *journal, "pending", "--limit", "1", "--json")
    assert len(orjson.loads(out)) == 1
    code, out, _ = run(capsys, *journal, "dead-letters", "--json")
    assert code == 0
    (letter,) = orjson.loads(out)
    assert (letter["id"], letter["event"]["id"], letter["receiver_id"], letter["attempts"]) == (
        "letter-1",
        made[1].id,
        "audit",
        1,
    )


def test_redeliver_and_prune_write_to_a_redis_store(
    redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """redeliver makes the dead letter pending again; prune deletes the done deliveries."""
    made, _ = fill(redis_url, prefix)
    journal = ("journal", redis_url, "--prefix", prefix)
    code, out, err = run(capsys, *journal, "redeliver", "letter-1", "--json")
    assert (code, orjson.loads(out)) == (0, {"redelivered": 1}), err
    assert stats(redis_url, prefix) == StoreStats(events=3, pending=4, done=2, dead=0)
    code, out, _ = run(capsys, *journal, "pending", "--json")
    assert (made[1].id, "audit") in {
        (row["event"]["id"], row["receiver_id"]) for row in orjson.loads(out)
    }
    code, out, _ = run(capsys, *journal, "prune", "--json")
    assert (code, orjson.loads(out)) == (0, {"pruned": 2})
    assert stats(redis_url, prefix) == StoreStats(events=2, pending=4, done=0, dead=0)
    code, _, err = run(capsys, *journal, "forget-losses")
    assert code == 2
    assert "Redis store has none" in err


def test_a_password_in_a_redis_url_is_never_printed(
    redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused login fails with exit 1, naming the URL with *** for the password."""
    secret = "s3cret-" + os.urandom(4).hex()
    url = redis_url.replace("redis://", f"redis://someone:{secret}@", 1)
    for action in ("stats", "pending", "prune"):
        code, out, err = run(capsys, "journal", url, "--prefix", prefix, action)
        assert code == 1
        assert secret not in out + err
        assert "someone:***@" in err
