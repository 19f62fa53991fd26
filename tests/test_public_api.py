"""The public surface: one sorted, complete ``__all__``, typing marker, and the error tree."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import inspect
import re
import types

import pytest

import aevents
from aevents import _exceptions

# The reviewed public surface. Adding or removing a name is a decision: make it
# here, in docs/reference/ and in docs/changelog.md, together.
PUBLIC_NAMES = [
    # the runtime and publishing
    "EventRuntime",
    "RuntimeStats",
    "current_delivery",
    "current_runtime",
    "DeliveryInfo",
    "publish",
    "publish_many",
    "publish_many_nowait",
    "publish_nowait",
    "publish_threadsafe",
    # names, catalogs, events and receivers
    "Catalog",
    "declared_names",
    "validate_name",
    "validate_pattern",
    "Event",
    "Registry",
    "Subscription",
    "default_registry",
    "subscribe",
    "unsubscribe",
    # retries and dead letters
    "RetryPolicy",
    "DeadLetter",
    # stores, and the protocol for writing one
    "Store",
    "StoreStats",
    "PendingDelivery",
    "MemoryStore",
    "SQLiteStore",
    "PostgresStore",
    "RedisStore",
    # middleware, and the metrics a snapshot returns (the types of values a user reads)
    "Middleware",
    "Publishing",
    "Metrics",
    "MetricsSnapshot",
    "DeliveryMetrics",
    "Histogram",
    # route inspection: the report and the types of its entries
    "inspect_routes",
    "RoutingReport",
    "DeclaredName",
    "ReceiverMatch",
    "UnmatchedPattern",
    # errors: every one a caller may need to catch
    "AeventsError",
    "CausationDepthError",
    "ConfigurationError",
    "DuplicateEventError",
    "DuplicateReceiverError",
    "InvalidEventNameError",
    "JournalInUseError",
    "JournalLinkError",
    "KeyInFlightError",
    "PayloadError",
    "QueueFullError",
    "RuntimeClosedError",
    "RuntimeNotRunningError",
    "StoreError",
    "UnknownEventError",
    "WrongThreadError",
    "__version__",
]


def test_the_public_names_are_the_reviewed_ones() -> None:
    """``aevents`` exports exactly the reviewed names, so no name is added or dropped unnoticed."""
    assert aevents.__all__ == sorted(PUBLIC_NAMES)


@pytest.mark.parametrize(
    ("name", "members"),
    [
        ("Histogram", {"bounds", "counts", "sum", "count", "quantile"}),
        (
            "DeliveryMetrics",
            {
                "published",
                "delivered",
                "failed",
                "retried",
                "dead",
                "dropped",
                "duration",
                "latency",
            },
        ),
        ("MetricsSnapshot", {"subscriptions", "by_receiver", "by_pattern", "total"}),
    ],
)
def test_metrics_values_offer_what_a_reader_needs_and_no_arithmetic(
    name: str, members: set[str]
) -> None:
    """A snapshot's values are records to read: their fields, a count and a quantile, no ``+``."""
    value_type = getattr(aevents, name)
    assert {member for member in dir(value_type) if not member.startswith("_")} == members
    assert not hasattr(value_type, "__add__")


def test_metrics_adds_snapshot_and_the_runtimes_count_to_the_hooks() -> None:
    """Besides the hooks, ``Metrics`` has ``snapshot()``, and ``count()`` for the runtime."""
    added = set(dir(aevents.Metrics)) - set(dir(aevents.Middleware))
    assert {member for member in added if not member.startswith("_")} == {"count", "snapshot"}


def test_the_prometheus_module_exports_register_and_its_collector() -> None:
    """``aevents.contrib.prometheus`` offers ``register()`` and the collector it returns."""
    prometheus = importlib.import_module("aevents.contrib.prometheus")
    assert prometheus.__all__ == ["RuntimeCollector", "register"]


def test_all_is_sorted_and_has_no_duplicates() -> None:
    """``__all__`` is kept sorted, so additions show up as one-line diffs."""
    assert aevents.__all__ == sorted(aevents.__all__)
    assert len(set(aevents.__all__)) == len(aevents.__all__)


def test_every_name_in_all_exists() -> None:
    """Each exported name resolves on the package."""
    missing = [name for name in aevents.__all__ if not hasattr(aevents, name)]
    assert missing == []


def test_every_public_attribute_is_in_all() -> None:
    """Nothing public leaks into the package namespace without being exported on purpose."""
    public = {
        name
        for name, value in vars(aevents).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(public - set(aevents.__all__)) == []


def test_exports_are_documented() -> None:
    """Every exported class and function has a docstring."""
    undocumented = [
        name
        for name in aevents.__all__
        if (inspect.isclass(getattr(aevents, name)) or inspect.isfunction(getattr(aevents, name)))
        and not inspect.getdoc(getattr(aevents, name))
    ]
    assert undocumented == []


def test_version_matches_the_installed_distribution() -> None:
    """``aevents.__version__`` is the installed package's version."""
    assert aevents.__version__ == importlib.metadata.version("aevents")


def test_py_typed_ships_in_the_package() -> None:
    """The PEP 561 marker is inside the package, so type checkers use the inline hints."""
    assert importlib.resources.files("aevents").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    ("name", "builtin_bases"),
    [
        ("InvalidEventNameError", (ValueError,)),
        ("UnknownEventError", (AttributeError,)),
        ("DuplicateEventError", (ValueError,)),
        ("PayloadError", (TypeError,)),
        ("QueueFullError", ()),
        ("RuntimeClosedError", ()),
        ("RuntimeNotRunningError", ()),
        ("DuplicateReceiverError", (ValueError,)),
        ("ConfigurationError", (ValueError, TypeError)),
        ("CausationDepthError", ()),
    ],
)
def test_errors_derive_from_aevents_error_and_their_builtin(
    name: str, builtin_bases: tuple[type[Exception], ...]
) -> None:
    """Each error is an ``AeventsError`` and also the builtin that idiomatic code catches."""
    error_type = getattr(aevents, name)
    assert name in aevents.__all__
    assert issubclass(error_type, aevents.AeventsError)
    for base in builtin_bases:
        assert issubclass(error_type, base)
    if not builtin_bases:
        assert not issubclass(error_type, (ValueError, TypeError, AttributeError, LookupError))


def test_every_exported_exception_is_an_aevents_error() -> None:
    """No exported exception sits outside the one hierarchy."""
    exported = [getattr(aevents, name) for name in aevents.__all__]
    errors = [item for item in exported if isinstance(item, type) and issubclass(item, Exception)]
    assert len(errors) >= 10
    assert all(issubclass(error, aevents.AeventsError) for error in errors)
    assert issubclass(aevents.AeventsError, Exception)


@pytest.mark.parametrize(
    "error",
    [
        aevents.InvalidEventNameError("user::x", "segment 1 is empty"),
        aevents.UnknownEventError("NOPE", known=["A"], catalog="'m'"),
        aevents.PayloadError("user:created", "payload['a']", "bad"),
        aevents.QueueFullError("user:created", 8),
        aevents.DuplicateReceiverError("audit", "user:**"),
        aevents.StoreError("events.db", "is not a SQLite database"),
    ],
)
def test_errors_survive_pickling_with_their_data(error: aevents.AeventsError) -> None:
    """Errors cross process boundaries (process pools, multiprocessing) intact."""
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


def _drawn_tree() -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """``{error: (its parent, its builtin bases)}`` as drawn in ``aevents._exceptions``."""
    tree: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    path: list[str] = []
    docstring = inspect.getdoc(_exceptions) or ""
    for line in docstring.split("::", 1)[1].split("\n\n", 2)[1].splitlines():
        drawn = re.match(r"((?:[│ ]   |[├└]── )*)([A-Z]\w+)(?: \(([\w, ]+)\))?", line[4:])
        if drawn is None:  # a description carried over to the next line
            continue
        prefix, name, builtins = drawn.groups()
        depth = len(prefix) // 4
        del path[depth:]
        tree[name] = (
            path[-1] if path else None,
            tuple(builtins.split(", ")) if builtins else (),
        )
        path.append(name)
    return tree


def test_every_exception_class_is_exported_and_drawn_in_the_tree() -> None:
    """Each error class in ``aevents._exceptions`` is in both ``__all__`` lists and in its tree."""
    defined = {
        name
        for name, value in vars(_exceptions).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == _exceptions.__name__
    }
    assert sorted(defined) == sorted(_exceptions.__all__)
    assert set(defined) <= set(aevents.__all__)
    assert sorted(_drawn_tree()) == sorted(defined)


def test_the_drawn_tree_shows_each_error_under_its_base() -> None:
    """The docstring's tree draws each error under the class it derives from, with its builtins."""
    for name, (parent, builtins) in _drawn_tree().items():
        error = getattr(_exceptions, name)
        ours = [base.__name__ for base in error.__bases__ if issubclass(base, aevents.AeventsError)]
        others = tuple(base.__name__ for base in error.__bases__ if base.__name__ not in ours)
        assert (ours[0] if ours else None) == parent, name
        assert others == (builtins if parent is not None else ("Exception",)), name
