"""Routing reports: which receivers each declared name reaches, and what reaches nothing.

Catalogs declare the names an app publishes; the registry holds the patterns
its receivers subscribe to. Comparing the two before any event flows finds the
mistakes that otherwise show up as events delivered to nobody: an exact
subscription to a misspelt name, a pattern that matches no declared name, a
declared name nobody receives (often a receivers module nobody imported).
``python -m aevents inspect`` prints this report; an app or a test asserts it::

    report = aevents.inspect_routes()
    assert report.ok, report.to_text()

With a store that processes share, ``consumers=await store.consumers()`` adds
how this process's routes compare with those of the live consumers (see
``aevents._fleet_routes``): receivers they route a declared name to that this
process does not, and routes on one side only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from . import _catalog
from ._catalog import Catalog
from ._fleet_routes import FleetRoutes, LeftOut, compare_routes, left_out
from ._names import compile_pattern, first_segment, is_pattern, validate_pattern
from ._registry import Registry, Scope, default_registry
from ._store._protocol import Consumer

__all__ = [
    "DeclaredName",
    "NameLeftOut",
    "ReceiverMatch",
    "RoutingReport",
    "UnmatchedPattern",
    "inspect_routes",
]


@attrs.frozen(slots=True)
class ReceiverMatch:
    """A receiver a declared name is delivered to, and the pattern it subscribed with."""

    receiver_id: str
    pattern: str
    scope: Scope = "fleet"
    """``"process"``: it runs in the publishing process, never through a shared store."""


@attrs.frozen(slots=True)
class DeclaredName:
    """A declared name, the catalog and key that declare it, and the receivers it reaches."""

    catalog: str
    key: str
    name: str
    receivers: tuple[ReceiverMatch, ...]


@attrs.frozen(slots=True)
class UnmatchedPattern:
    """A subscribed pattern that matches no declared name, and who subscribed to it.

    ``suggestion`` is the closest declared name, given for an exact name only
    (a pattern without wildcards): there the likely cause is a typo.
    """

    pattern: str
    receiver_ids: tuple[str, ...]
    suggestion: str | None = None


@attrs.frozen(slots=True)
class NameLeftOut:
    """A declared name that live consumers route to receivers this process does not."""

    name: str
    receivers: tuple[LeftOut, ...]


@attrs.frozen(slots=True)
class RoutingReport:
    """The routing table of declared names, and the three kinds of problem it can show.

    - ``names``: every declared name, grouped by catalog (catalogs sorted, names
      in declaration order), with the receivers ``Registry.route`` gives it.
    - ``unmatched_patterns``: wildcard patterns that match no declared name.
    - ``undeclared_names``: exact subscriptions to names no catalog declares,
      each a likely typo, with the closest declared name when there is one.
    - ``unrouted_names``: declared names with no receiver.

    ``ok`` is true when there is no problem of any kind. ``allowed`` lists the
    problems that ``inspect_routes(allow=...)`` excused: they appear there, not
    in the three lists above, and do not count.
    """

    names: tuple[DeclaredName, ...]
    unmatched_patterns: tuple[UnmatchedPattern, ...]
    undeclared_names: tuple[UnmatchedPattern, ...]
    allowed: tuple[str, ...] = ()
    """Names and patterns whose problem was excused by ``allow``, sorted."""
    fleet: FleetRoutes | None = None
    """With ``consumers=``: the routes on one side only (each counts as a problem)."""
    left_out: tuple[NameLeftOut, ...] = ()
    """With ``consumers=``: declared names live consumers route to receivers not routed
    here, in the order of ``names`` (the detail of ``fleet.missing_here``)."""

    @property
    def unrouted_names(self) -> tuple[DeclaredName, ...]:
        """Declared names that no receiver matches (less those ``allowed``)."""
        excused = set(self.allowed)
        return tuple(
            declared
            for declared in self.names
            if not declared.receivers and declared.name not in excused
        )

    @property
    def problem_count(self) -> int:
        """Unmatched patterns, undeclared names, unrouted names, and routes that differ from
        the live consumers' (with ``consumers=``), together."""
        fleet = 0 if self.fleet is None else len(self.fleet.missing_here + self.fleet.unconsumed)
        return (
            len(self.unmatched_patterns)
            + len(self.undeclared_names)
            + len(self.unrouted_names)
            + fleet
        )

    @property
    def ok(self) -> bool:
        """True when every pattern matches a declared name and every declared name a receiver."""
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready structure; its keys are stable (``python -m aevents inspect --json``)."""
        catalogs: list[dict[str, Any]] = []
        for declared in self.names:
            if not catalogs or catalogs[-1]["catalog"] != declared.catalog:
                catalogs.append({"catalog": declared.catalog, "names": []})
            catalogs[-1]["names"].append(
                {
                    "key": declared.key,
                    "name": declared.name,
                    "receivers": [_match_dict(match) for match in declared.receivers],
                }
            )
        return {
            "catalogs": catalogs,
            "unmatched_patterns": [
                {"pattern": unmatched.pattern, "receiver_ids": list(unmatched.receiver_ids)}
                for unmatched in self.unmatched_patterns
            ],
            "undeclared_names": [
                {
                    "name": undeclared.pattern,
                    "receiver_ids": list(undeclared.receiver_ids),
                    "suggestion": undeclared.suggestion,
                }
                for undeclared in self.undeclared_names
            ],
            "unrouted_names": [
                {"catalog": declared.catalog, "key": declared.key, "name": declared.name}
                for declared in self.unrouted_names
            ],
            "allowed": list(self.allowed),
            **({} if self.fleet is None else {"fleet": self._fleet_dict(self.fleet)}),
            "problems": self.problem_count,
            "ok": self.ok,
        }

    def _fleet_dict(self, fleet: FleetRoutes) -> dict[str, Any]:
        return {
            **fleet.to_dict(),
            "left_out": [
                {
                    "name": each.name,
                    "receivers": [
                        {
                            "receiver_id": receiver.receiver_id,
                            "patterns": list(receiver.patterns),
                            "consumers": [str(consumer) for consumer in receiver.consumers],
                        }
                        for receiver in each.receivers
                    ],
                }
                for each in self.left_out
            ],
        }

    def to_text(self) -> str:
        """The report as plain text for a terminal; control characters are escaped."""
        return "\n".join(_render(self))


def inspect_routes(
    registry: Registry | None = None,
    *,
    catalogs: Iterable[Catalog] | None = None,
    allow: Iterable[str] = (),
    consumers: Sequence[Consumer] | None = None,
) -> RoutingReport:
    """Compare the declared names with the subscriptions of ``registry``.

    Import the modules that build catalogs and subscribe receivers first, as
    your app's start-up does. ``python -m aevents inspect`` prints the same report.

    Args:
        registry: The registry to check. Default ``aevents.default_registry``.
        catalogs: Check only the names these catalogs declare. Default ``None``:
            every name declared in this process, which is what a strict
            runtime checks publishes against.
        allow: Known problems to excuse, so that a start-up check or
            ``--strict`` fails only on new ones; each entry is a name or a
            pattern. A declared name with no receiver, or a subscribed name no
            catalog declares, is excused when an entry matches it
            (``"audit:**"`` excuses every such name under ``audit``); a wildcard
            subscription that matches no declared name, when an entry is that
            same pattern. Default: none.
        consumers: The live consumers of a store that processes share
            (``await store.consumers()``). The report then also compares this
            registry's ``scope="fleet"`` routes with theirs: a route they run
            and this registry lacks (events published here miss that
            receiver), or the reverse (deliveries wait in the store), counts
            as a problem, and ``left_out`` names the declared names affected.
            ``allow`` does not excuse these. Default ``None``: no comparison.

    Returns:
        A frozen report; ``report.ok`` is false when a problem is not excused,
            and ``report.to_text()`` prints it.

    Raises:
        InvalidEventNameError: An ``allow`` entry is not a valid name or pattern.
    """
    allowances = [validate_pattern(entry) for entry in allow]
    matchers = [compile_pattern(entry) for entry in allowances]
    registry = default_registry if registry is None else registry
    declared = _declarations(catalogs)
    by_pattern: dict[str, list[str]] = {}
    for subscription in registry.subscriptions():
        by_pattern.setdefault(subscription.pattern, []).append(subscription.receiver_id)
    names = [name for _, _, name in declared]
    known = set(names)
    by_first: dict[str, list[str]] = {}
    for name in names:
        by_first.setdefault(first_segment(name), []).append(name)
    reached = _patterns_matching_a_name([p for p in by_pattern if is_pattern(p)], names, by_first)
    unmatched = []
    undeclared = []
    excused: set[str] = set()
    for pattern in sorted(by_pattern):
        receiver_ids = tuple(by_pattern[pattern])
        if not is_pattern(pattern):
            if pattern in known:
                continue
            if any(matches(pattern) for matches in matchers):
                excused.add(pattern)
                continue
            suggestion = _closest(pattern, names, by_first)
            undeclared.append(UnmatchedPattern(pattern, receiver_ids, suggestion))
        elif pattern not in reached:
            if pattern in allowances:
                excused.add(pattern)
            else:
                unmatched.append(UnmatchedPattern(pattern, receiver_ids))
    table = tuple(
        DeclaredName(
            label,
            key,
            name,
            tuple(ReceiverMatch(s.receiver_id, s.pattern, s.scope) for s in registry.route(name)),
        )
        for label, key, name in declared
    )
    excused.update(
        each.name
        for each in table
        if not each.receivers and any(matches(each.name) for matches in matchers)
    )
    if consumers is None:
        return RoutingReport(table, tuple(unmatched), tuple(undeclared), tuple(sorted(excused)))
    fleet = compare_routes(registry, consumers)
    missing = []
    for each in table:
        here = {match.receiver_id for match in each.receivers if match.scope == "fleet"}
        if receivers := left_out(each.name, here, consumers):
            missing.append(NameLeftOut(each.name, receivers))
    return RoutingReport(
        table,
        tuple(unmatched),
        tuple(undeclared),
        tuple(sorted(excused)),
        fleet,
        tuple(missing),
    )


def _declarations(catalogs: Iterable[Catalog] | None) -> list[tuple[str, str, str]]:
    """``(catalog label, key, name)`` once per name, catalogs sorted, names in declaration order."""
    found: dict[str, tuple[str, str, str]] = {}
    if catalogs is None:
        # The process-wide declarations: name -> (key, label), in declaration order.
        with _catalog._lock:
            declarations = list(_catalog._declared.items())
        for name, (key, label) in declarations:
            found.setdefault(name, (label, key, name))
    else:
        for catalog in catalogs:
            for key, name in catalog.items():
                found.setdefault(name, (catalog._label, key, name))
    return sorted(found.values(), key=lambda declaration: declaration[0])  # stable: keeps order


def _patterns_matching_a_name(
    patterns: list[str], names: list[str], by_first: dict[str, list[str]]
) -> set[str]:
    """The wildcard patterns that match at least one of ``names``.

    A pattern whose first segment is literal can only match names that start
    with that segment (the registry's routing index relies on the same fact),
    so it is tried against those alone (``by_first``); the cost stays far below
    patterns x names for the usual namespaced catalogs.
    """
    reached = set()
    for pattern in patterns:
        first = first_segment(pattern)
        candidates = names if first in ("*", "**") else by_first.get(first, [])
        matches = compile_pattern(pattern)
        if any(matches(name) for name in candidates):
            reached.add(pattern)
    return reached


def _closest(name: str, names: list[str], by_first: dict[str, list[str]]) -> str | None:
    """The declared name most like ``name``, looked for under its own first segment first.

    A typo usually leaves the first segment alone, and comparing against those
    names only is what keeps many typos against many names affordable.
    """
    same_first = by_first.get(first_segment(name), [])
    close = difflib.get_close_matches(name, same_first, n=1)
    if not close and len(same_first) < len(names):
        close = difflib.get_close_matches(name, names, n=1)
    return close[0] if close else None


def _match_dict(match: ReceiverMatch) -> dict[str, str]:
    """A receiver in ``to_dict``: ``scope`` appears only for ``"process"``, the exception."""
    found = {"receiver_id": match.receiver_id, "pattern": match.pattern}
    if match.scope != "fleet":
        found["scope"] = match.scope
    return found


# -- text ---------------------------------------------------------------------------------


def _printable(value: str) -> str:
    """Control characters (and other unprintables) never reach the terminal raw."""
    return value if value.isprintable() else repr(value)[1:-1]


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def _render(report: RoutingReport) -> list[str]:
    lines: list[str] = []
    if report.names:
        lines.append(f"Routes of {_plural(len(report.names), 'declared name', 'declared names')}")
        key_width = max(len(_printable(declared.key)) for declared in report.names)
        name_width = max(len(declared.name) for declared in report.names)
        indent = " " * (2 + key_width + 2 + name_width + 2)
        catalog = None
        for declared in report.names:
            if declared.catalog != catalog:
                catalog = declared.catalog
                lines += ["", _printable(catalog)]
            receivers = [
                _printable(match.receiver_id)
                + ("" if match.pattern == declared.name else f"  via {match.pattern}")
                + ("  (scope=process)" if match.scope == "process" else "")
                for match in declared.receivers
            ] or ["(no receiver)"]
            key = _printable(declared.key).ljust(key_width)
            lines.append(f"  {key}  {declared.name.ljust(name_width)}  {receivers[0]}")
            lines += [indent + receiver for receiver in receivers[1:]]
    else:
        lines.append("No catalog declares any name.")
    sections = [
        (
            "Patterns that match no declared name",
            [[u.pattern, _ids(u.receiver_ids)] for u in report.unmatched_patterns],
        ),
        (
            "Subscribed names no catalog declares, likely typos",
            [
                [u.pattern, _ids(u.receiver_ids), _did_you_mean(u.suggestion)]
                for u in report.undeclared_names
            ],
        ),
        (
            "Declared names with no receiver",
            [[_printable(d.catalog), _printable(d.key), d.name] for d in report.unrouted_names],
        ),
    ]
    for title, rows in sections:
        if rows:
            lines += ["", f"{title} ({len(rows)})", *_columns(rows)]
    if report.fleet is not None:
        lines += _render_fleet(report.fleet, report.left_out)
    if report.allowed:
        lines += ["", f"Allowed, not counted ({len(report.allowed)})"]
        lines += [f"  {_printable(entry)}" for entry in report.allowed]
    lines.append("")
    if report.ok:
        lines.append("No problems found.")
    else:
        lines.append(f"{_plural(report.problem_count, 'problem', 'problems')} found.")
    return lines


def _render_fleet(fleet: FleetRoutes, missing: tuple[NameLeftOut, ...]) -> list[str]:
    lines = ["", f"Compared with {_plural(fleet.consumers, 'live consumer', 'live consumers')}"]
    if fleet.agree:
        lines.append("  every route agrees")
    sections = [
        (
            "Routes live consumers run that are not subscribed here; events published here "
            "do not reach them",
            [
                [d.pattern, _printable(d.receiver_id), _ids(str(c) for c in d.consumers)]
                for d in fleet.missing_here
            ],
        ),
        (
            "Declared names those receivers would get",
            [
                [
                    each.name,
                    _ids(receiver.receiver_id for receiver in each.receivers),
                ]
                for each in missing
            ],
        ),
        (
            "Routes here that no live consumer runs; their deliveries wait in the store",
            [[d.pattern, _printable(d.receiver_id)] for d in fleet.unconsumed],
        ),
    ]
    for title, rows in sections:
        if rows:
            lines += ["", f"{title} ({len(rows)})", *_columns(rows)]
    return lines


def _ids(receiver_ids: Iterable[str]) -> str:
    return ", ".join(_printable(receiver_id) for receiver_id in receiver_ids)


def _did_you_mean(suggestion: str | None) -> str:
    return "" if suggestion is None else f"did you mean {suggestion!r}?"


def _columns(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart, indented by two."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = (value.ljust(width) for value, width in zip(row, widths, strict=True))
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines
