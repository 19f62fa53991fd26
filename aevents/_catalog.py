"""Catalogs: event names declared per module and read by attribute.

A catalog turns a typo into an error: ``USER.ACOUNT_CREATED`` raises
``UnknownEventError`` naming the key and the keys that exist, where a bare
string would silently publish to nobody. Every catalog also declares its names
process-wide, which is what a strict runtime checks publishes against.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping

from ._exceptions import DuplicateEventError, InvalidEventNameError, UnknownEventError
from ._names import validate_name

__all__ = ["Catalog", "declared_names", "is_declared"]

_lock = threading.Lock()
# name -> (key, catalog label): the process-wide declarations strict mode checks.
_declared: dict[str, tuple[str, str]] = {}


def is_declared(name: str) -> bool:
    """True if some catalog declares ``name``."""
    return name in _declared


def declared_names() -> frozenset[str]:
    """Every name declared by a catalog in this process."""
    with _lock:
        return frozenset(_declared)


class Catalog:
    """Event names declared under attribute-style keys.

    >>> USER = Catalog({"ACCOUNT_CREATED": "user:account:created"})
    >>> USER.ACCOUNT_CREATED
    'user:account:created'
    >>> "user:account:created" in USER
    True

    Declaring the same name again under the same key (a module re-imported, a
    test building the catalog twice) is allowed. Looking up a key the catalog
    does not declare raises ``UnknownEventError``, which lists the keys it does.

    Args:
        events: ``{KEY: "event:name"}``; every name is validated here.
        name: The catalog's name in messages and reports. Default: the module
            that builds it.

    Raises:
        InvalidEventNameError: A name breaks the name grammar.
        DuplicateEventError: A name is already declared under another key, in
            this catalog or another.
    """

    __slots__ = ("_by_key", "_label", "_names")

    def __init__(self, events: Mapping[str, str], *, name: str | None = None) -> None:
        label = name if name is not None else _caller_module()
        by_key: dict[str, str] = {}
        for key, value in events.items():
            if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
                raise InvalidEventNameError(
                    value, f"catalog key {key!r} must be a public Python identifier"
                )
            if hasattr(Catalog, key):
                raise InvalidEventNameError(
                    value, f"catalog key {key!r} clashes with a Catalog method"
                )
            by_key[key] = validate_name(value)
        names = {value: key for key, value in by_key.items()}
        if len(names) != len(by_key):
            seen: dict[str, str] = {}
            for key, value in by_key.items():
                if value in seen:
                    raise DuplicateEventError(value, key, seen[value], repr(label))
                seen[value] = key
        with _lock:
            for value, key in names.items():
                existing = _declared.get(value)
                if existing is not None and existing[0] != key:
                    raise DuplicateEventError(value, key, existing[0], repr(existing[1]))
            for value, key in names.items():
                _declared[value] = (key, label)
        self._by_key = by_key
        self._names = frozenset(names)
        self._label = label

    def __getattr__(self, key: str) -> str:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._by_key[key]
        except KeyError:
            raise UnknownEventError(key, known=self._by_key, catalog=repr(self._label)) from None

    def __getitem__(self, key: str) -> str:
        return self.__getattr__(key)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        """The declared names, in declaration order."""
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._by_key]

    def __repr__(self) -> str:
        return f"Catalog({self._by_key!r}, name={self._label!r})"

    def items(self) -> list[tuple[str, str]]:
        """``(key, name)`` pairs in declaration order."""
        return list(self._by_key.items())


def _caller_module() -> str:
    """The module that built the catalog, used to name it in error messages."""
    frame = sys._getframe(2)
    return str(frame.f_globals.get("__name__", "<unknown>"))
