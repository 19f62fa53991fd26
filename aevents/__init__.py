"""aevents: an in-process asynchronous event runtime for anyio (asyncio, uvloop, trio).

Publish namespaced events, subscribe async or sync receivers to names and
wildcard patterns, and let a bounded pool of workers deliver each (event,
receiver) pair independently, with retries and dead letters::

    import aevents

    @aevents.subscribe("user:account:created")
    async def send_welcome(event: aevents.Event) -> None: ...

    async with aevents.EventRuntime():
        await aevents.publish("user:account:created", payload={"user_id": 1})
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._catalog import Catalog, declared_names
from ._delivery import DeliveryInfo, current_delivery
from ._event import Event
from ._exceptions import (
    AeventsError,
    CausationDepthError,
    ConfigurationError,
    DuplicateEventError,
    DuplicateReceiverError,
    InvalidEventNameError,
    JournalInUseError,
    PayloadError,
    QueueFullError,
    RuntimeClosedError,
    RuntimeNotRunningError,
    StoreError,
    UnknownEventError,
)
from ._module import publish, publish_nowait, publish_threadsafe, subscribe, unsubscribe
from ._names import validate_name, validate_pattern
from ._policy import DeadLetter, RetryPolicy
from ._registry import Registry, Subscription, default_registry
from ._runtime import EventRuntime, RuntimeStats, current_runtime
from ._store import PendingDelivery, Store, StoreStats

try:
    __version__ = _version("aevents")
except _PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"

__all__ = [
    "AeventsError",
    "Catalog",
    "CausationDepthError",
    "ConfigurationError",
    "DeadLetter",
    "DeliveryInfo",
    "DuplicateEventError",
    "DuplicateReceiverError",
    "Event",
    "EventRuntime",
    "InvalidEventNameError",
    "JournalInUseError",
    "PayloadError",
    "PendingDelivery",
    "QueueFullError",
    "Registry",
    "RetryPolicy",
    "RuntimeClosedError",
    "RuntimeNotRunningError",
    "RuntimeStats",
    "Store",
    "StoreError",
    "StoreStats",
    "Subscription",
    "UnknownEventError",
    "__version__",
    "current_delivery",
    "current_runtime",
    "declared_names",
    "default_registry",
    "publish",
    "publish_nowait",
    "publish_threadsafe",
    "subscribe",
    "unsubscribe",
    "validate_name",
    "validate_pattern",
]
