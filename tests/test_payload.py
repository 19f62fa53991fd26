"""Payload and metadata checks: what is accepted survives an orjson round trip exactly.

Every refusal is a ``PayloadError`` (a ``TypeError``) naming the event and the
key path of the offending value. The same checks are exercised through
``EventRuntime.publish``/``publish_nowait``, which is how users meet them.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import math
import types
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aevents
from aevents._payload import DEFAULT_MAX_PAYLOAD_BYTES, MAX_DEPTH, encode_metadata, encode_payload

EVENT = "test:payload:checked"
LIMIT = 1024 * 1024

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
json_payloads = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
"""JSON-native payloads: what a journal hands back is exactly what was published."""


def same_json(left: object, right: object) -> bool:
    """Equal, with types kept apart: ``True`` is not ``1``, nor ``-0.0`` ``0.0``."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        assert isinstance(right, dict)
        return list(left) == list(right) and all(same_json(left[k], right[k]) for k in left)
    if isinstance(left, list):
        assert isinstance(right, list)
        return len(left) == len(right) and all(map(same_json, left, right))
    if isinstance(left, float):
        assert isinstance(right, float)
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    return left == right


def containers(value: object) -> Iterator[object]:
    """Every dict and list in a JSON value, the value itself included."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from containers(item)
    elif isinstance(value, list):
        yield value
        for item in value:
            yield from containers(item)


def nested(levels: int) -> dict[str, Any]:
    """A payload of ``levels`` nested dicts, the payload itself counting as the first."""
    payload: dict[str, Any] = {}
    for _ in range(levels - 1):
        payload = {"k": payload}
    return payload


class FrozenMapping(Mapping[str, Any]):
    """A read-only Mapping that is not a dict."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def self_referencing_dict() -> dict[str, Any]:
    payload: dict[str, Any] = {"ok": 1}
    payload["self"] = payload
    return payload


def self_referencing_list() -> dict[str, Any]:
    items: list[Any] = [1]
    items.append(items)
    return {"items": items}


Point = collections.namedtuple("Point", "x y")


class Price(float):
    """A float subclass: orjson refuses it."""


class Pair(tuple[int, int]):
    """A tuple subclass that is not a namedtuple: orjson refuses it too."""


class Name(str):
    """A str subclass: fine as a value, refused by orjson as a key."""


class Keys(enum.StrEnum):
    A = "a"


class Ratio(enum.Enum):
    UNKNOWN = math.nan


@dataclasses.dataclass
class Line:
    sku: str
    price: float


@dataclasses.dataclass
class Box:
    inner: object


def boxes(levels: int) -> object:
    """``levels`` dataclasses nested in one another, around an int."""
    value: object = 1
    for _ in range(levels):
        value = Box(value)
    return value


# (payload, key path, a fragment of the problem)
BAD_PAYLOADS: list[Any] = [
    pytest.param([1, 2], "payload", "got list", id="list"),
    pytest.param("payload", "payload", "got str", id="str"),
    pytest.param(42, "payload", "got int", id="int"),
    pytest.param({1: "x"}, "payload", "key 1 is an int", id="int-key"),
    pytest.param({"a": {(1, 2): "x"}}, "payload['a']", "key (1, 2) is a tuple", id="tuple-key"),
    pytest.param({"a": {True: "x"}}, "payload['a']", "key True is a bool", id="bool-key"),
    pytest.param({"a": {"b": {1, 2}}}, "payload['a']['b']", "'set'", id="set"),
    pytest.param({"a": object()}, "payload['a']", "'object'", id="object"),
    pytest.param({"a": b"bytes"}, "payload['a']", "'bytes'", id="bytes"),
    pytest.param({"a": bytearray(b"x")}, "payload['a']", "'bytearray'", id="bytearray"),
    pytest.param({"a": 1j}, "payload['a']", "'complex'", id="complex"),
    pytest.param({"x": math.nan}, "payload['x']", "nan", id="nan"),
    pytest.param({"x": math.inf}, "payload['x']", "inf", id="inf"),
    pytest.param({"x": -math.inf}, "payload['x']", "-inf", id="minus-inf"),
    pytest.param({"items": [1, 2, math.nan]}, "payload['items'][2]", "nan", id="nan-in-list"),
    pytest.param(
        {"a": {"b": [None, {"c": -math.inf}]}},
        "payload['a']['b'][1]['c']",
        "-inf",
        id="inf-deep-beside-none",
    ),
    pytest.param({"n": 2**64}, "payload['n']", "64 bits", id="int-too-big"),
    pytest.param({"n": [-(2**63) - 1]}, "payload['n'][0]", "64 bits", id="int-too-small"),
    pytest.param({"s": "a\ud800b"}, "payload['s']", "lone surrogate", id="surrogate-value"),
    pytest.param({"s": ["ok", "\udfff"]}, "payload['s'][1]", "lone surrogate", id="surrogate-list"),
    pytest.param({"\ud800": 1}, "payload", "lone surrogate", id="surrogate-key"),
    pytest.param({"a": {"\udc00": 1}}, "payload['a']", "lone surrogate", id="surrogate-inner-key"),
    pytest.param(self_referencing_dict(), "payload['self']", "itself", id="cycle-dict"),
    pytest.param(self_referencing_list(), "payload['items'][1]", "itself", id="cycle-list"),
    pytest.param({"d": datetime.timedelta(days=1)}, "payload['d']", "timedelta", id="timedelta"),
    pytest.param(
        {"t": datetime.time(1, tzinfo=datetime.UTC)}, "payload['t']", "tzinfo", id="aware-time"
    ),
    pytest.param(FrozenMapping({"a": {"b": math.nan}}), "payload['a']['b']", "nan", id="mapping"),
    pytest.param({"m": FrozenMapping({2: "x"})}, "payload['m']", "key 2", id="mapping-int-key"),
    pytest.param({"a": {Keys.A: 1}}, "payload['a']", "key <Keys.A: 'a'> is a Keys", id="enum-key"),
    pytest.param({Name("k"): 1}, "payload", "key 'k' is a Name, not str", id="str-subclass-key"),
    pytest.param({"p": Point(1, 2)}, "payload['p']", "'Point'", id="namedtuple"),
    pytest.param({"a": [Price(1.5)]}, "payload['a'][0]", "'Price'", id="float-subclass"),
    pytest.param({"t": Pair((1, 2))}, "payload['t']", "tuple subclass", id="tuple-subclass"),
    pytest.param({"r": Ratio.UNKNOWN}, "payload['r']", "nan", id="enum-nan"),
    pytest.param({"l": Line("a", math.nan)}, "payload['l'].price", "nan", id="dataclass-nan"),
    pytest.param(
        {"b": boxes(MAX_DEPTH)},
        "payload['b']" + ".inner" * (MAX_DEPTH - 1),
        f"deeper than {MAX_DEPTH}",
        id="dataclass-depth",
    ),
]


def check_error(error: aevents.PayloadError, path: str, problem: str) -> None:
    assert error.event == EVENT
    assert error.path == path
    assert problem in error.problem
    message = str(error)
    assert repr(EVENT) in message
    assert path in message


@pytest.mark.parametrize(("payload", "path", "problem"), BAD_PAYLOADS)
def test_bad_payloads_raise_payload_error_naming_event_and_key_path(
    payload: object, path: str, problem: str
) -> None:
    """Each kind of unserialisable or lossy payload is refused with the key path that caused it."""
    with pytest.raises(aevents.PayloadError) as caught:
        encode_payload(EVENT, payload, LIMIT)
    check_error(caught.value, path, problem)


def test_payload_error_is_a_type_error_and_an_aevents_error() -> None:
    """Idiomatic ``except TypeError`` and the library base class both catch it."""
    with pytest.raises(TypeError):
        encode_payload(EVENT, [1], LIMIT)
    with pytest.raises(aevents.AeventsError):
        encode_payload(EVENT, [1], LIMIT)


@pytest.mark.parametrize("value", [2**64 - 1, -(2**63), 0, -1, 2**63])
def test_ints_at_the_edges_of_64_bits_are_accepted(value: int) -> None:
    """orjson carries unsigned and signed 64-bit ints; the extremes round-trip exactly."""
    assert encode_payload(EVENT, {"n": value, "in": [value]}, LIMIT) == {"n": value, "in": [value]}


def test_none_and_the_text_null_are_accepted() -> None:
    """``None`` and strings containing ``null`` are fine; only NaN and infinities write null."""
    payload = {"none": None, "null": "null", "nested": [None, {"x": None}], "nullable": 1.5}
    assert same_json(encode_payload(EVENT, payload, LIMIT), payload)


def test_a_none_payload_is_an_empty_dict() -> None:
    """Publishing without a payload gives receivers ``{}``."""
    assert encode_payload(EVENT, None, LIMIT) == {}


def test_nesting_up_to_max_depth_is_accepted() -> None:
    """A payload ``MAX_DEPTH`` levels deep (the payload being the first) is accepted."""
    payload = nested(MAX_DEPTH)
    assert encode_payload(EVENT, payload, LIMIT) == payload
    items: list[Any] = [1]
    for _ in range(MAX_DEPTH - 2):
        items = [items]
    assert encode_payload(EVENT, {"l": items}, LIMIT) == {"l": items}


def test_nesting_deeper_than_max_depth_is_refused_with_its_path() -> None:
    """One level past ``MAX_DEPTH`` is refused, naming the path to the level that is too deep."""
    with pytest.raises(aevents.PayloadError) as caught:
        encode_payload(EVENT, nested(MAX_DEPTH + 1), LIMIT)
    check_error(caught.value, "payload" + "['k']" * MAX_DEPTH, f"deeper than {MAX_DEPTH}")


def test_deep_lists_are_refused_with_their_path() -> None:
    """Deep nesting in lists is refused the same way, with an index path."""
    items: list[Any] = []
    for _ in range(MAX_DEPTH):
        items = [items]
    with pytest.raises(aevents.PayloadError) as caught:
        encode_payload(EVENT, {"l": items}, LIMIT)
    check_error(caught.value, "payload['l']" + "[0]" * (MAX_DEPTH - 1), "deeper than")


def test_payload_exactly_at_the_size_cap_is_accepted_and_one_byte_over_is_not() -> None:
    """``max_bytes`` is the largest accepted serialised size; the error gives size and limit."""
    payload = {"text": "x" * 100, "n": [1, 2, 3]}
    size = len(orjson.dumps(payload))
    assert encode_payload(EVENT, payload, size) == payload
    with pytest.raises(aevents.PayloadError) as caught:
        encode_payload(EVENT, payload, size - 1)
    check_error(caught.value, "payload", f"{size} bytes; the limit is {size - 1}")


def test_datetimes_uuids_and_tuples_beside_none_are_accepted() -> None:
    """``None`` makes the check walk the payload; datetimes, uuids and tuples pass it too."""
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    payload = {
        "when": when,
        "day": when.date(),
        "id": uuid.UUID(int=7),
        "pair": (1, 2.5),
        "none": None,
    }
    assert encode_payload(EVENT, payload, LIMIT) == {
        "pair": [1, 2.5],
        "when": "2024-05-01T12:30:00+00:00",
        "day": "2024-05-01",
        "id": "00000000-0000-0000-0000-000000000007",
        "none": None,
    }


def test_str_subclass_values_and_enum_values_are_accepted() -> None:
    """orjson writes str subclasses and enums as their values; only as keys are they refused."""
    assert encode_payload(EVENT, {"name": Name("x"), "key": Keys.A}, LIMIT) == {
        "name": "x",
        "key": "a",
    }


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"s": "a\ud800"}, "str contains a lone surrogate, which is not valid UTF-8"),
        (self_referencing_dict(), "refers to itself (a reference cycle)"),
        ({"n": 2**64}, "int 18446744073709551616 does not fit in 64 bits"),
        ({"x": math.inf}, "float inf is not JSON (orjson would write null)"),
        ({"x": b"x"}, "value of type 'bytes' is not JSON-serialisable"),
        (
            {"x": Price(1.5)},
            "value of type 'Price' is not JSON-serialisable: orjson takes a float subclass "
            "only as a plain float, e.g. float(value)",
        ),
        (
            {"p": Point(1, 2)},
            "value of type 'Point' is not JSON-serialisable: orjson takes a tuple subclass "
            "only as a plain tuple, e.g. tuple(value)",
        ),
    ],
)
def test_problems_are_described_exactly(payload: object, problem: str) -> None:
    """The messages users see, word for word."""
    with pytest.raises(aevents.PayloadError) as caught:
        encode_payload(EVENT, payload, LIMIT)
    assert caught.value.problem == problem


def test_dataclasses_nested_up_to_max_depth_are_accepted() -> None:
    """Dataclass fields count as nesting levels, like dict keys, up to ``MAX_DEPTH``."""
    levels = MAX_DEPTH - 1  # the payload dict is level 1, each box one more
    expected: object = 1
    for _ in range(levels):
        expected = {"inner": expected}
    assert encode_payload(EVENT, {"b": boxes(levels)}, LIMIT) == {"b": expected}


def test_a_dataclass_with_a_nan_field_beside_none_is_refused() -> None:
    """A ``None`` field makes orjson's output contain null; a NaN beside it is still found."""
    with pytest.raises(aevents.PayloadError) as caught:
        encode_payload(EVENT, {"l": Line("a", math.nan), "n": None}, LIMIT)
    check_error(caught.value, "payload['l'].price", "nan")


def test_the_default_cap_is_one_mebibyte_exactly() -> None:
    """A payload serialising to exactly 1 MiB is accepted; one byte more is refused."""
    assert DEFAULT_MAX_PAYLOAD_BYTES == 1_048_576
    at_cap = {"t": "x" * (DEFAULT_MAX_PAYLOAD_BYTES - len(b'{"t":""}'))}
    assert len(orjson.dumps(at_cap)) == DEFAULT_MAX_PAYLOAD_BYTES
    assert encode_payload(EVENT, at_cap, DEFAULT_MAX_PAYLOAD_BYTES) == at_cap
    over = {"t": at_cap["t"] + "x"}
    with pytest.raises(aevents.PayloadError) as caught:
        encode_payload(EVENT, over, DEFAULT_MAX_PAYLOAD_BYTES)
    check_error(caught.value, "payload", "1048577 bytes; the limit is 1048576")


@pytest.mark.parametrize(
    "payload",
    [
        types.MappingProxyType({"a": 1, "b": [1, 2]}),
        FrozenMapping({"a": 1, "b": [1, 2]}),
        {"a": 1, "b": types.MappingProxyType({"c": FrozenMapping({"d": [1]})})},
    ],
    ids=["mappingproxy", "custom-mapping", "nested-mappings"],
)
def test_non_dict_mappings_are_accepted_and_come_back_as_dicts(payload: Mapping[str, Any]) -> None:
    """Any ``Mapping`` with str keys is a payload; receivers get plain dicts."""
    result = encode_payload(EVENT, payload, LIMIT)
    assert type(result) is dict
    assert all(type(item) is dict for item in containers(result) if not isinstance(item, list))
    assert result == orjson.loads(orjson.dumps(payload, default=dict))


def test_values_come_back_as_their_orjson_round_trip() -> None:
    """Tuples come back as lists and enums, datetimes and uuids as their JSON values."""

    class Colour(enum.Enum):
        RED = "red"

    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    ident = uuid.UUID(int=1)
    payload = {"pair": (1, (2, 3)), "colour": Colour.RED, "when": when, "id": ident}
    assert encode_payload(EVENT, payload, LIMIT) == {
        "pair": [1, [2, 3]],
        "colour": "red",
        "when": "2024-05-01T12:30:00+00:00",
        "id": "00000000-0000-0000-0000-000000000001",
    }


@settings(max_examples=150, deadline=None)
@given(json_payloads)
def test_json_native_payloads_round_trip_exactly_as_a_copy(payload: dict[str, Any]) -> None:
    """A JSON-native payload comes back equal, types included, and shares no container with it."""
    result = encode_payload(EVENT, payload, LIMIT)
    assert same_json(result, payload)
    originals = {id(item) for item in containers(payload)}
    assert not any(id(item) in originals for item in containers(result))


def test_the_result_is_independent_of_later_changes_to_the_payload() -> None:
    """Mutating what was published afterwards does not change what receivers see."""
    payload: dict[str, Any] = {"items": [1, 2], "inner": {"a": 1}}
    result = encode_payload(EVENT, payload, LIMIT)
    payload["items"].append(3)
    payload["inner"]["a"] = 2
    assert result == {"items": [1, 2], "inner": {"a": 1}}


# ------------------------------------------------------------------------ metadata


def test_metadata_is_copied_as_a_dict_of_str() -> None:
    """Good metadata comes back equal and as a new plain dict."""
    metadata = {"trace_id": "abc", "tenant": "x"}
    result = encode_metadata(EVENT, metadata)
    assert result == metadata
    assert result is not metadata
    assert type(result) is dict
    assert encode_metadata(EVENT, types.MappingProxyType(metadata)) == metadata


@pytest.mark.parametrize(
    ("metadata", "path", "problem"),
    [
        pytest.param(["a"], "metadata", "got list", id="list"),
        pytest.param("a=b", "metadata", "got str", id="str"),
        pytest.param(None, "metadata", "got NoneType", id="none"),
        pytest.param({1: "a"}, "metadata", "key 1 is an int", id="int-key"),
        pytest.param({"n": 1}, "metadata['n']", "got int", id="int-value"),
        pytest.param({"n": None}, "metadata['n']", "got NoneType", id="none-value"),
        pytest.param({"n": {"a": "b"}}, "metadata['n']", "got dict", id="dict-value"),
        pytest.param({"s": "\ud800"}, "metadata['s']", "lone surrogate", id="surrogate-value"),
        pytest.param({"\ud800": "s"}, "metadata", "lone surrogate", id="surrogate-key"),
        pytest.param({Name("k"): "v"}, "metadata", "key 'k' is a Name", id="str-subclass-key"),
    ],
)
def test_bad_metadata_raises_payload_error_naming_the_key(
    metadata: object, path: str, problem: str
) -> None:
    """Metadata must map str to str; errors name ``metadata[...]``."""
    with pytest.raises(aevents.PayloadError) as caught:
        encode_metadata(EVENT, metadata)
    check_error(caught.value, path, problem)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(), st.text()))
def test_any_str_to_str_metadata_is_accepted(metadata: dict[str, str]) -> None:
    """Every str-to-str mapping (without lone surrogates) is valid metadata."""
    assert encode_metadata(EVENT, metadata) == metadata


# ----------------------------------------------------------- through the runtime


@pytest.mark.anyio
async def test_publish_refuses_bad_payloads_with_the_same_errors(
    registry: aevents.Registry,
) -> None:
    """``publish`` and ``publish_nowait`` raise the same ``PayloadError`` and accept nothing."""
    received: list[aevents.Event] = []
    registry.subscribe(EVENT, received.append, id="recorder", inline=True)
    async with aevents.EventRuntime(registry) as runtime:
        for param in BAD_PAYLOADS:
            payload, path, problem = param.values
            assert isinstance(path, str)
            assert isinstance(problem, str)
            with pytest.raises(aevents.PayloadError) as caught:
                runtime.publish_nowait(EVENT, payload=payload)
            check_error(caught.value, path, problem)
            with pytest.raises(aevents.PayloadError) as caught:
                await runtime.publish(EVENT, payload=payload)
            check_error(caught.value, path, problem)
        await runtime.drain()
        assert runtime.stats().published == 0
    assert received == []


@pytest.mark.anyio
async def test_publish_refuses_bad_metadata(registry: aevents.Registry) -> None:
    """Metadata that is not str to str is refused by ``publish`` with its key path."""
    async with aevents.EventRuntime(registry) as runtime:
        with pytest.raises(aevents.PayloadError) as caught:
            await runtime.publish(EVENT, metadata={"n": 1})  # type: ignore[dict-item]
        check_error(caught.value, "metadata['n']", "got int")


@pytest.mark.anyio
async def test_publish_applies_max_payload_bytes(registry: aevents.Registry) -> None:
    """``EventRuntime(max_payload_bytes=...)`` caps the serialised payload size."""
    payload = {"text": "x" * 50}
    size = len(orjson.dumps(payload))
    async with aevents.EventRuntime(registry, max_payload_bytes=size) as runtime:
        await runtime.publish(EVENT, payload=payload)
        with pytest.raises(aevents.PayloadError) as caught:
            await runtime.publish(EVENT, payload={"text": "x" * 51})
        check_error(caught.value, "payload", f"the limit is {size}")


@pytest.mark.anyio
async def test_publish_applies_a_default_cap_of_one_mebibyte(registry: aevents.Registry) -> None:
    """Without ``max_payload_bytes``, 1 MiB is accepted and 1 MiB plus one byte is not."""
    text = "x" * (DEFAULT_MAX_PAYLOAD_BYTES - len(b'{"t":""}'))
    async with aevents.EventRuntime(registry) as runtime:
        await runtime.publish(EVENT, payload={"t": text})
        with pytest.raises(aevents.PayloadError) as caught:
            await runtime.publish(EVENT, payload={"t": text + "x"})
        check_error(caught.value, "payload", "the limit is 1048576")


@pytest.mark.anyio
async def test_published_event_carries_a_round_tripped_copy(registry: aevents.Registry) -> None:
    """The accepted event's payload and metadata are orjson round-trip copies of what was given."""
    payload: dict[str, Any] = {"pair": (1, 2), "inner": {"a": [1]}}
    metadata = {"trace_id": "t-1"}
    async with aevents.EventRuntime(registry) as runtime:
        event = await runtime.publish(EVENT, payload=payload, metadata=metadata)
    assert event.payload == {"pair": [1, 2], "inner": {"a": [1]}}
    assert event.payload is not payload
    assert event.payload["inner"] is not payload["inner"]
    assert event.metadata == metadata
    assert event.metadata is not metadata
