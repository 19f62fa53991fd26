"""Mutation testing of one core module with mutmut: which changes to the code do the tests miss?

    scripts/mutation MODULE [--max-children N] [--show-survivors] [--keep]

MODULE is one of the modules in ``MODULE_TESTS`` (``names``, ``_names`` and
``aevents/_names.py`` all name the same one). The repository is copied to a
temporary directory, mutmut mutates only ``aevents/<MODULE>.py`` there and runs
the tests that exercise that module against each mutant. The summary counts
killed, survived and equivalent mutants; the score leaves out the equivalent
ones, listed with a reason each in ``scripts/mutation-equivalents.md``.

The pytest plugin imports ``aevents``. It is loaded with ``-p no:aevents -p
aevents.pytest_plugin`` instead of through its entry point, and ``PYTHONPATH``
is cleared, so that it imports mutmut's mutated copy (first on ``sys.path``
once mutmut has set it up), never the working tree.

It is slow (minutes per module) and CPU-heavy: a tool for developers, not a CI step.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = Path(__file__).resolve().parent / "mutation-equivalents.md"

# The tests that exercise each module; files that do not exist (yet) are skipped.
MODULE_TESTS: dict[str, tuple[str, ...]] = {
    "_names": ("tests/test_names.py", "tests/test_catalog.py"),
    "_payload": ("tests/test_payload.py", "tests/test_event.py"),
    "_policy": ("tests/test_policy.py", "tests/test_delivery.py"),
    "_lanes": ("tests/test_ordering.py", "tests/test_ordering_edges.py"),
    "_idempotency": ("tests/test_idempotency.py", "tests/test_idempotent_publish.py"),
    "_registry": ("tests/test_registry.py", "tests/test_registry_details.py"),
}

# mutmut's names for its outcomes, grouped: a timeout or a crash is the test noticing.
KILLED = frozenset({"killed", "timeout", "segfault", "caught by type check"})
SURVIVED = frozenset({"survived", "no tests", "suspicious", "skipped"})

# "aevents._names.x__explain__mutmut_12", "aevents._policy.xǁRetryPolicyǁdelay__mutmut_3"
MUTANT_NAME = re.compile(r"^aevents\.(_[a-z_]+)\.x[_ǁ][A-Za-z0-9_ǁ]*__mutmut_[0-9]+$")
# A list item of the equivalents file: "- `mutant name`: reason".
_EQUIVALENT_LINE = re.compile(r"^- `(?P<name>[^`]+)`: (?P<reason>\S.*)$")


class UsageError(Exception):
    """A bad argument or a malformed equivalents file: the message says which."""


def module_name(argument: str) -> str:
    """``"names"``, ``"_names"``, ``"_names.py"`` or ``"aevents/_names.py"`` -> ``"_names"``."""
    text = argument.strip()
    text = text.removeprefix("aevents/").removeprefix("aevents.").removesuffix(".py")
    if not text.startswith("_"):
        text = "_" + text
    if text not in MODULE_TESTS:
        known = ", ".join(sorted(name.lstrip("_") for name in MODULE_TESTS))
        raise UsageError(f"unknown module {argument!r}; choose one of: {known}")
    return text


def parse_equivalents(text: str) -> dict[str, str]:
    """``{mutant name: reason}`` from the equivalents file's list items.

    Every line that starts with ``- `` must be ``- `NAME`: reason`` with a
    mutant name mutmut could produce; other lines are prose and ignored.
    """
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("- "):
            continue
        match = _EQUIVALENT_LINE.match(line)
        if match is None:
            raise UsageError(f'{EQUIVALENTS.name}:{number}: expected "- `mutant`: reason"')
        name = match["name"]
        if MUTANT_NAME.match(name) is None:
            raise UsageError(f"{EQUIVALENTS.name}:{number}: {name!r} is not a mutant name")
        if name in found:
            raise UsageError(f"{EQUIVALENTS.name}:{number}: {name!r} is listed twice")
        found[name] = match["reason"]
    return found


def load_equivalents(module: str, path: Path = EQUIVALENTS) -> dict[str, str]:
    """The equivalent mutants listed for ``module``."""
    listed = parse_equivalents(path.read_text(encoding="utf-8")) if path.exists() else {}
    prefix = f"aevents.{module}."
    return {name: reason for name, reason in listed.items() if name.startswith(prefix)}


def parse_results(output: str) -> dict[str, str]:
    """``{mutant name: status}`` from ``mutmut results --all true``."""
    results: dict[str, str] = {}
    for line in output.splitlines():
        name, separator, status = line.strip().partition(": ")
        if separator and MUTANT_NAME.match(name):
            results[name] = status
    return results


def summarise(results: dict[str, str], equivalents: dict[str, str]) -> tuple[Counter[str], float]:
    """Counts of killed, survived, equivalent and unchecked mutants, and the score in percent."""
    counts: Counter[str] = Counter()
    for name, status in results.items():
        if name in equivalents:
            counts["equivalent"] += 1
            if status in KILLED:
                counts["equivalent but killed"] += 1
        elif status in KILLED:
            counts["killed"] += 1
        elif status in SURVIVED:
            counts["survived"] += 1
        else:
            counts["not checked"] += 1
    scored = counts["killed"] + counts["survived"]
    score = 100.0 * counts["killed"] / scored if scored else 0.0
    return counts, score


def _pyproject_with_mutmut(text: str, module: str, tests: Sequence[str]) -> str:
    def toml_list(items: Sequence[str]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    plugin_args = ["-p", "no:aevents", "-p", "aevents.pytest_plugin", "-p", "no:cacheprovider"]
    return (
        text
        + "\n[tool.mutmut]\n"
        + 'source_paths = ["aevents"]\n'
        + f'only_mutate = ["aevents/{module}.py"]\n'
        + f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        + f"pytest_add_cli_args = {toml_list(plugin_args)}\n"
        + "use_git_change_detection = false\n"
    )


def _copy_repository(source: Path, target: Path, module: str, tests: Sequence[str]) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants")
    for directory in ("aevents", "tests"):
        shutil.copytree(source / directory, target / directory, ignore=ignore)
    pyproject = (source / "pyproject.toml").read_text(encoding="utf-8")
    (target / "pyproject.toml").write_text(
        _pyproject_with_mutmut(pyproject, module, tests), encoding="utf-8"
    )


def run(module: str, *, source: Path, max_children: int, show_survivors: bool, keep: bool) -> int:
    tests = [test for test in MODULE_TESTS[module] if (source / test).exists()]
    if not tests:
        raise UsageError(f"none of the tests for {module} exist under {source}")
    equivalents = load_equivalents(module)
    workdir = Path(tempfile.mkdtemp(prefix=f"aevents-mutation{module}-"))
    try:
        _copy_repository(source, workdir, module, tests)
        environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        print(f"mutating aevents/{module}.py against {' '.join(tests)} in {workdir}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)],
            cwd=workdir,
            env=environment,
            check=False,
        )
        listing = subprocess.run(
            [sys.executable, "-m", "mutmut", "results", "--all", "true"],
            cwd=workdir,
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )
        results = parse_results(listing.stdout)
        if not results:
            print("mutmut reported no mutants; see its output above", file=sys.stderr)
            return 1
        counts, score = summarise(results, equivalents)
        survivors = sorted(
            name
            for name, status in results.items()
            if status not in KILLED and name not in equivalents
        )
        stale = sorted(set(equivalents) - set(results))
        if show_survivors:
            for name in survivors:
                shown = subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", name],
                    cwd=workdir,
                    env=environment,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                print(shown.stdout)
        else:
            for name in survivors:
                print(f"survived: {name} ({results[name]})")
        for name in stale:
            print(f"listed as equivalent, but mutmut made no such mutant: {name}")
        for name, status in sorted(results.items()):
            if name in equivalents and status in KILLED:
                print(f"listed as equivalent, but a test killed it: {name}")
        print(
            f"aevents/{module}.py: {len(results)} mutants, {counts['killed']} killed, "
            f"{counts['survived']} survived, {counts['equivalent']} equivalent"
            + (f", {counts['not checked']} not checked" if counts["not checked"] else "")
            + f"; score {score:.1f}% of non-equivalent mutants killed"
        )
        return 0
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/mutation", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("module", help="one of: " + ", ".join(m.lstrip("_") for m in MODULE_TESTS))
    parser.add_argument(
        "--max-children", type=int, default=1, help="mutants tested at once (default 1)"
    )
    parser.add_argument(
        "--show-survivors", action="store_true", help="print the diff of each surviving mutant"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument(
        "--source", type=Path, default=ROOT, help="repository to copy (default: this one)"
    )
    options = parser.parse_args(argv)
    if options.max_children < 1:
        parser.error(f"--max-children must be >= 1, got {options.max_children}")
    try:
        module = module_name(options.module)
        return run(
            module,
            source=options.source.resolve(),
            max_children=options.max_children,
            show_survivors=options.show_survivors,
            keep=options.keep,
        )
    except UsageError as error:
        parser.error(str(error))
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
