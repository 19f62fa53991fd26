"""RuntimeConfig: EventRuntime's options as one typed value, checked and resolved."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path
from typing import Any

import attrs
import pytest

import aevents
from aevents import (
    ConfigurationError,
    EventRuntime,
    MemoryStore,
    Metrics,
    Middleware,
    Registry,
    RetryPolicy,
)
from aevents._config import KEYED_DEAD_LETTER_POLICIES, OPTIONS, RuntimeConfig

_MIDDLEWARE = Middleware()
_METRICS = Metrics()
_NOT_MIDDLEWARE = object()

# (option, bad value, the problem ConfigurationError states)
BAD_VALUES: list[tuple[str, object, str]] = [
    ("registry", "default", "registry must be an aevents.Registry, got 'default'"),
    ("registry", aevents.Catalog, "registry must be an aevents.Registry, got "),
    *[
        (option, value, f"{option} must be an int >= 1, got {value!r}")
        for option in (
            "workers",
            "buffer",
            "max_payload_bytes",
            "max_causation_depth",
            "max_dead_letters",
            "max_idempotency_keys",
        )
        for value in (0, -1, 1.5, True, "8", None)
    ],
    *[
        (option, value, f"{option} must be an int >= 1, got {value!r}")
        for option in ("sync_threads", "start_ahead")
        for value in (0, 2.0, False, "2")
    ],
    ("store", "events.db", "store must implement the aevents.Store protocol, got 'events.db'"),
    ("retry", 3, "retry must be a RetryPolicy, got 3"),
    ("retry", {"attempts": 3}, "retry must be a RetryPolicy, got {'attempts': 3}"),
    *[
        ("timeout", value, f"timeout must be > 0 seconds, got {value!r}")
        for value in (0, -1, True, "1", math.nan)
    ],
    *[
        ("shutdown_timeout", value, f"shutdown_timeout must be >= 0, got {value!r}")
        for value in (-1, -0.5, None, True, "10", math.nan)
    ],
    *[
        (option, value, f"{option} must be True or False, got {value!r}")
        for option in ("strict", "log_payloads")
        for value in (1, 0, "yes", None)
    ],
    *[
        ("keyed_dead_letters", value, f"keyed_dead_letters must be 'skip' or 'hold', got {value!r}")
        for value in ("drop", "SKIP", None)
    ],
    *[
        (
            "idempotency_window",
            value,
            f"idempotency_window must be a finite number of seconds > 0, got {value!r}",
        )
        for value in (0, -1, math.inf, math.nan, True, "60", None)
    ],
    *[
        ("metrics", value, f"metrics must be True, False or an aevents.Metrics, got {value!r}")
        for value in (None, 1, "yes", _MIDDLEWARE)
    ],
    *[
        (
            "middleware",
            value,
            f"middleware must be a sequence of aevents.Middleware, got {value!r}",
        )
        for value in ("ab", _MIDDLEWARE, {_MIDDLEWARE}, None)
    ],
    (
        "middleware",
        [_MIDDLEWARE, _NOT_MIDDLEWARE],
        f"middleware must subclass aevents.Middleware, got {_NOT_MIDDLEWARE!r}",
    ),
    ("middleware", [_MIDDLEWARE, _MIDDLEWARE], f"middleware {_MIDDLEWARE!r} is already added"),
    *[
        ("consume", value, f"consume must be True or False, got {value!r}")
        for value in (1, 0, "no", None)
    ],
    ("consume", False, "consume=False needs a store that processes share"),
    *[
        ("lease", value, f"lease must be between 0.1 and 86400 seconds, got {value!r}")
        for value in (0, 0.05, -1, 86_401, float("nan"), float("inf"), "30", True, None)
    ],
]


def _id(option: str, value: object) -> str:
    return f"{option}={type(value).__name__}:{value!r}"[:60]


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [pytest.param(*case, id=_id(*case[:2])) for case in BAD_VALUES],
)
def test_each_bad_value_is_refused_naming_the_option_and_the_value(
    option: str, value: object, problem: str
) -> None:
    """A bad value raises ConfigurationError saying which option and what it got."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigurationError) as caught:
        RuntimeConfig(**options)
    assert caught.value.what == "EventRuntime"
    assert caught.value.problem.startswith(problem)
    assert caught.value.problem.startswith(option)


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [pytest.param(*case, id=_id(*case[:2])) for case in BAD_VALUES],
)
def test_event_runtime_refuses_the_same_values_with_the_same_message(
    option: str, value: object, problem: str
) -> None:
    """EventRuntime checks its arguments through RuntimeConfig, so the errors agree."""
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigurationError) as caught:
        EventRuntime(**options)
    assert (caught.value.what, caught.value.problem[: len(problem)]) == ("EventRuntime", problem)


def test_every_option_has_a_bad_value_under_test() -> None:
    """An option added to RuntimeConfig without a test of its check fails here."""
    assert {option for option, _, _ in BAD_VALUES} == set(OPTIONS)


def test_options_are_event_runtime_keyword_arguments_with_the_same_defaults() -> None:
    """RuntimeConfig takes exactly EventRuntime's options, and defaults them alike."""
    parameters = inspect.signature(EventRuntime).parameters
    runtime_defaults = {name: parameter.default for name, parameter in parameters.items()}
    config_defaults = {
        str(field.alias): field.default for field in attrs.fields(RuntimeConfig) if field.init
    }
    assert config_defaults == runtime_defaults
    assert len(OPTIONS) == len(set(OPTIONS)) == 21


def test_defaults_resolve_to_the_values_the_runtime_uses() -> None:
    """With no arguments: the default registry, a default RetryPolicy, one thread per worker."""
    config = RuntimeConfig()
    assert config.registry is aevents.default_registry
    assert config.retry == RetryPolicy()
    assert (config.workers, config.buffer, config.sync_threads) == (8, 1024, 8)
    assert config.start_ahead == 8
    assert (config.store, config.timeout, config.shutdown_timeout) == (None, None, 10.0)
    assert (config.strict, config.log_payloads, config.keyed_dead_letters) == (
        False,
        False,
        "skip",
    )
    assert (config.max_payload_bytes, config.max_causation_depth, config.max_dead_letters) == (
        1024 * 1024,
        32,
        10_000,
    )
    assert (config.idempotency_window, config.max_idempotency_keys) == (86_400.0, 100_000)
    assert (config.metrics, config.middleware) == (None, ())


def test_sync_threads_default_to_workers_and_keep_a_given_count() -> None:
    """``sync_threads=None`` reads as ``workers``; a number is kept."""
    assert RuntimeConfig(workers=3, sync_threads=None).sync_threads == 3
    assert RuntimeConfig(workers=3, sync_threads=5).sync_threads == 5


def test_start_ahead_defaults_to_workers_and_keeps_a_given_count() -> None:
    """``start_ahead=None`` reads as ``workers``; a number is kept, above workers too."""
    assert RuntimeConfig(workers=3, start_ahead=None).start_ahead == 3
    assert RuntimeConfig(workers=3, start_ahead=256).start_ahead == 256


def test_given_registry_retry_and_store_are_kept_as_they_are() -> None:
    """A registry, a policy and a store passed in are the very objects read back."""
    registry, retry, store = Registry(), RetryPolicy(attempts=1), MemoryStore()
    config = RuntimeConfig(registry=registry, retry=retry, store=store)
    assert (config.registry, config.retry, config.store) == (registry, retry, store)
    assert config.registry is registry
    assert config.store is store


def test_metrics_true_makes_a_metrics_false_none_and_one_given_is_kept() -> None:
    """``metrics=True`` reads as a new Metrics per config, ``False`` as None."""
    first, second = RuntimeConfig(metrics=True).metrics, RuntimeConfig(metrics=True).metrics
    assert isinstance(first, Metrics)
    assert isinstance(second, Metrics)
    assert first is not second
    assert RuntimeConfig(metrics=False).metrics is None
    assert RuntimeConfig(metrics=_METRICS).metrics is _METRICS


def test_middleware_is_kept_in_order_as_a_tuple() -> None:
    """A list of middleware reads back as a tuple, so changing the list changes nothing."""
    other = Middleware()
    given = [_MIDDLEWARE, other]
    config = RuntimeConfig(middleware=given)
    given.clear()
    assert config.middleware == (_MIDDLEWARE, other)


def test_the_metrics_cannot_also_be_in_the_middleware() -> None:
    """``metrics=m`` installs ``m`` already; listing it again is refused."""
    with pytest.raises(ConfigurationError) as caught:
        RuntimeConfig(metrics=_METRICS, middleware=[_METRICS])
    assert caught.value.problem == f"middleware {_METRICS!r} is already added"


@pytest.mark.parametrize(
    "options",
    [
        {"workers": 1, "buffer": 1, "sync_threads": 1, "max_idempotency_keys": 1},
        {"timeout": 0.001, "shutdown_timeout": 0},
        {"timeout": 5, "shutdown_timeout": math.inf},
        {"idempotency_window": 0.001},
        {"strict": True, "log_payloads": True, "keyed_dead_letters": "hold"},
        {"middleware": (_MIDDLEWARE,), "metrics": _METRICS},
    ],
)
def test_the_smallest_and_edge_values_are_accepted(options: dict[str, Any]) -> None:
    """The bounds themselves are allowed: one worker, no shutdown wait, ints for seconds."""
    config = RuntimeConfig(**options)
    assert {option: getattr(config, option) for option in options} == {
        option: tuple(value) if option == "middleware" else value
        for option, value in options.items()
    }


def test_config_is_frozen_and_keyword_only() -> None:
    """A config cannot change once made, and takes its options by name only."""
    config = RuntimeConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.workers = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        RuntimeConfig(Registry())  # type: ignore[call-arg]


def test_evolve_checks_the_new_value_and_resolves_again() -> None:
    """``attrs.evolve`` re-checks and re-resolves, like a new config."""
    config = RuntimeConfig(workers=2)
    assert attrs.evolve(config, workers=4).sync_threads == 4
    with pytest.raises(ConfigurationError, match="workers must be an int >= 1, got 0"):
        attrs.evolve(config, workers=0)


def test_keyed_dead_letter_policies_are_the_literal_choices() -> None:
    """The allowed policies are the two the type admits, skip first (the default)."""
    assert KEYED_DEAD_LETTER_POLICIES == ("skip", "hold")


def test_config_module_imports_no_part_of_the_runtime() -> None:
    """aevents._config sits at the bottom of the import graph, below the runtime's modules."""
    tree = ast.parse(Path(aevents.__file__).with_name("_config.py").read_text())
    on_import = {  # run when the module loads: not in a function, not for type checking
        node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level
    }
    anywhere = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
    }
    assert on_import == {"_exceptions", "_payload", "_policy", "_registry", "_store._protocol"}
    assert anywhere - on_import == {"_metrics", "_middleware"}
