"""What the operations pages share (the dashboard and Django's admin): filtering dead
letters, showing a payload, and keeping URL passwords out of what is shown.

No framework is imported here, so each integration needs only its own extra.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import orjson

from .. import DeadLetter, InvalidEventNameError
from .._names import compile_pattern, validate_pattern

__all__ = ["Filters", "filter_letters", "pretty_json", "redact"]

# scheme://user:password@host: the password part, wherever a URL appears in a text.
_URL_PASSWORD: Final = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]*@")
# password=... (and sslpassword=...): a URL's query string (``?password=``, which
# libpq and coredis both read) or a libpq ``key=value`` string, quoted or not.
_KEYWORD_PASSWORD: Final = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&;'\"]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL, and every
    ``password=`` value (a URL's query or a libpq connection string), replaced by ``***``."""
    return _KEYWORD_PASSWORD.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***@", text))


@attrs.frozen(slots=True)
class Filters:
    """Dead-letter filters: exact receiver and error type, and a name that is a pattern
    (with ``*`` or ``**``) or else a part of the name."""

    receiver: str = ""
    name: str = ""
    error: str = ""

    @classmethod
    def read(cls, values: Any) -> Filters:
        """From a query string or a form (anything with ``get``)."""
        return cls(
            str(values.get("receiver", "") or "").strip(),
            str(values.get("name", "") or "").strip(),
            str(values.get("error", "") or "").strip(),
        )

    @property
    def active(self) -> bool:
        return bool(self.receiver or self.name or self.error)

    def problem(self) -> str | None:
        """Why the name filter cannot be used, if it cannot."""
        if "*" not in self.name:
            return None
        try:
            validate_pattern(self.name)
        except InvalidEventNameError as error:
            return str(error)
        return None


def filter_letters(letters: Sequence[DeadLetter], filters: Filters) -> list[DeadLetter]:
    """The letters that match every filter given (none match a broken pattern)."""
    if filters.problem() is not None:
        return []
    matches: Callable[[str], bool]
    if "*" in filters.name:
        matches = compile_pattern(filters.name)
    else:
        part = filters.name

        def matches(name: str) -> bool:
            return part in name

    return [
        letter
        for letter in letters
        if (not filters.receiver or letter.receiver_id == filters.receiver)
        and (not filters.error or letter.error_type == filters.error)
        and matches(letter.event.name)
    ]


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON, keys sorted (payloads and metadata round-trip orjson)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return repr(value)
