"""Event names and subscription patterns: the grammar, validation and the ``*``/``**`` matchers.

The matcher is checked against ``reference_matches``, a deliberately naive
recursive matcher over ``(separator, segment)`` tokens that spells out the
documented semantics; ``tests.test_registry`` reuses it and the strategies.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aevents
from aevents._names import MAX_NAME_LENGTH, compile_pattern, first_segment

SEGMENT_CHARS = string.ascii_letters + string.digits + "_-"
SEPARATORS = ":."

Token = tuple[str, str]  # (separator before the segment, "" for the first; segment)


def tokens(text: str) -> tuple[Token, ...]:
    """Split a valid name or pattern into ``(separator, segment)`` pairs."""
    parts = re.split(r"([:.])", text)
    return tuple(zip(["", *parts[1::2]], parts[::2], strict=True))


def reference_matches(pattern: str, name: str) -> bool:
    """The documented semantics, written for clarity rather than speed.

    ``*`` is exactly one segment; ``**`` is zero or more. A wildcard's first
    segment follows the pattern's separator literally; the segments after it
    (inside what ``**`` spans) may follow either separator. A ``**`` spanning
    nothing vanishes with its separator (a leading one takes the following
    separator with it instead).
    """
    return reference_match(tokens(pattern), tokens(name))


def reference_match(pattern: tuple[Token, ...], name: tuple[Token, ...]) -> bool:
    """``reference_matches`` on already split tokens."""
    if not pattern:
        return not name
    (separator, segment), rest = pattern[0], pattern[1:]
    if segment == "**":
        # Spanning nothing: a leading "**" takes the next separator with it.
        without = (("", rest[0][1]), *rest[1:]) if separator == "" and rest else rest
        if reference_match(without, name):
            return True
        if not name or name[0][0] != separator:
            return False
        return any(reference_match(rest, name[count:]) for count in range(1, len(name) + 1))
    if not name or name[0][0] != separator:
        return False
    return segment in ("*", name[0][1]) and reference_match(rest, name[1:])


def join(segments: list[str], separators: list[str]) -> str:
    """``a``, ``[b, c]`` and ``[":", "."]`` make ``a:b.c``."""
    text = segments[0]
    for separator, segment in zip(separators, segments[1:], strict=False):
        text += separator + segment
    return text


# Small alphabets make matches likely; the random segments keep the grammar honest.
random_segments = st.text(SEGMENT_CHARS, min_size=1, max_size=6)
name_segments = st.one_of(st.sampled_from(["a", "b", "c"]), st.sampled_from("ab"), random_segments)
pattern_segments = st.one_of(
    st.sampled_from(["a", "b", "*", "**"]), st.sampled_from(["*", "**"]), random_segments
)


@st.composite
def names(draw: st.DrawFn, segments: st.SearchStrategy[str] = name_segments) -> str:
    """A valid event name of one to six segments."""
    parts = draw(st.lists(segments, min_size=1, max_size=6))
    separators = draw(
        st.lists(st.sampled_from(SEPARATORS), min_size=len(parts) - 1, max_size=len(parts) - 1)
    )
    return join(parts, separators)


def patterns() -> st.SearchStrategy[str]:
    """A valid subscription pattern of one to six segments, often with wildcards."""
    return names(pattern_segments)


@st.composite
def pattern_from_name(draw: st.DrawFn) -> tuple[str, str]:
    """A name and a pattern made from it by wildcarding, inserting ``**`` or swapping separators."""
    name = draw(names())
    result: list[str] = []
    for separator, segment in tokens(name):
        choice = draw(st.sampled_from(["keep", "keep", "star", "globstar", "insert", "swap"]))
        if choice == "swap" and separator:
            separator = ":" if separator == "." else "."
        result.append(separator)
        if choice == "insert":
            result.extend(["**", draw(st.sampled_from(SEPARATORS))])
        result.append({"star": "*", "globstar": "**"}.get(choice, segment))
    return "".join(result), name


# --------------------------------------------------------------------- valid names


@pytest.mark.parametrize(
    "name",
    [
        "user:account:created",
        "user:account-primary-email:changed",
        "user.created",
        "created",
        "a",
        "Order_v2:line-item.added",
        "0:1.2",
        "user:account.email:changed",
    ],
)
def test_seed_style_names_are_valid(name: str) -> None:
    """Names in either seed style, or mixing separators, validate and come back unchanged."""
    assert aevents.validate_name(name) is name
    assert aevents.validate_pattern(name) is name


@pytest.mark.parametrize(
    "pattern", ["user:*:created", "user:**", "user.*", "**", "*", "**:x", "a:**:b:*"]
)
def test_wildcard_patterns_are_valid_patterns(pattern: str) -> None:
    """Patterns with ``*`` and ``**`` segments validate as patterns."""
    assert aevents.validate_pattern(pattern) is pattern


def test_name_of_max_length_is_valid() -> None:
    """A name exactly ``MAX_NAME_LENGTH`` characters long is accepted."""
    name = "a" * (MAX_NAME_LENGTH - 2) + ":b"
    assert len(name) == MAX_NAME_LENGTH
    assert aevents.validate_name(name) == name
    assert aevents.validate_pattern(name) == name


# ------------------------------------------------------------------- invalid names


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("user::x", "segment 1 is empty"),
        (":user", "segment 0 is empty"),
        ("user:", "segment 1 is empty"),
        (".user", "segment 0 is empty"),
        ("user.", "segment 1 is empty"),
        ("user:.x", "segment 1 is empty"),
        ("user created", "white space ' '"),
        ("user:created ", "white space ' '"),
        ("user:\tcreated", "white space '\\t'"),
        ("user/created", "'/'"),
        ("user:créé", "'é'"),
        ("user:*", "wildcard"),
        ("user:**", "wildcard"),
        ("*", "wildcard"),
        ("user*", "mixes '*'"),
        ("user:a*b", "mixes '*'"),
    ],
)
def test_invalid_names_are_rejected_with_a_reason(name: str, reason: str) -> None:
    """Each kind of bad name raises ``InvalidEventNameError`` saying what is wrong."""
    with pytest.raises(aevents.InvalidEventNameError) as caught:
        aevents.validate_name(name)
    assert caught.value.name == name
    assert reason in caught.value.reason
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize(
    "pattern", ["", "user::*", ":**", "**:", "user*", "*user", "***", "user:**x", "us er:*", "a:*?"]
)
def test_invalid_patterns_are_rejected(pattern: str) -> None:
    """Empty segments, partial wildcards and stray characters are refused in patterns too."""
    with pytest.raises(aevents.InvalidEventNameError):
        aevents.validate_pattern(pattern)


@pytest.mark.parametrize("value", [None, 1, b"user:created", ["user:created"], 1.5])
def test_non_str_names_and_patterns_are_rejected(value: object) -> None:
    """Only a str can be a name or a pattern; the message gives the type."""
    for validate in (aevents.validate_name, aevents.validate_pattern):
        with pytest.raises(aevents.InvalidEventNameError, match=type(value).__name__):
            validate(value)


@pytest.mark.parametrize("validate", [aevents.validate_name, aevents.validate_pattern])
def test_too_long_names_are_rejected(validate: Callable[[object], str]) -> None:
    """One character past ``MAX_NAME_LENGTH`` is refused, naming the limit."""
    name = "a" * (MAX_NAME_LENGTH - 1) + ":b"
    with pytest.raises(aevents.InvalidEventNameError, match=f"limit is {MAX_NAME_LENGTH}"):
        validate(name)


def test_the_length_limit_is_255_characters() -> None:
    """255 characters is the longest name; 256 is refused with the length and the limit."""
    assert MAX_NAME_LENGTH == 255
    assert aevents.validate_name("a" * 255) == "a" * 255
    with pytest.raises(aevents.InvalidEventNameError) as caught:
        aevents.validate_name("a" * 256)
    assert caught.value.reason == "it is 256 characters long; the limit is 255"


@pytest.mark.parametrize("validate", [aevents.validate_name, aevents.validate_pattern])
def test_a_bad_name_at_the_length_limit_is_explained_by_its_character(
    validate: Callable[[object], str],
) -> None:
    """At exactly 255 characters the length is fine, so the message names the bad character."""
    name = "a" * 254 + "!"
    with pytest.raises(aevents.InvalidEventNameError) as caught:
        validate(name)
    assert caught.value.reason == f"segment 0 ({name!r}) contains the character '!'"


@pytest.mark.parametrize("validate", [aevents.validate_name, aevents.validate_pattern])
def test_the_empty_name_is_explained_exactly(validate: Callable[[object], str]) -> None:
    """An empty name or pattern says it is empty, and nothing else."""
    with pytest.raises(aevents.InvalidEventNameError) as caught:
        validate("")
    assert caught.value.name == ""
    assert caught.value.reason == "it is empty"
    assert str(caught.value) == "invalid event name '': it is empty"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a:*:b c", "segment 2 ('b c') contains white space ' '"),
        ("a:**.b!", "segment 2 ('b!') contains the character '!'"),
        ("*.**:x*", "segment 2 ('x*') mixes '*' with other characters"),
        ("**::b", "segment 1 is empty (names look like 'service:context:action')"),
    ],
)
def test_a_bad_segment_after_a_wildcard_is_the_one_explained(pattern: str, reason: str) -> None:
    """In a pattern, wildcards are fine: the message is about the segment that is not."""
    with pytest.raises(aevents.InvalidEventNameError) as caught:
        aevents.validate_pattern(pattern)
    assert caught.value.name == pattern
    assert caught.value.reason == reason


def test_a_wildcard_in_a_name_is_explained_as_one() -> None:
    """Published names cannot hold wildcards; the message says where and why."""
    with pytest.raises(aevents.InvalidEventNameError) as caught:
        aevents.validate_name("a:*:b c")
    assert caught.value.reason == "segment 1 is the wildcard '*'; wildcards are for subscriptions"


@pytest.mark.parametrize("value", [None, 1, b"user:created"])
def test_a_non_str_name_is_kept_on_the_error(value: object) -> None:
    """The error carries the value it was given, for both names and patterns."""
    for validate in (aevents.validate_name, aevents.validate_pattern):
        with pytest.raises(aevents.InvalidEventNameError) as caught:
            validate(value)
        assert caught.value.name == value
        assert caught.value.reason == f"expected a str, got {type(value).__name__}"


@pytest.mark.parametrize(
    ("text", "first"),
    [("user", "user"), ("user:account:created", "user"), ("a.b:c", "a"), ("**:x", "**")],
)
def test_first_segment_is_the_text_before_the_first_separator(text: str, first: str) -> None:
    """Either separator ends the first segment; without one, the text is the segment."""
    assert first_segment(text) == first


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\n", "\r", "\x7f", "\u200b", "\u2028"])
def test_control_characters_appear_escaped_in_messages(char: str) -> None:
    """A control character is shown through ``repr``, never raw, so it cannot reach a log line."""
    name = f"user:{char}:created"
    with pytest.raises(aevents.InvalidEventNameError) as caught:
        aevents.validate_name(name)
    message = str(caught.value)
    assert char not in message
    assert repr(char)[1:-1] in message


def test_invalid_event_name_error_is_a_value_error_and_an_aevents_error() -> None:
    """Idiomatic ``except ValueError`` and the library base class both catch it."""
    with pytest.raises(ValueError, match="user::x"):
        aevents.validate_name("user::x")
    with pytest.raises(aevents.AeventsError):
        aevents.validate_name("user::x")


# -------------------------------------------------------------- grammar properties


@settings(max_examples=200, deadline=None)
@given(names(random_segments))
def test_every_generated_name_validates(name: str) -> None:
    """Any name built from the grammar validates as a name and as a pattern."""
    assert aevents.validate_name(name) == name
    assert aevents.validate_pattern(name) == name


@settings(max_examples=200, deadline=None)
@given(patterns())
def test_every_generated_pattern_validates_and_wildcards_are_not_names(pattern: str) -> None:
    """Generated patterns validate; those with a wildcard are refused as published names."""
    assert aevents.validate_pattern(pattern) == pattern
    if "*" in pattern:
        with pytest.raises(aevents.InvalidEventNameError, match="wildcard"):
            aevents.validate_name(pattern)
    else:
        assert aevents.validate_name(pattern) == pattern


disallowed_chars = st.characters(
    exclude_characters=SEGMENT_CHARS + SEPARATORS + "*", exclude_categories=()
)


@settings(max_examples=300, deadline=None)
@given(names(random_segments), disallowed_chars, st.integers(min_value=0))
def test_any_disallowed_character_is_rejected(name: str, char: str, where: int) -> None:
    """Inserting any character outside the grammar anywhere makes the name invalid."""
    where %= len(name) + 1
    bad = name[:where] + char + name[where:]
    for validate in (aevents.validate_name, aevents.validate_pattern):
        with pytest.raises(aevents.InvalidEventNameError) as caught:
            validate(bad)
        if not char.isprintable():
            assert char not in str(caught.value)


# ------------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("user:account:created", "user:account:created", True),
        ("user:account:created", "user.account.created", False),
        ("user:account:created", "user:account", False),
        ("user:*:created", "user:account:created", True),
        ("user:*:created", "user:created", False),
        ("user:*:created", "user:a:b:created", False),
        ("user:*:created", "user.account:created", False),
        ("user.*", "user.created", True),
        ("user.*", "user:created", False),
        ("user.*", "user", False),
        ("*", "user", True),
        ("*", "user:created", False),
        ("user:**", "user", True),
        ("user:**", "user:account", True),
        ("user:**", "user:account.email", True),
        ("user:**", "user:account:email:changed", True),
        ("user:**", "user.account", False),
        ("user:**", "users", False),
        ("user:**", "other:user", False),
        ("**", "user", True),
        ("**", "user:account.created", True),
        ("**:created", "created", True),
        ("**:created", "a.b:created", True),
        ("**:created", "a:b.created", False),
        ("**:created", "created:x", False),
        ("a:**:b", "a:b", True),
        ("a:**:b", "a:x:y.z:b", True),
        ("a:**:b", "a.x:b", False),
        ("a:**:b", "a:x.b", False),
        ("a:**:**:b", "a:x:b", True),
        ("a:**.**", "a.x", True),
        ("a:**.**", "a:x", True),
        ("a:**.**", "a", True),
        ("a:**.**:b", "a.x:b", True),
        ("*:**", "a", True),
        ("**:*", "a.b", False),
        ("**:*", "a:b", True),
    ],
)
def test_compiled_patterns_match_as_documented(pattern: str, name: str, expected: bool) -> None:
    """Examples of ``*``, ``**`` and literal separators, checked against both matchers."""
    assert compile_pattern(pattern)(name) is expected
    assert reference_matches(pattern, name) is expected


def test_compile_pattern_rejects_invalid_patterns() -> None:
    """Compiling a pattern validates it first."""
    with pytest.raises(aevents.InvalidEventNameError):
        compile_pattern("user::*")


@settings(max_examples=400, deadline=None)
@given(patterns(), names())
def test_compiled_pattern_agrees_with_reference_on_random_pairs(pattern: str, name: str) -> None:
    """For independent random patterns and names, the compiled matcher agrees with the reference."""
    assert compile_pattern(pattern)(name) is reference_matches(pattern, name)


@settings(max_examples=400, deadline=None)
@given(pattern_from_name())
def test_compiled_pattern_agrees_with_reference_on_near_misses(pair: tuple[str, str]) -> None:
    """For patterns derived from a name (so often matching), both matchers agree."""
    pattern, name = pair
    assert compile_pattern(pattern)(name) is reference_matches(pattern, name)


@settings(max_examples=200, deadline=None)
@given(names())
def test_a_name_used_as_a_pattern_matches_only_itself(name: str) -> None:
    """A pattern without wildcards is an exact match."""
    matcher = compile_pattern(name)
    assert matcher(name)
    assert not matcher(name + ":x")
    assert not matcher("x." + name)


@settings(max_examples=400, deadline=None)
@given(names(st.sampled_from(["a", "*", "**", "**"])), names(st.sampled_from(["a", "b"])))
def test_compiled_pattern_agrees_with_reference_on_wildcard_runs(pattern: str, name: str) -> None:
    """Runs of wildcards (``**.**``, ``*:**``) over a tiny alphabet match as the reference says."""
    assert compile_pattern(pattern)(name) is reference_matches(pattern, name)
