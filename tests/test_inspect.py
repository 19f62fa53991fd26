"""Routing reports: ``inspect_routes`` in process, ``python -m aevents inspect`` as a process.

Catalogs declare their names process-wide, so in-process tests build names
with a fresh uuid segment and pass their catalogs explicitly; the apps the
command line imports (``tests/inspect_fixtures``) are only ever imported by a
subprocess.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aevents
from aevents._cli import main
from aevents._inspect import DeclaredName, ReceiverMatch, RoutingReport, inspect_routes
from aevents._names import compile_pattern, is_pattern

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "inspect_fixtures"


def token() -> str:
    """A segment no other test (or run) uses, so declarations never collide."""
    return f"t{uuid.uuid4().hex}"


async def receiver(event: aevents.Event) -> None:
    """A receiver that does nothing."""


def inspect_cli(
    *argv: str, cwd: Path = FIXTURES, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python, "-m", "aevents", "inspect", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=cwd,
    )


# -- the report -----------------------------------------------------------------------------


def test_each_declared_name_lists_its_receivers_and_the_pattern_that_matched(
    registry: aevents.Registry,
) -> None:
    """A declared name shows every receiver it routes to, each with the pattern it subscribed."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"{t}:account:created"}, name="accounts")
    registry.subscribe(catalog.CREATED, receiver, id="welcome")
    registry.subscribe(f"{t}:*:created", receiver, id="audit")
    report = inspect_routes(registry, catalogs=[catalog])
    assert report.names == (
        DeclaredName(
            "accounts",
            "CREATED",
            f"{t}:account:created",
            (
                ReceiverMatch("welcome", f"{t}:account:created"),
                ReceiverMatch("audit", f"{t}:*:created"),
            ),
        ),
    )
    assert report.ok


def test_a_receiver_is_listed_once_with_the_subscription_routing_uses(
    registry: aevents.Registry,
) -> None:
    """A receiver matched by two of its subscriptions appears once, as ``Registry.route`` has it."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"{t}:created"})
    registry.subscribe(f"{t}:**", receiver, id="audit")
    registry.subscribe(catalog.CREATED, receiver, id="audit")
    [declared] = inspect_routes(registry, catalogs=[catalog]).names
    routed = registry.route(catalog.CREATED)
    assert declared.receivers == tuple(ReceiverMatch(s.receiver_id, s.pattern) for s in routed)
    assert len(declared.receivers) == 1


def test_a_wildcard_pattern_that_matches_no_declared_name_is_reported(
    registry: aevents.Registry,
) -> None:
    """A pattern matching none of the declared names is listed with its receivers."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"{t}:created"})
    registry.subscribe(f"{t}:*", receiver, id="seen")
    registry.subscribe(f"{t}.*", receiver, id="dotted")  # separators match literally
    registry.subscribe(f"{t}:*", receiver, id="also-seen")
    registry.subscribe(f"invoice-{t}:**", receiver, id="archive")
    report = inspect_routes(registry, catalogs=[catalog])
    assert [(u.pattern, u.receiver_ids) for u in report.unmatched_patterns] == [
        (f"invoice-{t}:**", ("archive",)),
        (f"{t}.*", ("dotted",)),
    ]
    assert report.undeclared_names == ()
    assert not report.ok


def test_a_leading_wildcard_is_matched_against_names_under_every_first_segment(
    registry: aevents.Registry,
) -> None:
    """``**:x`` and ``*:x`` reach names whatever their first segment, so they are not reported."""
    t = token()
    catalog = aevents.Catalog({"SHIPPED": f"order:{t}", "PAID": f"payment:{t}"})
    registry.subscribe(f"**:{t}", receiver, id="deep")
    registry.subscribe(f"*:{t}", receiver, id="shallow")
    registry.subscribe(f"*:*:{t}", receiver, id="too-deep")
    report = inspect_routes(registry, catalogs=[catalog])
    assert [u.pattern for u in report.unmatched_patterns] == [f"*:*:{t}"]
    assert [[m.receiver_id for m in d.receivers] for d in report.names] == [
        ["deep", "shallow"],
        ["deep", "shallow"],
    ]


def test_an_exact_subscription_to_an_undeclared_name_suggests_the_closest_declared_name(
    registry: aevents.Registry,
) -> None:
    """A subscribed name no catalog declares is flagged apart from patterns, with a suggestion."""
    t = token()
    catalog = aevents.Catalog(
        {"REFUNDED": f"{t}:order:refunded", "PLACED": f"{t}:order:placed"}, name="orders"
    )
    registry.subscribe(f"{t}:order:refund", receiver, id="restock")
    registry.subscribe(f"{t}:order:rfunded", receiver, id="refund-mail")
    report = inspect_routes(registry, catalogs=[catalog])
    assert [(u.pattern, u.receiver_ids, u.suggestion) for u in report.undeclared_names] == [
        (f"{t}:order:refund", ("restock",), f"{t}:order:refunded"),
        (f"{t}:order:rfunded", ("refund-mail",), f"{t}:order:refunded"),
    ]
    assert report.unmatched_patterns == ()


def test_a_typo_in_the_first_segment_still_finds_its_suggestion(
    registry: aevents.Registry,
) -> None:
    """When no name under the same first segment is close, every declared name is searched."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"user{t}:account:created", "OTHER": f"x{t}:y"})
    registry.subscribe(f"usr{t}:account:created", receiver, id="welcome")
    [undeclared] = inspect_routes(registry, catalogs=[catalog]).undeclared_names
    assert undeclared.suggestion == f"user{t}:account:created"


def test_an_undeclared_name_like_no_declared_one_has_no_suggestion(
    registry: aevents.Registry,
) -> None:
    """Nothing is suggested when no declared name is close."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"{t}:account:created"})
    registry.subscribe("zz", receiver, id="stray")
    [undeclared] = inspect_routes(registry, catalogs=[catalog]).undeclared_names
    assert undeclared.suggestion is None


def test_a_declared_name_with_no_receiver_is_unrouted(registry: aevents.Registry) -> None:
    """Declared names no subscription matches are listed as unrouted, and make the report fail."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"{t}:created", "DELETED": f"{t}:deleted"}, name="c")
    registry.subscribe(catalog.CREATED, receiver, id="welcome")
    report = inspect_routes(registry, catalogs=[catalog])
    assert report.unrouted_names == (DeclaredName("c", "DELETED", f"{t}:deleted", ()),)
    assert report.problem_count == 1
    assert not report.ok


def test_names_are_grouped_by_catalog_in_sorted_order_and_keep_declaration_order(
    registry: aevents.Registry,
) -> None:
    """Catalogs come sorted by label; within one, names stay in the order they were declared."""
    t = token()
    zebra = aevents.Catalog({"B": f"{t}:z:b", "A": f"{t}:z:a"}, name="zebra")
    apple = aevents.Catalog({"Y": f"{t}:a:y", "X": f"{t}:a:x"}, name="apple")
    report = inspect_routes(registry, catalogs=[zebra, apple])
    assert [(d.catalog, d.key) for d in report.names] == [
        ("apple", "Y"),
        ("apple", "X"),
        ("zebra", "B"),
        ("zebra", "A"),
    ]
    assert [group["catalog"] for group in report.to_dict()["catalogs"]] == ["apple", "zebra"]


def test_by_default_every_declared_name_and_the_default_registry_count() -> None:
    """Without arguments the report covers names declared anywhere and ``default_registry``."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"{t}:created", "DELETED": f"{t}:deleted"}, name=t)
    aevents.subscribe(catalog.CREATED, receiver, id=f"welcome-{t}")
    report = inspect_routes()
    mine = {d.key: d for d in report.names if d.catalog == t}
    assert mine["CREATED"].receivers == (ReceiverMatch(f"welcome-{t}", f"{t}:created"),)
    assert mine["DELETED"] in report.unrouted_names


def test_a_clean_app_passes_the_start_up_assertion(registry: aevents.Registry) -> None:
    """Every name routed and every pattern matching: ``ok``, and the text says no problems."""
    t = token()
    catalog = aevents.Catalog({"INVOICED": f"{t}:invoiced", "PAID": f"{t}:paid"})
    registry.subscribe(f"{t}:*", receiver, id="ledger")
    report = inspect_routes(registry, catalogs=[catalog])
    assert report.ok, report.to_text()
    assert report.to_text().endswith("No problems found.")
    assert report.to_dict()["problems"] == 0


def test_to_dict_is_json_with_stable_keys(registry: aevents.Registry) -> None:
    """The dict serialises with orjson and has the documented keys at every level."""
    t = token()
    catalog = aevents.Catalog({"CREATED": f"{t}:created", "DELETED": f"{t}:deleted"}, name="c")
    registry.subscribe(catalog.CREATED, receiver, id="welcome")
    registry.subscribe(f"{t}:creatd", receiver, id="typo")
    registry.subscribe(f"x{t}:*", receiver, id="stray")
    data = orjson.loads(orjson.dumps(inspect_routes(registry, catalogs=[catalog]).to_dict()))
    assert data == {
        "catalogs": [
            {
                "catalog": "c",
                "names": [
                    {
                        "key": "CREATED",
                        "name": f"{t}:created",
                        "receivers": [{"receiver_id": "welcome", "pattern": f"{t}:created"}],
                    },
                    {"key": "DELETED", "name": f"{t}:deleted", "receivers": []},
                ],
            }
        ],
        "unmatched_patterns": [{"pattern": f"x{t}:*", "receiver_ids": ["stray"]}],
        "undeclared_names": [
            {"name": f"{t}:creatd", "receiver_ids": ["typo"], "suggestion": f"{t}:created"}
        ],
        "unrouted_names": [{"catalog": "c", "key": "DELETED", "name": f"{t}:deleted"}],
        "allowed": [],
        "problems": 3,
        "ok": False,
    }


def test_allow_excuses_known_problems_of_each_kind_and_lists_them(
    registry: aevents.Registry,
) -> None:
    """A name or pattern in ``allow`` excuses the unrouted and undeclared names it matches
    and the wildcard subscription equal to it; they are listed, not counted."""
    t = token()
    catalog = aevents.Catalog(
        {"CREATED": f"{t}:created", "EXPORTED": f"{t}:export:done", "DELETED": f"{t}:deleted"},
        name="c",
    )
    registry.subscribe(catalog.CREATED, receiver, id="welcome")
    registry.subscribe(f"{t}:legacy", receiver, id="old")  # undeclared
    registry.subscribe(f"x{t}:**", receiver, id="stray")  # matches nothing declared
    full = inspect_routes(registry, catalogs=[catalog])
    assert full.problem_count == 4
    report = inspect_routes(
        registry,
        catalogs=[catalog],
        allow=[f"{t}:export:*", f"{t}:legacy", f"x{t}:**"],
    )
    assert report.allowed == tuple(sorted([f"{t}:export:done", f"{t}:legacy", f"x{t}:**"]))
    assert report.unrouted_names == (DeclaredName("c", "DELETED", f"{t}:deleted", ()),)
    assert (report.undeclared_names, report.unmatched_patterns) == ((), ())
    assert report.problem_count == 1
    text = report.to_text()
    assert "Allowed, not counted (3)" in text
    assert text.endswith("1 problem found.")
    assert report.to_dict()["allowed"] == list(report.allowed)
    # A wildcard subscription is excused only by the same pattern, not a wider one.
    wider = inspect_routes(registry, catalogs=[catalog], allow=["**"])
    assert [u.pattern for u in wider.unmatched_patterns] == [f"x{t}:**"]
    assert wider.problem_count == 1
    with pytest.raises(aevents.InvalidEventNameError):
        inspect_routes(registry, catalogs=[catalog], allow=["not a name"])


def test_text_escapes_control_characters_in_ids_and_labels(registry: aevents.Registry) -> None:
    """Receiver ids and catalog labels with control characters print escaped, never raw."""
    t = token()
    catalog = aevents.Catalog({"SEEN": f"{t}:seen"}, name="label\x1b[2J")
    registry.subscribe(catalog.SEEN, receiver, id="spy\x1b[31m")
    registry.subscribe(f"{t}:unseen", receiver, id="spy\x1b[31m")
    text = inspect_routes(registry, catalogs=[catalog]).to_text()
    assert "\x1b" not in text
    assert "label\\x1b[2J" in text
    assert text.count("spy\\x1b[31m") == 2


def test_a_report_with_no_catalog_says_so(registry: aevents.Registry) -> None:
    """With nothing declared, the text says so and every exact subscription is undeclared."""
    registry.subscribe(f"{token()}:created", receiver, id="welcome")
    report = inspect_routes(registry, catalogs=[])
    assert report.to_text().startswith("No catalog declares any name.")
    assert len(report.undeclared_names) == 1


_SEGMENTS = st.sampled_from(["a", "b", "c"])
_PATTERN_SEGMENTS = st.sampled_from(["a", "b", "c", "*", "**"])
_SEPARATORS = st.sampled_from([":", "."])


@st.composite
def _dotted(draw: st.DrawFn, segments: st.SearchStrategy[str]) -> str:
    parts = draw(st.lists(segments, min_size=1, max_size=3))
    text = parts[0]
    for part in parts[1:]:
        text += draw(_SEPARATORS) + part
    return text


@settings(max_examples=150, deadline=None)
@given(
    names=st.lists(_dotted(_SEGMENTS), min_size=0, max_size=8, unique=True),
    patterns=st.lists(_dotted(_PATTERN_SEGMENTS), min_size=0, max_size=8, unique=True),
)
def test_the_report_agrees_with_matching_every_pattern_against_every_name(
    names: list[str], patterns: list[str]
) -> None:
    """Indexing by first segment never changes the answer of the brute-force comparison."""
    t = token()
    names = [f"{name}:{t}" for name in names]
    patterns = [f"{pattern}:{t}" for pattern in patterns]
    catalog = aevents.Catalog({f"N{i}": name for i, name in enumerate(names)})
    registry = aevents.Registry()
    for i, pattern in enumerate(patterns):
        registry.subscribe(pattern, receiver, id=f"r{i}")
    report = inspect_routes(registry, catalogs=[catalog])
    unmatched = {p for p in patterns if not any(compile_pattern(p)(name) for name in names)}
    assert {u.pattern for u in report.unmatched_patterns} == {p for p in unmatched if is_pattern(p)}
    assert {u.pattern for u in report.undeclared_names} == {
        p for p in unmatched if not is_pattern(p)
    }
    for declared in report.names:
        assert [m.receiver_id for m in declared.receivers] == [
            f"r{i}" for i, pattern in enumerate(patterns) if compile_pattern(pattern)(declared.name)
        ]


def test_a_report_is_a_frozen_value(registry: aevents.Registry) -> None:
    """Reports can be shared and compared: frozen attrs values, equal when their content is."""
    first = inspect_routes(registry, catalogs=[])
    assert first == inspect_routes(registry, catalogs=[])
    assert isinstance(first, RoutingReport)
    with pytest.raises(AttributeError):
        first.names = ()  # type: ignore[misc]


# -- python -m aevents inspect --------------------------------------------------------------


DOCS = (ROOT / "docs" / "cli.md",)


def _blocks(language: str) -> list[tuple[Path, str]]:
    """``(file, text)`` of every fenced block in ``language`` in the docs that exist."""
    pattern = rf"```{language}\n(.*?)```"
    return [
        (path, block)
        for path in DOCS
        if path.exists()
        for block in re.findall(pattern, path.read_text(), re.DOTALL)
    ]


def test_the_documented_example_prints_what_the_docs_show() -> None:
    """Each inspect example in the docs, run on its fixture app, prints exactly the block shown."""
    runs = [
        (path, *block.partition("\n")[::2])
        for path, block in _blocks("console")
        if block.startswith("$ python -m aevents inspect")
    ]
    assert runs, "no `$ python -m aevents inspect` console block found"
    for path, command, output in runs:
        argv = shlex.split(command.removeprefix("$ "))
        assert argv[:4] == ["python", "-m", "aevents", "inspect"]
        result = inspect_cli(*argv[4:])
        assert result.returncode == 0, result.stderr
        assert result.stdout == output, f"{path.name}: the output of {command!r} changed"


def test_the_documented_python_check_fails_with_the_report_as_its_message() -> None:
    """The docs' start-up assertion runs as written and fails on the shop with the report."""
    snippets = [block for _, block in _blocks("python") if "aevents.inspect_routes()" in block]
    assert snippets, "no python block calling aevents.inspect_routes() found"
    for snippet in snippets:
        result = subprocess.run(
            [sys.executable, "-c", snippet],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=FIXTURES,
        )
        assert result.returncode == 1
        assert "AssertionError: Routes of 5 declared names" in result.stderr
        assert "did you mean 'order:refunded'?" in result.stderr


def test_strict_exits_1_only_when_there_is_a_problem() -> None:
    """``--strict`` turns any problem into exit 1; a clean app and non-strict runs exit 0."""
    assert inspect_cli("shop.main:app", "--strict").returncode == 1
    assert inspect_cli("shop.main:app").returncode == 0
    clean = inspect_cli("tidy_app", "--strict")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.endswith("No problems found.\n")


def test_allow_lets_strict_pass_on_known_problems_only() -> None:
    """``--allow`` (repeatable) excuses known problems; any other problem still fails --strict."""
    known = ["--allow", "order:refund", "--allow", "invoice:**"]
    partly = inspect_cli("shop.main:app", "--strict", *known)
    assert partly.returncode == 1  # shipping:parcel:delivered still has no receiver
    assert partly.stdout.endswith("1 problem found.\n")
    assert "Allowed, not counted (2)\n  invoice:**\n  order:refund\n" in partly.stdout
    result = inspect_cli("shop.main:app", "--strict", "--json", *known, "--allow", "shipping:**")
    assert result.returncode == 0, result.stdout + result.stderr
    data = orjson.loads(result.stdout)
    assert data["allowed"] == ["invoice:**", "order:refund", "shipping:parcel:delivered"]
    assert (data["problems"], data["ok"]) == (0, True)


def test_json_is_the_report_structure() -> None:
    """``--json`` prints ``RoutingReport.to_dict()`` and nothing else on stdout."""
    result = inspect_cli("shop.main:app", "--json", "--strict")
    assert result.returncode == 1
    data = orjson.loads(result.stdout)
    assert [group["catalog"] for group in data["catalogs"]] == ["shop.orders", "shop.shipping"]
    assert data["undeclared_names"] == [
        {
            "name": "order:refund",
            "receiver_ids": ["shop.receivers:restock"],
            "suggestion": "order:refunded",
        }
    ]
    assert data["unmatched_patterns"] == [
        {"pattern": "invoice:**", "receiver_ids": ["shop.receivers:archive_invoice"]}
    ]
    assert data["unrouted_names"] == [
        {"catalog": "shop.shipping", "key": "DELIVERED", "name": "shipping:parcel:delivered"}
    ]
    assert (data["problems"], data["ok"]) == (3, False)


def test_what_the_app_prints_while_imported_goes_to_stderr() -> None:
    """An app printing at import time cannot corrupt the JSON on stdout."""
    result = inspect_cli("noisy_app", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["ok"] is True
    assert "connecting to the database..." in result.stderr


def test_a_target_that_fails_to_import_exits_1_with_one_line() -> None:
    """An import error is one clear line on stderr, not a traceback, unless ``--traceback``."""
    result = inspect_cli("broken_app")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "aevents: importing 'broken_app' raised RuntimeError: DATABASE_URL is not set"
        " (--traceback shows where)\n"
    )
    traced = inspect_cli("broken_app", "--traceback")
    assert traced.returncode == 1
    assert "Traceback (most recent call last)" in traced.stderr
    assert 'broken_app.py", line 3' in traced.stderr


def test_a_missing_module_says_where_it_looked() -> None:
    """A module that does not exist names the directory searched first and how to change it."""
    result = inspect_cli("nowhere.events")
    assert result.returncode == 1
    assert "cannot import 'nowhere.events': no module named 'nowhere'" in result.stderr
    assert str(FIXTURES) in result.stderr
    assert "--app-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_attribute_exits_1() -> None:
    """``module:attribute`` naming an attribute that does not exist is an error, as in uvicorn."""
    result = inspect_cli("shop.main:ap")
    assert result.returncode == 1
    assert "cannot find 'shop.main:ap': module 'shop.main' has no attribute 'ap'" in result.stderr


def test_targets_are_found_in_the_current_directory_even_without_pythons_own_path_entry() -> None:
    """With ``python -P`` (no cwd on sys.path) a target in the current directory still imports."""
    result = inspect_cli("tidy_app", python=("-P",))
    assert result.returncode == 0, result.stderr
    assert "tidy_app:send_invoice" in result.stdout


def test_app_dir_names_the_directory_to_import_from(tmp_path: Path) -> None:
    """``--app-dir`` finds targets outside the current directory."""
    result = inspect_cli("--app-dir", str(FIXTURES), "tidy_app", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tidy_app:ledger  via billing:*" in result.stdout
    assert inspect_cli("tidy_app", cwd=tmp_path).returncode == 1


def test_registry_option_inspects_that_registry_instead_of_the_default() -> None:
    """``--registry module:attribute`` reports on the app's own registry."""
    default = inspect_cli("custom_registry_app", "--json")
    assert [d["receivers"] for d in orjson.loads(default.stdout)["catalogs"][0]["names"]] == [
        [],
        [],
    ]
    own = inspect_cli("custom_registry_app", "--registry", "custom_registry_app:registry", "--json")
    assert own.returncode == 0, own.stderr
    assert orjson.loads(own.stdout)["catalogs"][0]["names"][0]["receivers"] == [
        {"receiver_id": "custom_registry_app:pay_everyone", "pattern": "payroll:run"}
    ]


def test_registry_option_refuses_what_is_not_a_registry() -> None:
    """A ``--registry`` that names something else exits 1 saying what it found."""
    result = inspect_cli("custom_registry_app", "--registry", "custom_registry_app:settings")
    assert result.returncode == 1
    assert "is a dict, not an aevents.Registry" in result.stderr


def test_control_characters_from_the_app_are_escaped_in_the_terminal_output() -> None:
    """Receiver ids and catalog labels an app chose print escaped, in text and in JSON."""
    text = inspect_cli("hostile_app")
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout
    assert "spy\\x1b[31m" in text.stdout
    assert "label\\x1b[2J" in text.stdout
    as_json = inspect_cli("hostile_app", "--json")
    assert "\x1b" not in as_json.stdout
    assert orjson.loads(as_json.stdout)["catalogs"][0]["catalog"] == "label\x1b[2J"


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect"],
        ["inspect", "shop/main.py"],
        ["inspect", "shop.main:"],
        ["inspect", "tidy_app", "--registry", "custom_registry_app"],
        ["inspect", "tidy_app", "--app-dir", "/nonexistent/aevents-inspect"],
        ["inspect", "tidy_app", "--allow", "not a pattern"],
    ],
)
def test_bad_usage_exits_2_before_importing_anything(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed targets, a registry without an attribute or a missing app dir exit 2."""
    modules = set(sys.modules)
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err
    assert set(sys.modules) == modules


def test_inspect_compares_with_the_live_consumers_of_a_store(tmp_path: Path) -> None:
    """``--store``: the routes of the live consumers against the app's, disagreements as
    problems; a missing journal is an error, not an empty fleet."""
    from aevents._store import Route, new_consumer_id

    journal = str(tmp_path / "events.db")

    async def register() -> None:
        store = aevents.SQLiteStore(journal)
        await store.open()
        try:
            routes = [Route("billing:*", "tidy_app:ledger"), Route("billing:paid", "other:audit")]
            await store.register(new_consumer_id(), routes, ttl=600)
        finally:
            await store.close()

    anyio.run(register)
    result = inspect_cli("tidy_app", "--store", journal, "--strict")
    assert result.returncode == 1, result.stderr
    assert "Compared with 1 live consumer" in result.stdout
    assert "billing:paid  other:audit" in result.stdout
    assert "billing:invoiced  tidy_app:send_invoice" in result.stdout  # nobody consumes it
    missing = inspect_cli("tidy_app", "--store", str(tmp_path / "nowhere.db"))
    assert missing.returncode != 0
    assert "no such journal file" in missing.stderr
