"""The README and the documentation site say what the code does, and break when it changes.

Each test reads the Markdown under ``docs/`` and the README, and checks one kind of
claim against the code: the reference covers every public name, every Python block
is copied from a file the tests run, every command exists, every default and every
``stats()`` field is stated as the code has it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import aevents
import aevents.testing
from aevents import EventRuntime, RetryPolicy, RuntimeStats, StoreStats

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
GUIDES = [page for page in PAGES if "reference" not in page.parts]
PUBLIC_MODULES = (
    "aevents",
    "aevents.testing",
    "aevents.pytest_plugin",
    "aevents.contrib.starlette",
    "aevents.contrib.fastapi",
    "aevents.contrib.django",
    "aevents.contrib.django.apps",
    "aevents.contrib.otel",
    "aevents.contrib.prometheus",
    "aevents.contrib.dashboard",
)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _blocks(language: str, paths: list[Path]) -> Iterator[tuple[Path, str]]:
    """``(file, text)`` of every fenced block in ``language``."""
    for path in paths:
        for block in re.findall(rf"^```{language}\n(.*?)^```", _text(path), re.S | re.M):
            yield path, block


def _commands(prefix: str) -> list[tuple[Path, str]]:
    """Every command starting with ``prefix`` in console blocks and inline code."""
    found = []
    for path in [README, *PAGES]:
        text = _text(path)
        lines = [
            line
            for block in re.findall(r"^```console\n(.*?)^```", text, re.S | re.M)
            for line in block.splitlines()
        ]
        inline = re.findall(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)", text)
        for candidate in [*lines, *(" ".join(code.split()) for code in inline)]:
            command = candidate.removeprefix("$ ").split("  #", 1)[0].strip()
            if command.startswith(prefix + " ") or command == prefix:
                found.append((path, command))
    return found


def _table(text: str, heading: str) -> dict[str, str]:
    """``{first cell: second cell}`` of the first table after ``heading``, backticks kept."""
    lines = text[text.index(heading) :].splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    rows = re.findall(r"^\| `([^`|]+)` \| ([^|]+) \|", "\n".join(table), re.M)
    return {name: cell.strip() for name, cell in rows}


# -- the reference ---------------------------------------------------------------------------


def _documented() -> set[str]:
    return {
        identifier
        for page in (DOCS / "reference").glob("*.md")
        for identifier in re.findall(r"^::: ([\w.]+)$", _text(page), re.M)
    }


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_reference_has_an_entry_for_every_public_name(module_name: str) -> None:
    """Each name in a public module's ``__all__`` has its own ``::: module.name`` entry."""
    module = importlib.import_module(module_name)
    names = [name for name in module.__all__ if name != "__version__"]
    missing = [name for name in names if f"{module_name}.{name}" not in _documented()]
    assert missing == [], f"docs/reference/ has no `::: {module_name}.NAME` for {missing}"


def test_the_reference_documents_no_name_that_is_gone() -> None:
    """Every reference entry names something that exists, so a removed name breaks the docs."""
    for identifier in _documented():
        module_name, _, name = identifier.rpartition(".")
        module = importlib.import_module(module_name)
        assert hasattr(module, name), identifier


def test_every_reference_entry_has_a_docstring() -> None:
    """Each entry has a docstring as griffe reads the source, so that mkdocstrings renders it."""
    griffe = pytest.importorskip("griffe", reason="installed with the docs extra")
    package = griffe.load("aevents", search_paths=[str(ROOT)], allow_inspection=False)
    missing = []
    for identifier in sorted(_documented()):
        found = package[identifier.removeprefix("aevents.")]
        if found.is_alias:
            found = found.final_target
        if not found.docstring:
            missing.append(identifier)
    assert missing == []


def test_the_reference_mentions_the_version_attribute() -> None:
    """``aevents.__version__``, which mkdocstrings cannot render, is described in words."""
    assert "aevents.__version__" in _text(DOCS / "reference" / "index.md")


def test_every_page_is_in_the_navigation() -> None:
    """Each Markdown page under docs/ is listed in mkdocs.yml's nav."""
    config = _text(ROOT / "mkdocs.yml")
    nav = config[config.index("\nnav:") :]
    for page in PAGES:
        assert page.relative_to(DOCS).as_posix() in nav, page


# -- code blocks -----------------------------------------------------------------------------


def _runnable_sources() -> str:
    """The Python files that the tests run: the examples and the tests themselves."""
    files = [*sorted((ROOT / "examples").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]
    return "\n".join(_text(path) for path in files if path.name != "test_docs.py")


def test_every_python_block_is_copied_from_a_file_the_tests_run() -> None:
    """Each Python block of the README and the guides appears verbatim in an example or a test."""
    sources = _runnable_sources()
    blocks = list(_blocks("python", [README, *GUIDES]))
    assert len(blocks) >= 30
    stale = [
        f"{path.relative_to(ROOT)}:\n{block}"
        for path, block in blocks
        if not any(textwrap.indent(block, " " * depth) in sources for depth in (0, 4, 8, 12))
        # tests/test_inspect.py runs the start-up check of the CLI guide as it stands
        and not (path.name == "cli.md" and "aevents.inspect_routes()" in block)
    ]
    assert stale == []


def test_the_first_script_is_quoted_whole() -> None:
    """The README and the getting-started guide show examples/first_script.py entire."""
    script = _text(ROOT / "examples" / "first_script.py")
    for path in (README, DOCS / "getting-started.md"):
        assert any(block == script for _, block in _blocks("python", [path])), path


def test_the_first_script_prints_what_the_docs_show() -> None:
    """Run as written, examples/first_script.py prints the lines the README shows."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "first_script.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def normal(lines: list[str]) -> list[str]:
        """Without the event id and the jittered delay, which change from run to run."""
        lines = [re.sub(r"as [0-9a-f]{28}$", "as ID", line) for line in lines]
        return sorted(re.sub(r"retrying in [0-9.]+s", "retrying in Ts", line) for line in lines)

    shown = next(block for _, block in _blocks("text", [README]) if "welcome mail" in block)
    printed = result.stdout.splitlines() + result.stderr.splitlines()
    assert normal(printed) == normal(shown.splitlines())
    guide = DOCS / "getting-started.md"
    documented = next(block for _, block in _blocks("console", [guide]) if "welcome" in block)
    assert documented.splitlines()[1:] == shown.splitlines()


# -- commands --------------------------------------------------------------------------------


def test_every_documented_cli_command_parses() -> None:
    """Each ``python -m aevents ...`` command in the docs is accepted by the CLI's parser."""
    from aevents._cli import _parser

    commands = _commands("python -m aevents")
    assert len(commands) >= 8
    for path, command in commands:
        argv = shlex.split(command)[3:]
        if "--help" in argv or "COMMAND" in argv or len(argv) < 2:
            continue  # the command named in a sentence, not a command line
        try:
            _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}: `{command}` is not a valid command")


def test_every_documented_benchmark_command_parses() -> None:
    """Each benchmark command in the docs names options, workloads and systems that exist."""
    from benchmarks.cli import parse
    from benchmarks.systems import SYSTEMS
    from benchmarks.workloads import WORKLOADS

    suite = _commands("python -m benchmarks")
    assert suite
    for path, command in suite:
        argv = shlex.split(command)[3:]
        args = parse(argv)
        for chosen, known in ((args.workloads, WORKLOADS), (args.systems, SYSTEMS)):
            unknown = [item for item in (chosen or "").split(",") if item and item not in known]
            assert unknown == [], f"{path.name}: `{command}` names unknown {unknown}"
    others = [
        *_commands("python -m benchmarks.keys"),
        *_commands("python -m benchmarks.plot"),
        *_commands("python scripts/bench_durable.py"),
        *_commands("python scripts/bench_store.py"),
    ]
    assert others
    for path, command in others:
        argv = shlex.split(command)[1:]
        target = ["-m", argv[1]] if argv[0] == "-m" else [argv[0]]
        rest = argv[2:] if argv[0] == "-m" else argv[1:]
        positional = [word for word in rest if not word.startswith("-")][:1]
        subcommand = positional if positional and positional[0].isidentifier() else []
        helped = subprocess.run(
            [sys.executable, *target, *subcommand, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert helped.returncode == 0, f"{path.name}: `{command}`: {helped.stderr}"
        for option in (word.split("=")[0] for word in rest if word.startswith("--")):
            assert option in helped.stdout, f"{path.name}: `{command}`: no option {option}"


def test_every_extra_named_in_the_docs_exists() -> None:
    """``pip install 'aevents[x]'`` and ``'.[x]'`` name extras that pyproject.toml defines."""
    extras = tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]["optional-dependencies"]
    named = [
        (path.name, extra.strip())
        for path in [README, *PAGES]
        for group in re.findall(r"(?:aevents|\.)\[([a-z0-9,\s-]+)\]", _text(path))
        for extra in group.split(",")
    ]
    assert len(named) >= 8
    assert [(page, extra) for page, extra in named if extra not in extras] == []


def test_ci_runs_the_readmes_test_command() -> None:
    """.ci/run runs exactly the test command the README gives."""
    assert "bash scripts/test     # the test suite" in _text(README)
    ci = [line for line in _text(ROOT / ".ci" / "run").splitlines() if line.startswith("bash")]
    assert ci == ["bash scripts/test"]


# -- defaults and fields ---------------------------------------------------------------------


def _defaults(callable_: Callable[..., Any]) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(callable_).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _literal(cell: str) -> Any:
    value = re.match(r"`([^`]+)`", cell)
    assert value is not None, cell
    return ast.literal_eval(value.group(1))


def test_the_defaults_table_matches_event_runtime() -> None:
    """The concepts guide lists every EventRuntime option with the default the code has."""
    table = _table(_text(DOCS / "concepts.md"), "## The runtime and its defaults")
    defaults = _defaults(EventRuntime)
    del defaults["registry"]
    assert sorted(table) == sorted(defaults)
    assert {name: _literal(cell) for name, cell in table.items()} == defaults


def test_the_readme_states_the_main_defaults_as_the_code_has_them() -> None:
    """The README's defaults table covers workers, buffer, threads, retry and both timeouts."""
    table = _table(_text(README), "## The runtime's defaults")
    main = {"workers", "buffer", "sync_threads", "retry", "timeout", "shutdown_timeout"}
    assert set(table) == main
    defaults = _defaults(EventRuntime)
    assert {name: _literal(cell) for name, cell in table.items()} == {
        name: defaults[name] for name in main
    }


def test_the_retry_policy_table_matches_the_class() -> None:
    """The concepts guide lists RetryPolicy's fields with their defaults."""
    table = _table(_text(DOCS / "concepts.md"), "The retry policy's fields")
    fields = {field.name: field.default for field in attrs.fields(RetryPolicy)}
    assert {name: _literal(cell) for name, cell in table.items()} == fields
    described = "3 attempts, backoff from 0.1 s doubling up to 30 s, 25 % jitter"
    assert RetryPolicy() == RetryPolicy(3, 0.1, 2.0, 30.0, 0.25)
    assert described in _text(DOCS / "concepts.md")
    assert described in _text(README)


@pytest.mark.parametrize(
    ("stats", "heading"), [(RuntimeStats, "`runtime.stats()`"), (StoreStats, "as a `StoreStats`")]
)
def test_every_stats_field_is_documented(stats: type, heading: str) -> None:
    """The durable-delivery guide has one row for each field of the stats class, and no more."""
    table = _table(_text(DOCS / "durable.md"), heading)
    assert list(table) == [field.name for field in attrs.fields(stats)]


# -- keyword arguments in prose --------------------------------------------------------------


def _public_callables() -> dict[str, Callable[..., Any]]:
    """Public functions, classes and methods by their last name (the one prose uses)."""
    found: dict[str, Callable[..., Any]] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if callable(value):
                found.setdefault(name, value)
    for cls in (EventRuntime, aevents.Registry, aevents.Metrics, aevents.testing.Captured):
        for name, value in vars(cls).items():
            if not name.startswith("_") and callable(value):
                found.setdefault(name, value)
    return found


def test_keyword_arguments_in_the_prose_exist() -> None:
    """``name(..., option=...)`` in inline code uses only parameters the callable has."""
    known = _public_callables()
    checked = 0
    for path in [README, *GUIDES]:
        for name, arguments in re.findall(r"`(?:[\w.]+\.)?(\w+)\(([^`]*)\)`", _text(path)):
            if name not in known:
                continue
            try:
                parameters = inspect.signature(known[name]).parameters
            except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
                continue
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                continue
            for keyword in re.findall(r"(?:^|[(,\s])(\w+)=", arguments):
                checked += 1
                assert keyword in parameters, f"{path.name}: `{name}({arguments})`: {keyword}="
    assert checked >= 20


# -- words -----------------------------------------------------------------------------------


def test_the_readme_is_a_landing_page() -> None:
    """The README stays short: the guides are on the site."""
    assert len(_text(README).splitlines()) <= 250


@pytest.mark.parametrize(
    "phrase", [r"\bAPI\.md", r"(?i)\bthe contract", r"(?i)\bthe issues?\b", r"(?i)\bgoals\b"]
)
def test_the_docs_speak_to_users_only(phrase: str) -> None:
    """No page mentions what only the project's developers could see."""
    for path in [README, *PAGES, ROOT / "benchmarks" / "README.md"]:
        found = re.search(phrase, _text(path))
        assert found is None, f"{path.name}: {found.group(0)!r}"
