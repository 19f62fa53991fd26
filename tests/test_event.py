"""The event: a frozen, slotted value with sortable unique ids and a lossless orjson form."""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest.mock import patch

import anyio
import attrs
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aevents
from aevents import _event
from aevents._event import make_event, new_event_id
from tests.test_names import names
from tests.test_payload import json_payloads, same_json

ID_FORMAT = re.compile(r"[0-9a-f]{28}")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NODE_BITS = 0xFFFFFF


def sample_event(**changes: Any) -> aevents.Event:
    fields: dict[str, Any] = {
        "id": new_event_id(),
        "name": "user:account:created",
        "payload": {"user_id": 1, "tags": ["a", "b"], "profile": {"age": 30.5, "admin": False}},
        "occurred_at": datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
        "metadata": {"trace_id": "abc"},
    }
    fields.update(changes)
    return aevents.Event(**fields)


def sample_json(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = orjson.loads(sample_event().to_json())
    raw.update(changes)
    return raw


# -------------------------------------------------------------------- the value


def test_event_is_frozen() -> None:
    """Assigning to any field raises ``FrozenInstanceError``."""
    event = sample_event()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.name = "user:account:deleted"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.payload = {}  # type: ignore[misc]
    assert event.name == "user:account:created"


def test_event_is_slotted() -> None:
    """Events have no per-instance ``__dict__``, so no stray attribute can be attached."""
    event = sample_event()
    assert "__slots__" in vars(aevents.Event)
    assert not hasattr(event, "__dict__")
    with pytest.raises(AttributeError):
        object.__setattr__(event, "extra", 1)


def test_event_has_the_contract_fields() -> None:
    """An event carries ``id``, ``name``, ``payload``, ``occurred_at``, ``metadata`` and ``key``."""
    assert [field.name for field in attrs.fields(aevents.Event)] == [
        "id",
        "name",
        "payload",
        "occurred_at",
        "metadata",
        "key",
    ]


def test_the_ordering_key_round_trips_and_is_left_out_when_absent() -> None:
    """``to_json`` writes ``key`` only when set; ``from_json`` reads both forms back."""
    keyed = make_event("a:b", {}, {}, "user:42")
    assert aevents.Event.from_json(keyed.to_json()) == keyed
    assert aevents.Event.from_json(keyed.to_json()).key == "user:42"
    plain = make_event("a:b", {}, {})
    assert b'"key"' not in plain.to_json()
    assert aevents.Event.from_json(plain.to_json()).key is None
    with pytest.raises(aevents.PayloadError, match=r"event\['key'\]: expected str"):
        aevents.Event.from_json(keyed.to_json().replace(b'"user:42"', b"42"))


def test_metadata_defaults_to_empty() -> None:
    """Built without metadata, an event has an empty mapping, not a shared one."""
    first = aevents.Event("id-1", "a:b", {}, datetime.now(UTC))
    second = aevents.Event("id-2", "a:b", {}, datetime.now(UTC))
    assert first.metadata == {}
    assert first.metadata is not second.metadata


def test_events_compare_by_value_and_hash_for_sets() -> None:
    """Equal events hash equally, so sets and dict keys deduplicate them."""
    event = sample_event()
    twin = aevents.Event.from_json(event.to_json())
    other = sample_event()
    assert event == twin
    assert hash(event) == hash(twin)
    assert event != other
    assert {event, twin, other} == {event, other}
    assert len({event, twin, other}) == 2
    assert {event: "seen"}[twin] == "seen"


def test_events_with_unhashable_payloads_still_hash() -> None:
    """The hash ignores payload and metadata, which are dicts."""
    event = sample_event(payload={"nested": {"list": [1, 2]}}, metadata={"a": "b"})
    assert hash(event) == hash(sample_event(id=event.id, payload={}, metadata={}))


def test_correlation_id_defaults_to_the_event_id() -> None:
    """A root event correlates with itself."""
    event = sample_event(metadata={})
    assert event.correlation_id == event.id


def test_correlation_and_causation_ids_come_from_metadata() -> None:
    """Given ``correlation_id`` and ``causation_id`` metadata, the properties return them."""
    event = sample_event(metadata={"correlation_id": "root", "causation_id": "parent"})
    assert event.correlation_id == "root"
    assert event.causation_id == "parent"


def test_causation_id_is_none_for_a_root_event() -> None:
    """An event published outside any receiver has no cause."""
    assert sample_event(metadata={}).causation_id is None


# ------------------------------------------------------------------------ ids


def test_ids_are_28_lowercase_hex_digits() -> None:
    """Ids are fixed-width hex, so string order is numeric order."""
    assert ID_FORMAT.fullmatch(new_event_id())
    assert ID_FORMAT.fullmatch(make_event("a:b", {}, {}).id)


def test_ids_are_unique_and_strictly_increasing() -> None:
    """Ids minted one after another in a process are unique and sort in creation order."""
    ids = [new_event_id() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(earlier < later for earlier, later in itertools.pairwise(ids))


def test_event_ids_from_both_mints_interleave_in_order() -> None:
    """``make_event`` (the hot path) and ``new_event_id`` share one ordered sequence."""
    ids: list[str] = []
    for index in range(5_000):
        ids.append(new_event_id() if index % 2 else make_event("a:b", {}, {}).id)
    assert all(earlier < later for earlier, later in itertools.pairwise(ids))


def test_ids_encode_their_creation_time() -> None:
    """The leading bits of an id are the wall clock in nanoseconds when it was minted."""
    before = time.time_ns()
    minted = int(new_event_id(), 16) >> 48
    after = time.time_ns()
    assert before <= minted <= after


def test_made_events_are_stamped_now_in_utc() -> None:
    """``make_event`` stamps a timezone-aware UTC time and keeps what it was given."""
    before = datetime.now(UTC)
    event = make_event("a:b", {"x": 1}, {"m": "v"})
    after = datetime.now(UTC)
    assert event.occurred_at.tzinfo is UTC
    assert before <= event.occurred_at <= after
    assert (event.name, event.payload, event.metadata) == ("a:b", {"x": 1}, {"m": "v"})


def _in_a_forked_child(task: Any) -> str:
    """What ``task()`` returns in a forked child process, read back through a pipe."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, Python 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, task().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


def _mint_both_ways() -> list[str]:
    return [new_event_id() if n % 2 else make_event("a:b", {}, {}).id for n in range(200)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_mints_different_ids() -> None:
    """A child process reseeds its node bits, so parent and child never mint the same id."""
    child_ids = _in_a_forked_child(lambda: ",".join(_mint_both_ways())).split(",")
    parent_ids = _mint_both_ways()
    assert len(child_ids) == 200
    assert not set(parent_ids) & set(child_ids)
    assert {int(ident, 16) & NODE_BITS for ident in child_ids} != {
        int(ident, 16) & NODE_BITS for ident in parent_ids
    }
    assert len({int(ident, 16) & NODE_BITS for ident in child_ids}) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_an_event_made_before_a_fork_reads_the_same_in_parent_and_child() -> None:
    """An event made before a fork and first read in the child reads as it does in the parent."""
    made = make_event("a:b", {}, {})
    in_child = _in_a_forked_child(lambda: f"{made.id} {made.occurred_at.isoformat()}")
    assert in_child == f"{made.id} {made.occurred_at.isoformat()}"


# ------------------------------------------------ published events: stamped at publish


def stamped_at(event: aevents.Event) -> int:
    """The nanosecond clock reading an event's id encodes."""
    return int(event.id, 16) >> 48


def test_a_made_event_equals_an_explicit_event_of_its_values() -> None:
    """An event built from a made event's values equals it, hashes alike and prints alike."""
    made = make_event("a:b", {"x": 1}, {"m": "v"}, "user:42")
    explicit = aevents.Event(
        made.id, made.name, made.payload, made.occurred_at, made.metadata, made.key
    )
    assert explicit == made
    assert made == explicit
    assert hash(explicit) == hash(made)
    assert repr(explicit) == repr(made)
    assert explicit.to_json() == made.to_json()


def test_an_explicit_event_keeps_exactly_what_it_was_given() -> None:
    """An event built with an ``id`` and ``occurred_at`` returns those very objects, unchecked."""
    moment = datetime(2024, 5, 1, tzinfo=UTC)
    event = aevents.Event("id-1", "a:b", {}, moment)
    assert event.id == "id-1"
    assert event.occurred_at is moment
    odd = aevents.Event(42, "a:b", {}, "not a time")  # type: ignore[arg-type]
    assert (odd.id, odd.occurred_at) == (42, "not a time")  # type: ignore[comparison-overlap]


def test_the_first_read_of_id_and_occurred_at_is_kept() -> None:
    """Reading ``id`` or ``occurred_at`` again returns the very object the first read gave."""
    made = make_event("a:b", {}, {})
    assert made.id is made.id
    assert made.occurred_at is made.occurred_at


def test_id_and_occurred_at_name_the_same_instant() -> None:
    """An event's time is the instant its id encodes, to the microsecond, either read first."""
    events = [make_event("a:b", {}, {}) for _ in range(2_000)]
    for index, event in enumerate(events):
        if index % 2:
            assert event.occurred_at.tzinfo is UTC  # the time read before the id
        assert event.occurred_at == EPOCH + timedelta(microseconds=stamped_at(event) // 1000)
        assert event.occurred_at.tzinfo is UTC


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.booleans())
@example(0, False)
@example(999_999_999, True)
@example(1_000_000_000, True)
@example(1_714_566_615_999_999_999, False)
@example(2**64 - 1, True)
def test_any_clock_reading_gives_an_id_and_a_time_that_agree(ns: int, time_first: bool) -> None:
    """For any nanosecond clock reading, the id encodes it and the time is its UTC microsecond."""
    with patch.object(_event, "_time_ns", lambda: ns):
        event = make_event("a:b", {}, {})
    if time_first:
        assert event.occurred_at == EPOCH + timedelta(microseconds=ns // 1000)
    assert ID_FORMAT.fullmatch(event.id)
    assert stamped_at(event) == ns
    assert event.occurred_at == EPOCH + timedelta(microseconds=ns // 1000)
    assert event.occurred_at.tzinfo is UTC


def test_times_are_right_across_seconds_and_a_clock_stepped_back() -> None:
    """Clock readings that cross second boundaries, jump and step back each get their own time."""
    second = 1_714_566_615 * 10**9
    readings = [second - 1, second, second + 999_999_999, second + 10**9, second - 10**9, 0, second]
    for ns in readings:
        with patch.object(_event, "_time_ns", lambda: ns):  # noqa: B023 - used at once
            event = make_event("a:b", {}, {})
        assert event.occurred_at == EPOCH + timedelta(microseconds=ns // 1000)


def test_made_events_sort_by_creation_whatever_order_they_are_read_in() -> None:
    """Ids and times of events made one after another never go backwards; ids never repeat."""
    events = [make_event("a:b", {}, {}) for _ in range(20_000)]
    ids = [event.id for event in reversed(events)][::-1]
    assert all(earlier < later for earlier, later in itertools.pairwise(ids))
    times = [event.occurred_at for event in events]
    assert times == sorted(times)


def test_an_unread_made_event_round_trips_through_json() -> None:
    """``from_json(to_json())`` of a made event gives back its id, time and bytes exactly."""
    made = make_event("a:b", {"x": 1}, {}, "user:42")
    data = made.to_json()
    back = aevents.Event.from_json(data)
    assert (back.id, back.occurred_at) == (made.id, made.occurred_at)
    assert back == made
    assert hash(back) == hash(made)
    assert back.to_json() == data


@pytest.mark.anyio
async def test_unread_made_events_come_back_from_a_journal_unchanged(tmp_path: Path) -> None:
    """Events appended to a SQLite journal before any read come back with the same id and time."""
    made = [make_event("a:b", {"n": n}, {}) for n in range(20)]
    store = aevents.SQLiteStore(tmp_path / "journal.db")
    await store.open()
    try:
        for event in made:
            await store.append(event, ["r"])
    finally:
        await store.close()
    reopened = aevents.SQLiteStore(tmp_path / "journal.db")
    await reopened.open()
    try:
        with anyio.fail_after(30):
            back = [delivery.event async for delivery in reopened.pending()]
    finally:
        await reopened.close()
    assert [(event.id, event.occurred_at) for event in back] == [
        (event.id, event.occurred_at) for event in made
    ]
    assert back == made


def test_made_events_compare_and_hash_by_value() -> None:
    """A made event equals its copies and hashes like them; another made event differs."""
    made = make_event("a:b", {}, {})
    other = make_event("a:b", {}, {})
    copies = [attrs.evolve(made), aevents.Event.from_json(made.to_json())]
    assert all(copy == made and hash(copy) == hash(made) for copy in copies)
    assert made != other
    assert len({made, other, *copies}) == 2


def test_the_repr_of_a_made_event_shows_its_id_and_time() -> None:
    """``repr`` of an event no one has read shows its id and time, not a placeholder."""
    made = make_event("a:b", {}, {})
    text = repr(made)
    assert f"id={made.id!r}" in text
    assert f"occurred_at={made.occurred_at!r}" in text
    assert "object at" not in text


def test_a_made_event_is_frozen_before_and_after_its_first_read() -> None:
    """Assigning ``id`` or ``occurred_at`` raises, whether or not they were read yet."""
    made = make_event("a:b", {}, {})
    for _ in range(2):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            made.id = "other"  # type: ignore[misc]
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            made.occurred_at = EPOCH  # type: ignore[misc]
        assert ID_FORMAT.fullmatch(made.id)


def test_a_made_event_is_an_event_whose_every_field_is_frozen() -> None:
    """``make_event`` fills its slots through a builder class: what it returns is an
    ``Event`` itself (not a subclass), and no field can be set or deleted."""
    made = make_event("a:b", {"n": 1}, {"m": "v"}, "k")
    assert type(made) is aevents.Event
    for field in attrs.fields(aevents.Event):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(made, field.name, None)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            delattr(made, field.name)
    assert attrs.evolve(made) == made


def test_threads_making_events_at_once_get_unique_ordered_ids() -> None:
    """Events made in eight threads at once have unique ids, each thread's in creation order."""
    barrier = threading.Barrier(8)

    def make_many(_: int) -> list[aevents.Event]:
        barrier.wait(timeout=30)
        return [make_event("a:b", {}, {}) for _ in range(2_000)]

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(make_many, range(8)))
    for batch in batches:
        ids = [event.id for event in batch]
        assert all(earlier < later for earlier, later in itertools.pairwise(ids))
    everything = [event for batch in batches for event in batch]
    assert len({event.id for event in everything}) == len(everything)
    assert all(
        event.occurred_at == EPOCH + timedelta(microseconds=stamped_at(event) // 1000)
        for event in everything
    )


def test_threads_racing_to_read_an_event_first_all_see_the_same_values() -> None:
    """Eight threads reading the same unread events at once all get equal ids and times."""
    events = [make_event("a:b", {}, {}) for _ in range(500)]
    barrier = threading.Barrier(8)

    def read_all(_: int) -> list[tuple[str, datetime]]:
        barrier.wait(timeout=30)
        return [(event.id, event.occurred_at) for event in events]

    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(read_all, range(8)))
    assert all(reads == seen[0] for reads in seen)
    assert seen[0] == [(event.id, event.occurred_at) for event in events]


# ------------------------------------------------------------------ orjson form


def test_to_json_is_orjson_bytes_of_every_field() -> None:
    """``to_json`` writes one JSON object with each field, the time in ISO 8601 with its offset."""
    event = sample_event()
    assert orjson.loads(event.to_json()) == {
        "id": event.id,
        "name": "user:account:created",
        "payload": {"user_id": 1, "tags": ["a", "b"], "profile": {"age": 30.5, "admin": False}},
        "occurred_at": "2024-05-01T12:30:15.123456+00:00",
        "metadata": {"trace_id": "abc"},
    }


utc_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(
    names(),
    json_payloads,
    utc_datetimes,
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
)
def test_events_round_trip_through_json_without_loss(
    name: str, payload: dict[str, Any], occurred_at: datetime, metadata: dict[str, str]
) -> None:
    """``from_json(to_json())`` gives an equal event: same payload types, same UTC time."""
    event = aevents.Event(new_event_id(), name, payload, occurred_at, metadata)
    back = aevents.Event.from_json(event.to_json())
    assert back == event
    assert same_json(back.payload, payload)
    assert back.occurred_at == occurred_at
    assert back.occurred_at.utcoffset() == timedelta(0)
    assert back.metadata == metadata


def test_from_json_accepts_str_as_well_as_bytes() -> None:
    """``from_json`` reads the text form too."""
    event = sample_event()
    assert aevents.Event.from_json(event.to_json().decode()) == event


def test_from_json_normalises_other_offsets_to_utc() -> None:
    """A time written with another offset comes back as the same instant in UTC."""
    local = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    event = aevents.Event.from_json(orjson.dumps(sample_json(occurred_at=local.isoformat())))
    assert event.occurred_at == local
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.hour == 12


def _without(key: str) -> bytes:
    raw = sample_json()
    del raw[key]
    return orjson.dumps(raw)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="garbage"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
        pytest.param(b'{"id": "x"', id="truncated"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(_without("id"), id="missing-id"),
        pytest.param(_without("name"), id="missing-name"),
        pytest.param(_without("payload"), id="missing-payload"),
        pytest.param(_without("occurred_at"), id="missing-occurred-at"),
        pytest.param(_without("metadata"), id="missing-metadata"),
        pytest.param(orjson.dumps(sample_json(id=1)), id="int-id"),
        pytest.param(orjson.dumps(sample_json(name=None)), id="null-name"),
        pytest.param(orjson.dumps(sample_json(payload=[1])), id="list-payload"),
        pytest.param(orjson.dumps(sample_json(metadata=["a"])), id="list-metadata"),
        pytest.param(orjson.dumps(sample_json(metadata={"a": 1})), id="int-metadata-value"),
        pytest.param(orjson.dumps(sample_json(occurred_at=1714566615)), id="epoch-time"),
        pytest.param(orjson.dumps(sample_json(occurred_at="yesterday")), id="not-iso-time"),
        pytest.param(orjson.dumps(sample_json(occurred_at="2024-05-01T12:30:15")), id="naive-time"),
    ],
)
def test_from_json_refuses_anything_that_is_not_an_event(data: bytes) -> None:
    """Garbage, missing or mistyped fields and naive times raise ``PayloadError``."""
    with pytest.raises(aevents.PayloadError):
        aevents.Event.from_json(data)


def test_from_json_errors_name_the_event_and_the_field() -> None:
    """The error says which event and which field is wrong."""
    with pytest.raises(aevents.PayloadError) as caught:
        aevents.Event.from_json(orjson.dumps(sample_json(occurred_at="2024-05-01T12:30:15")))
    assert caught.value.event == "user:account:created"
    assert "occurred_at" in str(caught.value)
    assert "time zone" in str(caught.value)
