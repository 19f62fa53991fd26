"""``EventRuntime``'s settings as one typed, frozen value, checked when it is made.

``EventRuntime(...)`` hands each of its keyword arguments to ``RuntimeConfig``
by name, so renaming an option is a type error rather than a failure at run
time, and a bad value raises ``ConfigurationError`` naming the option and the
value before anything starts. The rules for each option live here, but for
one middleware's, ``_middleware.check_middleware``, which ``add_middleware()``
shares.

This module sits at the bottom of the import graph: it imports no part of the
runtime, and ``aevents._metrics`` and ``aevents._middleware`` only when a value
has to be checked against their classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeGuard

import attrs

from ._exceptions import ConfigurationError
from ._payload import DEFAULT_MAX_PAYLOAD_BYTES
from ._policy import RetryPolicy
from ._registry import Registry, default_registry
from ._store._protocol import LeasedStore, Store, shared

if TYPE_CHECKING:
    from ._metrics import Metrics
    from ._middleware import Middleware

__all__ = [
    "KEYED_DEAD_LETTER_POLICIES",
    "OPTIONS",
    "RuntimeConfig",
]

KEYED_DEAD_LETTER_POLICIES: Final = ("skip", "hold")
"""What a dead letter does to its ordering key: ``"skip"`` it, or ``"hold"`` the key."""

_WHAT: Final = "EventRuntime"


def _refuse(problem: str) -> ConfigurationError:
    return ConfigurationError(_WHAT, problem)


# ---------------------------------------------------------------------- validators


def _int_at_least_1(_: RuntimeConfig, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not int or value < 1:
        raise _refuse(f"{attribute.alias} must be an int >= 1, got {value!r}")


def _optional_int_at_least_1(
    config: RuntimeConfig, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None:
        _int_at_least_1(config, attribute, value)


def _bool(_: RuntimeConfig, attribute: attrs.Attribute[Any], value: object) -> None:
    if type(value) is not bool:
        raise _refuse(f"{attribute.alias} must be True or False, got {value!r}")


def _is_number(value: object) -> TypeGuard[float]:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _registry(_: RuntimeConfig, __: attrs.Attribute[Any], registry: object) -> None:
    if not isinstance(registry, Registry):
        raise _refuse(f"registry must be an aevents.Registry, got {registry!r}")


def _store(_: RuntimeConfig, __: attrs.Attribute[Any], store: object) -> None:
    if store is not None and not isinstance(store, Store | LeasedStore):
        raise _refuse(f"store must implement the aevents.Store protocol, got {store!r}")
    if isinstance(store, LeasedStore) and not shared(store) and not isinstance(store, Store):
        raise _refuse(
            f"store {store!r} says it is not shared (shared=False), so the runtime journals "
            "through it, but it does not implement the aevents.Store protocol"
        )


def _consume(config: RuntimeConfig, attribute: attrs.Attribute[Any], consume: object) -> None:
    _bool(config, attribute, consume)
    if not consume and not shared(config.store):
        raise _refuse(
            "consume=False needs a store that processes share (aevents.MemoryStore for now): "
            "the events it publishes are run by the processes that consume from it, got "
            f"store={config.store!r}"
        )


def _retry(_: RuntimeConfig, __: attrs.Attribute[Any], retry: object) -> None:
    if not isinstance(retry, RetryPolicy):
        raise _refuse(f"retry must be a RetryPolicy, got {retry!r}")


def _timeout(_: RuntimeConfig, __: attrs.Attribute[Any], timeout: object) -> None:
    if timeout is not None and not (_is_number(timeout) and timeout > 0):
        raise _refuse(f"timeout must be > 0 seconds, got {timeout!r}")


def _shutdown_timeout(_: RuntimeConfig, __: attrs.Attribute[Any], timeout: object) -> None:
    if not (_is_number(timeout) and timeout >= 0):
        raise _refuse(f"shutdown_timeout must be >= 0, got {timeout!r}")


def _lease(_: RuntimeConfig, __: attrs.Attribute[Any], lease: object) -> None:
    if not (_is_number(lease) and 0.1 <= lease <= 86_400):
        raise _refuse(f"lease must be between 0.1 and 86400 seconds, got {lease!r}")


def _keyed_dead_letters(_: RuntimeConfig, __: attrs.Attribute[Any], policy: object) -> None:
    if policy not in KEYED_DEAD_LETTER_POLICIES:
        allowed = " or ".join(map(repr, KEYED_DEAD_LETTER_POLICIES))
        raise _refuse(f"keyed_dead_letters must be {allowed}, got {policy!r}")


def _idempotency_window(_: RuntimeConfig, __: attrs.Attribute[Any], window: object) -> None:
    if not (_is_number(window) and 0 < window < math.inf):
        raise _refuse(f"idempotency_window must be a finite number of seconds > 0, got {window!r}")


def _metrics(_: RuntimeConfig, __: attrs.Attribute[Any], metrics: object) -> None:
    if type(metrics) is not bool:
        from ._metrics import Metrics

        if not isinstance(metrics, Metrics):
            raise _refuse(f"metrics must be True, False or an aevents.Metrics, got {metrics!r}")


def _middleware(
    config: RuntimeConfig, _: attrs.Attribute[Any], middleware: tuple[object, ...]
) -> None:
    from ._middleware import check_middleware  # _middleware would be a circle at module level

    added: list[Middleware] = [] if config.metrics is None else [config.metrics]
    for each in middleware:
        added.append(check_middleware(each, added))


# ---------------------------------------------------------------------- converters


def _registry_or_default(registry: Registry | None) -> Registry:
    return default_registry if registry is None else registry


def _retry_or_default(retry: RetryPolicy | None) -> RetryPolicy:
    return RetryPolicy() if retry is None else retry


def _middleware_tuple(middleware: Sequence[Middleware]) -> tuple[Middleware, ...]:
    # A converter runs before any validator, so the shape is checked here: a str
    # is a sequence too, but never of middleware; a set would have no order.
    if isinstance(middleware, str | bytes) or not isinstance(middleware, Sequence):
        raise _refuse(f"middleware must be a sequence of aevents.Middleware, got {middleware!r}")
    return tuple(middleware)


def _metrics_of(config: RuntimeConfig) -> Metrics | None:
    if config._metrics is True:
        from ._metrics import Metrics  # loaded only when asked for

        return Metrics()
    if config._metrics is False:
        return None
    return config._metrics  # a Metrics, or a bad value the validator refuses


# ---------------------------------------------------------------------- the settings


@attrs.frozen(slots=True, kw_only=True)
class RuntimeConfig:
    """The settings of one ``EventRuntime``: its keyword arguments, checked and resolved.

    The fields are ``EventRuntime``'s options, with the same names, types and
    defaults (see its docstring for what each does). Making one checks every
    value; reading one gives the value the runtime uses: ``registry=None`` is
    read as ``default_registry``, ``retry=None`` as ``RetryPolicy()``,
    ``sync_threads=None`` and ``start_ahead=None`` as ``workers``, ``metrics=True``
    as a new ``Metrics`` and ``metrics=False`` as ``None``, and ``middleware`` as a
    tuple.
    ``attrs.evolve`` works, and checks again; with ``metrics=True`` it makes
    another ``Metrics``.

    Raises:
        ConfigurationError: A value of the wrong type or out of range; the
            message names the option and the value.
    """

    registry: Registry = attrs.field(
        default=None, converter=_registry_or_default, validator=_registry
    )
    workers: int = attrs.field(default=8, validator=_int_at_least_1)
    buffer: int = attrs.field(default=1024, validator=_int_at_least_1)
    store: Store | LeasedStore | None = attrs.field(default=None, validator=_store)
    retry: RetryPolicy = attrs.field(default=None, converter=_retry_or_default, validator=_retry)
    timeout: float | None = attrs.field(default=None, validator=_timeout)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_shutdown_timeout)
    strict: bool = attrs.field(default=False, validator=_bool)
    max_payload_bytes: int = attrs.field(
        default=DEFAULT_MAX_PAYLOAD_BYTES, validator=_int_at_least_1
    )
    max_causation_depth: int = attrs.field(default=32, validator=_int_at_least_1)
    max_dead_letters: int = attrs.field(default=10_000, validator=_int_at_least_1)
    _sync_threads: int | None = attrs.field(
        default=None, validator=_optional_int_at_least_1, alias="sync_threads"
    )
    # metrics before middleware: the middleware check reads the resolved metrics
    _metrics: bool | Metrics = attrs.field(
        default=False, validator=_metrics, alias="metrics", repr=False
    )
    metrics: Metrics | None = attrs.field(
        init=False, default=attrs.Factory(_metrics_of, takes_self=True)
    )
    middleware: tuple[Middleware, ...] = attrs.field(
        default=(), converter=_middleware_tuple, validator=_middleware
    )
    log_payloads: bool = attrs.field(default=False, validator=_bool)
    keyed_dead_letters: Literal["skip", "hold"] = attrs.field(
        default="skip", validator=_keyed_dead_letters
    )
    idempotency_window: float = attrs.field(default=24 * 3600.0, validator=_idempotency_window)
    max_idempotency_keys: int = attrs.field(default=100_000, validator=_int_at_least_1)
    consume: bool = attrs.field(default=True, validator=_consume)
    lease: float = attrs.field(default=30.0, validator=_lease)
    _start_ahead: int | None = attrs.field(
        default=None, validator=_optional_int_at_least_1, alias="start_ahead"
    )

    @property
    def sync_threads(self) -> int:
        """Threads for sync receivers at once: as given, or ``workers`` when None."""
        return self.workers if self._sync_threads is None else self._sync_threads

    @property
    def start_ahead(self) -> int:
        """Claims started ahead of the workers: as given, or ``workers`` when None."""
        return self.workers if self._start_ahead is None else self._start_ahead


OPTIONS: Final = tuple(str(field.alias) for field in attrs.fields(RuntimeConfig) if field.init)
"""The names of ``EventRuntime``'s keyword arguments: ``RuntimeConfig``'s parameters."""
