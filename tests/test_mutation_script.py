"""scripts/mutation: its arguments, the equivalents list and the summary (mutmut is not run)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts/mutation.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mutation = load_script()


@pytest.mark.parametrize("argument", ["names", "_names", "_names.py", "aevents/_names.py"])
def test_a_module_can_be_named_several_ways(argument: str) -> None:
    """The bare name, the private name, the file name and the path all mean the same module."""
    assert mutation.module_name(argument) == "_names"


@pytest.mark.parametrize("argument", ["runtime", "", "aevents", "_store"])
def test_an_unknown_module_is_refused_with_the_choices(argument: str) -> None:
    with pytest.raises(mutation.UsageError, match="choose one of: idempotency, lanes, names"):
        mutation.module_name(argument)


@pytest.mark.parametrize(
    "argv", [["runtime"], ["names", "--max-children", "0"], [], ["names", "--max-children", "x"]]
)
def test_bad_arguments_exit_with_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad arguments stop before anything is copied or run, with argparse's exit status 2."""
    with pytest.raises(SystemExit) as caught:
        mutation.main(argv)
    assert caught.value.code == 2
    assert "usage: scripts/mutation" in capsys.readouterr().err


def test_every_module_and_at_least_one_of_its_tests_exist() -> None:
    """The table of modules and tests stays in step with the tree."""
    assert set(mutation.MODULE_TESTS) == {
        "_names",
        "_payload",
        "_policy",
        "_lanes",
        "_idempotency",
        "_registry",
    }
    for module, tests in mutation.MODULE_TESTS.items():
        assert (ROOT / "aevents" / f"{module}.py").is_file()
        assert all((ROOT / test).is_file() for test in tests), module


def test_the_mutmut_configuration_loads_the_plugin_after_the_mutated_copy() -> None:
    """The copy's pyproject mutates one module, selects its tests and replaces the entry point."""
    text = mutation._pyproject_with_mutmut(
        (ROOT / "pyproject.toml").read_text(encoding="utf-8"),
        "_policy",
        ["tests/test_policy.py", "tests/test_delivery.py"],
    )
    config = tomllib.loads(text)["tool"]["mutmut"]
    assert config["only_mutate"] == ["aevents/_policy.py"]
    assert config["pytest_add_cli_args_test_selection"] == [
        "tests/test_policy.py",
        "tests/test_delivery.py",
    ]
    arguments = config["pytest_add_cli_args"]
    assert arguments[:4] == ["-p", "no:aevents", "-p", "aevents.pytest_plugin"]


# ------------------------------------------------------------------ equivalents


def test_the_equivalents_file_parses_and_names_only_known_modules() -> None:
    """Every listed equivalent is a well-formed mutant name of a module the script knows,
    with a reason."""
    listed = mutation.parse_equivalents(mutation.EQUIVALENTS.read_text(encoding="utf-8"))
    assert listed, "the list is read from scripts/mutation-equivalents.md"
    for name, reason in listed.items():
        match = mutation.MUTANT_NAME.match(name)
        assert match is not None, name
        assert match[1] in mutation.MODULE_TESTS, name
        assert len(reason) > 10, name


def test_equivalents_are_filtered_by_module(tmp_path: Path) -> None:
    listing = tmp_path / "equivalents.md"
    listing.write_text(
        "# Equivalent mutants\n\nProse is ignored.\n\n"
        "- `aevents._names.x_first_segment__mutmut_6`: maxsplit 2 keeps the same first part\n"
        "- `aevents._policy.xǁRetryPolicyǁ__attrs_post_init____mutmut_3`: float('INF') is inf\n",
        encoding="utf-8",
    )
    assert mutation.load_equivalents("_names", listing) == {
        "aevents._names.x_first_segment__mutmut_6": "maxsplit 2 keeps the same first part"
    }
    assert list(mutation.load_equivalents("_policy", listing)) == [
        "aevents._policy.xǁRetryPolicyǁ__attrs_post_init____mutmut_3"
    ]
    assert mutation.load_equivalents("_registry", listing) == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- aevents._names.x_f__mutmut_1: no backquotes", "expected"),
        ("- `aevents._names.x_f__mutmut_1`:", "expected"),
        ("- `aevents._names.x_f__mutmut_1` no colon", "expected"),
        ("- `aevents._names.f__mutmut_1`: not a mangled name", "not a mutant name"),
        ("- `aevents._names.x_f__mutmut_`: no number", "not a mutant name"),
        ("- `_names.x_f__mutmut_1`: no package", "not a mutant name"),
        (
            "- `aevents._names.x_f__mutmut_1`: once\n- `aevents._names.x_f__mutmut_1`: twice",
            "twice",
        ),
    ],
)
def test_a_malformed_equivalents_line_is_refused_with_its_line_number(
    text: str, problem: str
) -> None:
    with pytest.raises(mutation.UsageError, match=f":[12]: .*{problem}"):
        mutation.parse_equivalents(text)


# ------------------------------------------------------------------ results


RESULTS = """\
    aevents._policy.x_describe_error__mutmut_1: killed
    aevents._policy.x_describe_error__mutmut_2: survived
    aevents._policy.x_describe_error__mutmut_3: timeout
    aevents._policy.xǁRetryPolicyǁdelay__mutmut_1: no tests
    aevents._policy.xǁRetryPolicyǁdelay__mutmut_2: survived
    aevents._policy.xǁRetryPolicyǁdelay__mutmut_3: not checked
some other line mutmut printed
"""


def test_results_are_parsed_and_scored_without_the_equivalents() -> None:
    """Timeouts count as killed, no-test mutants as survivors, and equivalents are left out."""
    results = mutation.parse_results(RESULTS)
    assert len(results) == 6
    assert results["aevents._policy.xǁRetryPolicyǁdelay__mutmut_1"] == "no tests"
    equivalents = {"aevents._policy.xǁRetryPolicyǁdelay__mutmut_2": "same"}
    counts, score = mutation.summarise(results, equivalents)
    assert (counts["killed"], counts["survived"], counts["equivalent"]) == (2, 2, 1)
    assert counts["not checked"] == 1
    assert score == 50.0
    assert mutation.summarise({}, {})[1] == 0.0
