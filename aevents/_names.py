"""Event names and subscription patterns: the grammar, validation and matchers.

A name is one or more segments joined by ``:`` or ``.``; a segment is ASCII
letters, digits, ``_`` or ``-``. A pattern is a name whose segments may also be
``*`` (exactly one segment) or ``**`` (zero or more segments).

Separators are matched literally (``user.*`` does not match ``user:created``),
except inside what ``**`` spans, where either separator is accepted, so
``user:**`` matches ``user``, ``user:account`` and ``user:account.email``.
When ``**`` matches nothing it takes one separator with it: the one before it
(``a:**:b`` matches ``a:b``), or for a leading ``**`` the one after it
(``**:created`` matches ``created``).

Matching is only done when a name is first routed; the runtime caches the
result per name, so the cost here is off the hot path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from ._exceptions import InvalidEventNameError

__all__ = [
    "MAX_NAME_LENGTH",
    "compile_pattern",
    "first_segment",
    "is_pattern",
    "validate_name",
    "validate_pattern",
]

MAX_NAME_LENGTH = 255
"""Longest accepted name or pattern, in characters."""

_SEGMENT = "[A-Za-z0-9_-]+"
_NAME = re.compile(rf"{_SEGMENT}(?:[:.]{_SEGMENT})*")
_SEGMENT_RE = re.compile(_SEGMENT)
_SPLIT = re.compile(r"([:.])")


def _explain(text: str, *, allow_wildcards: bool) -> str:
    """Say what is wrong with ``text``; called only once it failed to match."""
    if not text:
        return "it is empty"
    if len(text) > MAX_NAME_LENGTH:
        return f"it is {len(text)} characters long; the limit is {MAX_NAME_LENGTH}"
    parts = _SPLIT.split(text)
    for index, segment in enumerate(parts[::2]):
        if not segment:
            return f"segment {index} is empty (names look like 'service:context:action')"
        if segment in ("*", "**"):
            if not allow_wildcards:
                return (
                    f"segment {index} is the wildcard {segment!r}; wildcards are for subscriptions"
                )
            continue
        if "*" in segment:
            return f"segment {index} ({segment!r}) mixes '*' with other characters"
        if _SEGMENT_RE.fullmatch(segment):
            continue
        bad = next(char for char in segment if not _SEGMENT_RE.fullmatch(char))
        kind = "white space" if bad.isspace() else "the character"
        return f"segment {index} ({segment!r}) contains {kind} {bad!r}"
    return "it does not follow the grammar"  # pragma: no cover - every failure is named above


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid event name, else raise ``InvalidEventNameError``."""
    if type(name) is not str:
        raise InvalidEventNameError(name, f"expected a str, got {type(name).__name__}")
    if len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name):
        return name
    raise InvalidEventNameError(name, _explain(name, allow_wildcards=False))


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise."""
    if type(pattern) is not str:
        raise InvalidEventNameError(pattern, f"expected a str, got {type(pattern).__name__}")
    if len(pattern) <= MAX_NAME_LENGTH:
        parts = _SPLIT.split(pattern)
        if all(segment in ("*", "**") or _SEGMENT_RE.fullmatch(segment) for segment in parts[::2]):
            return pattern
    raise InvalidEventNameError(pattern, _explain(pattern, allow_wildcards=True))


def first_segment(text: str) -> str:
    """The segment before the first separator (the whole text if there is none)."""
    return _SPLIT.split(text, 1)[0]


def is_pattern(text: str) -> bool:
    """True if ``text`` has a wildcard segment (it must then be subscribed, not published)."""
    return "*" in text


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """Return a predicate telling whether a valid name matches ``pattern``."""
    validate_pattern(pattern)
    if not is_pattern(pattern):
        return pattern.__eq__
    parts = _SPLIT.split(pattern)
    segments, separators = parts[::2], parts[1::2]
    # Collapse runs of "**": "a:**:**:b" means the same as "a:**:b", and "a:**.**"
    # the same as "a" followed by zero or more segments after either separator.
    tokens: list[tuple[str, str]] = []  # (separators allowed before the segment, segment)
    for index, segment in enumerate(segments):
        separator = separators[index - 1] if index else ""
        if segment == "**" and tokens and tokens[-1][1] == "**":
            if len(tokens) > 1 and separator not in tokens[-1][0]:
                tokens[-1] = (tokens[-1][0] + separator, segment)
            continue
        tokens.append((separator, segment))
    regex: list[str] = []
    separator_consumed = False
    for index, (separator, segment) in enumerate(tokens):
        if separator_consumed:
            literal = ""
        elif len(separator) > 1:
            literal = "[:.]"
        else:
            literal = re.escape(separator)
        separator_consumed = False
        if segment == "**" and index == 0:
            # Leading "**": zero or more segments together with the separator that
            # follows them, so "**:created" matches "created" and "a.b:created".
            if len(tokens) == 1:
                regex.append(f"(?:{_SEGMENT}(?:[:.]{_SEGMENT})*)?")
            else:
                after = re.escape(tokens[1][0])
                regex.append(f"(?:{_SEGMENT}(?:[:.]{_SEGMENT})*{after})?")
                separator_consumed = True
        elif segment == "**":
            regex.append(f"(?:{literal}{_SEGMENT}(?:[:.]{_SEGMENT})*)?")
        elif segment == "*":
            regex.append(f"{literal}{_SEGMENT}")
        else:
            regex.append(f"{literal}{re.escape(segment)}")
    compiled = re.compile("".join(regex))

    def matches(name: str) -> bool:
        return compiled.fullmatch(name) is not None

    return matches
