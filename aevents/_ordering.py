"""Per-key ordering: for each receiver, deliveries of one key run one at a time, in order.

Mixed into ``EventRuntime``. A *lane* is one (receiver id, key) pair with a
delivery under way. The lane's first delivery is in the queue, running, or
waiting to retry; later deliveries of the same pair wait in the lane, in
publish order, and the next one is queued only when the one before it
finished: delivered, or dead-lettered. A lane exists only while it has a
delivery under way, so idle keys cost nothing, and the deliveries that wait
in lanes hold their room in the buffer, so memory stays bounded.

What a dead letter does to its lane is the runtime's ``keyed_dead_letters``
policy: ``"skip"`` (the default) moves on to the next delivery; ``"hold"``
keeps the later deliveries of that receiver and key waiting until the dead
letter is redelivered, or the lane is released with ``release_key``. Held
deliveries are set aside: ``drain()`` does not wait for them (they wait for a
person), they are counted in ``stats().held``, and they keep their room in the
buffer, so a held key with a steady stream of events ends in backpressure.

With a store, the journal replays pending deliveries in publish order; while
the replay runs, keyed deliveries of new publishes wait behind it, so a key's
older events are delivered before its newer ones across a restart too.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from ._delivery import Item
from ._exceptions import PayloadError
from ._text import counted

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from ._event import Event
    from ._registry import Subscription
    from ._state import Epoch
    from ._store._protocol import Store

__all__ = ["KEYED_DEAD_LETTER_POLICIES", "MAX_KEY_CHARS", "Ordering", "bad_key"]

logger = logging.getLogger("aevents.runtime")

KEYED_DEAD_LETTER_POLICIES: Final = ("skip", "hold")
MAX_KEY_CHARS: Final = 200


def bad_key(name: str, key: object) -> PayloadError:
    """The error for an ordering key that is not a string of 1 to ``MAX_KEY_CHARS``."""
    if type(key) is not str:
        return PayloadError(name, "key", f"expected str, got {type(key).__name__}")
    return PayloadError(name, "key", f"must be 1 to {MAX_KEY_CHARS} characters, got {len(key)}")


Lane = tuple[str, str]  # (receiver id, key)
_NO_LANE: Final[Any] = object()


class Ordering:
    """Lanes for keyed deliveries, for ``EventRuntime``."""

    store: Store | None
    keyed_dead_letters: Literal["skip", "hold"]
    _send: MemoryObjectSendStream[Item]
    _epoch: Epoch

    if TYPE_CHECKING:  # provided by EventRuntime; declared for the type checker only

        def _finish(self, epoch: Epoch) -> None: ...

    def _init_ordering(self) -> None:
        # A lane with nothing waiting maps to None: most keys never need a deque.
        self._lanes: dict[Lane, deque[Item] | None] = {}
        # Lanes a dead letter holds (policy "hold"): lane -> the dead event's id.
        self._held_lanes: dict[Lane, str] = {}
        # Keyed deliveries of new publishes, waiting for the journal replay to finish.
        self._behind_replay: list[Item] | None = [] if self.store is not None else None
        self._held_deliveries = 0

    def _admit_keyed(self, item: Item) -> None:
        """Queue a keyed delivery whose room is reserved, or make it wait in its lane."""
        behind = self._behind_replay
        if behind is not None:
            behind.append(item)
            return
        self._into_lane(item)

    def _into_lane(self, item: Item) -> None:
        event, subscription = item[0], item[1]
        lane_id = (subscription.receiver_id, event.key or "")
        lanes = self._lanes
        lane = lanes.get(lane_id, _NO_LANE)
        if lane is _NO_LANE:
            lanes[lane_id] = None
            self._send.send_nowait(item)
            return
        held = self._held_lanes.get(lane_id)
        if held == event.id:
            # The dead letter holding its lane comes back: it runs first, the rest wait.
            self._unhold(lane_id, lane)
            self._send.send_nowait(item)
            return
        if held is not None:
            self._set_aside(item)
        if lane is None:
            lanes[lane_id] = lane = deque()
        lane.append(item)

    def _replay_finished(self, stopped: bool) -> None:
        """Let the keyed deliveries that waited behind the replay into their lanes."""
        behind, self._behind_replay = self._behind_replay, None
        if behind and not stopped:
            for item in behind:
                self._into_lane(item)

    def _lane_done(self, event: Event, subscription: Subscription, *, dead: bool) -> None:
        """A keyed delivery finished: queue the next one of its lane, or hold the lane."""
        lane_id = (subscription.receiver_id, event.key or "")
        lane = self._lanes.get(lane_id, _NO_LANE)
        if lane is _NO_LANE:
            return
        if dead and self.keyed_dead_letters == "hold":
            self._held_lanes[lane_id] = event.id
            for waiting in lane or ():
                self._set_aside(waiting)
            logger.warning(
                "receiver %r: key %r is held by the dead letter of event %s until it is "
                "redelivered or the key is released; %s waiting behind it",
                subscription.receiver_id,
                event.key,
                event.id,
                counted(len(lane or ()), "later delivery"),
                extra={"receiver_id": subscription.receiver_id, "key": event.key},
            )
            return
        self._advance(lane_id, lane)

    def _advance(self, lane_id: Lane, lane: deque[Item] | None) -> None:
        if not lane:
            del self._lanes[lane_id]
            return
        try:
            self._send.send_nowait(lane[0])
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # stopping: it stays counted as queued, and is reported as dropped
        lane.popleft()

    def _set_aside(self, item: Item) -> None:
        """A delivery waits behind a held key: drain() no longer waits for it."""
        self._held_deliveries += 1
        self._finish(item[3])

    def _unhold(self, lane_id: Lane, lane: deque[Item] | None) -> None:
        """The key is no longer held: its waiting deliveries count in the current epoch again."""
        del self._held_lanes[lane_id]
        if lane is None:
            return
        epoch = self._epoch
        for index, (event, subscription, attempt, _) in enumerate(lane):
            lane[index] = (event, subscription, attempt, epoch)
        epoch.unfinished += len(lane)
        self._held_deliveries -= len(lane)

    def _hold_lane(self, event: Event, receiver_id: str) -> None:
        """At start (policy "hold"): a keyed dead letter from an earlier run holds its lane."""
        lane_id = (receiver_id, event.key or "")
        self._lanes.setdefault(lane_id, None)
        self._held_lanes[lane_id] = event.id

    def release_key(self, receiver_id: str, key: str) -> bool:
        """Let a lane held by a dead letter move on past it; False if it was not held.

        With ``keyed_dead_letters="hold"``, a dead letter keeps the later
        deliveries of its receiver and key waiting. This skips past it: the
        dead letter stays listed (and can still be redelivered, after the
        others), and the next delivery of the key is queued now.
        """
        lane_id = (receiver_id, key)
        if lane_id not in self._held_lanes:
            return False
        lane = self._lanes[lane_id]
        self._unhold(lane_id, lane)
        self._advance(lane_id, lane)
        return True

    def held_keys(self) -> dict[tuple[str, str], str]:
        """``{(receiver id, key): id of the dead event holding it}`` for held lanes."""
        return dict(self._held_lanes)
