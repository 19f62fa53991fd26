"""The checks of ``EventRuntime``'s settings, run before anything starts."""

from __future__ import annotations

from typing import Any

from ._exceptions import ConfigurationError
from ._policy import RetryPolicy
from ._registry import Registry
from ._store._protocol import Store

__all__ = ["KEYED_DEAD_LETTER_POLICIES", "check_config"]

KEYED_DEAD_LETTER_POLICIES = ("skip", "hold")


def check_config(arguments: dict[str, Any]) -> None:
    """Refuse nonsense settings before anything starts."""
    for label in (
        "workers",
        "buffer",
        "max_payload_bytes",
        "max_causation_depth",
        "max_dead_letters",
    ):
        value = arguments[label]
        if type(value) is not int or value < 1:
            raise ConfigurationError("EventRuntime", f"{label} must be an int >= 1, got {value!r}")
    if arguments["keyed_dead_letters"] not in KEYED_DEAD_LETTER_POLICIES:
        raise ConfigurationError(
            "EventRuntime",
            f"keyed_dead_letters must be 'skip' or 'hold', got {arguments['keyed_dead_letters']!r}",
        )
    metrics = arguments["metrics"]
    if type(metrics) is not bool:
        from ._metrics import Metrics  # already imported by whoever made one

        if not isinstance(metrics, Metrics):
            raise ConfigurationError(
                "EventRuntime",
                f"metrics must be True, False or an aevents.Metrics, got {metrics!r}",
            )
    sync_threads = arguments["sync_threads"]
    if sync_threads is not None and (type(sync_threads) is not int or sync_threads < 1):
        raise ConfigurationError(
            "EventRuntime", f"sync_threads must be an int >= 1, got {sync_threads!r}"
        )
    registry, retry, store = arguments["registry"], arguments["retry"], arguments["store"]
    if registry is not None and not isinstance(registry, Registry):
        raise ConfigurationError(
            "EventRuntime", f"registry must be an aevents.Registry, got {registry!r}"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError("EventRuntime", f"retry must be a RetryPolicy, got {retry!r}")
    if store is not None and not isinstance(store, Store):
        raise ConfigurationError(
            "EventRuntime", f"store must implement the aevents.Store protocol, got {store!r}"
        )
    timeout, shutdown_timeout = arguments["timeout"], arguments["shutdown_timeout"]
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigurationError("EventRuntime", f"timeout must be > 0 seconds, got {timeout!r}")
    if not (isinstance(shutdown_timeout, int | float) and shutdown_timeout >= 0):
        raise ConfigurationError(
            "EventRuntime", f"shutdown_timeout must be >= 0, got {shutdown_timeout!r}"
        )
