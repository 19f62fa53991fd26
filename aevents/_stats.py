"""``RuntimeStats``: the snapshot ``EventRuntime.stats()`` returns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._metrics import MetricsSnapshot

__all__ = ["RuntimeStats"]


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
