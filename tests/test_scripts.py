"""The repository's scripts install what they need to run on a fresh clone."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _extras_installed_by(script: str) -> list[str]:
    """The extras a script passes to ``scripts/_venv.sh``."""
    text = (ROOT / "scripts" / script).read_text()
    found = re.search(r'_venv\.sh" ([\w,-]+)', text)
    assert found is not None, f"scripts/{script} does not source _venv.sh"
    return found.group(1).split(",")


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_the_demo_installs_every_backend_it_accepts() -> None:
    """`bash scripts/demo trio` and `bash scripts/demo uvloop` find their backend installed."""
    extras = _extras()
    installed = set().union(
        *(_requirement_names(extras[extra]) for extra in _extras_installed_by("demo"))
    )
    demo = (ROOT / "examples" / "demo.py").read_text()
    assert 'backend == "uvloop"' in demo
    assert "anyio.run(main, backend=backend)" in demo  # any other argument is anyio's backend
    assert {"trio", "uvloop"} <= installed


def test_trio_and_uvloop_are_extras_of_their_own() -> None:
    """`pip install 'aevents[trio]'` and `'aevents[uvloop]'` install the backend, and only it."""
    extras = _extras()
    assert _requirement_names(extras["trio"]) == {"trio"}
    assert _requirement_names(extras["uvloop"]) == {"uvloop"}


def test_every_script_installs_extras_that_exist() -> None:
    """demo, test and docs name only extras pyproject.toml defines; test builds the docs."""
    extras = _extras()
    for script in ("demo", "test", "docs"):
        assert set(_extras_installed_by(script)) <= set(extras), script
    assert "docs" in _extras_installed_by("test")
    assert "mkdocs build --strict" in (ROOT / "scripts" / "test").read_text()


BENCH_SCRIPTS = sorted(path.name for path in (ROOT / "scripts").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_each_benchmark_script_starts(script: str) -> None:
    """Each ``scripts/bench_*.py`` imports what it uses (several reach into aevents'
    internals, which change) and answers ``--help``."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
