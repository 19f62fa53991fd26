"""What the runtime's modules share: its states, ``Epoch``, ``RuntimeStats`` and
the ``_Deferred`` signal of ``_accept``.

Apart from ``_runtime`` so that the mixins (``_publishing``, ``_lifecycle``, ...)
import them without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import attrs

from ._idempotency import IDEMPOTENCY_KEY

if TYPE_CHECKING:
    from ._event import Event
    from ._metrics import MetricsSnapshot
    from ._registry import Subscription
    from ._runtime import EventRuntime

__all__ = ["Epoch", "RuntimeStats"]

_NEW, _RUNNING, _DRAINING, _STOPPED = "new", "running", "draining", "stopped"


@attrs.frozen(slots=True)
class RuntimeStats:
    """Counters since the runtime started; ``queued``, ``in_flight`` and ``retrying`` are now."""

    published: int
    """Events accepted by publish (routed or not)."""
    unrouted: int
    """Accepted events no receiver matched."""
    delivered: int
    """Deliveries whose receiver returned."""
    failed: int
    """Attempts that raised or timed out (a delivery retried twice counts up to three)."""
    retried: int
    """Failed attempts that were scheduled to run again."""
    dead: int
    """Deliveries that ran out of attempts and became dead letters."""
    dropped: int
    """Deliveries not run at shutdown (pending in the journal, with a store), and
    dead letters evicted past ``max_dead_letters``."""
    queued: int
    """Deliveries waiting for a worker."""
    in_flight: int
    """Deliveries a worker is running."""
    retrying: int
    """Failed deliveries waiting for their next attempt."""
    active_keys: int = 0
    """(receiver, ordering key) pairs with a delivery under way; idle keys are not kept."""
    held: int = 0
    """Deliveries waiting behind a dead letter that holds their key (``keyed_dead_letters``)."""
    repeated: int = 0
    """Publishes answered with an earlier event by their ``idempotency_key``."""
    metrics: MetricsSnapshot | None = None
    """Per-subscription counters and histograms, with ``EventRuntime(metrics=True)``."""


class _Deferred(Exception):  # an internal signal that never escapes
    """Raised by ``_accept`` when an event needs a wait: for room, or for the journal.

    ``reserved`` tells whether its room in the buffer is already taken.
    """

    def __init__(
        self, event: Event, routes: tuple[Subscription, ...], epoch: Epoch, *, reserved: bool
    ) -> None:
        self.event, self.routes, self.epoch, self.reserved = event, routes, epoch, reserved


class Epoch:
    """Deliveries accepted between two ``drain()`` calls, and everything they publish."""

    __slots__ = ("done", "runtime", "unfinished")

    def __init__(self, runtime: EventRuntime) -> None:
        self.runtime = runtime
        self.unfinished = 0
        self.done: anyio.Event | None = None


def _claims_key(metadata: object) -> bool:
    """Whether caller-given metadata sets the entry ``idempotency_key=`` owns.

    Anything that is not a mapping is left for ``encode_metadata`` to refuse.
    """
    return (type(metadata) is dict or isinstance(metadata, Mapping)) and IDEMPOTENCY_KEY in metadata
