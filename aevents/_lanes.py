"""Per-key ordering: for each receiver, deliveries of one key run one at a time, in order.

A *lane* is one (receiver id, key) pair with a
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
from collections.abc import Callable
from typing import Any, Final, Literal

from ._buffer import DeliveryBuffer
from ._delivery import Delivery
from ._event import Event
from ._exceptions import PayloadError
from ._registry import Subscription
from ._state import Epochs
from ._text import counted

__all__ = ["MAX_KEY_CHARS", "Lane", "Lanes", "bad_key"]

logger = logging.getLogger("aevents.runtime")

MAX_KEY_CHARS: Final = 200


def bad_key(name: str, key: object) -> PayloadError:
    """The error for an ordering key that is not a string of 1 to ``MAX_KEY_CHARS``."""
    if type(key) is not str:
        return PayloadError(name, "key", f"expected str, got {type(key).__name__}")
    return PayloadError(name, "key", f"must be 1 to {MAX_KEY_CHARS} characters, got {len(key)}")


Lane = tuple[str, str]  # (receiver id, key)
_NO_LANE: Final[Any] = object()


class Lanes:
    """The lanes of keyed deliveries, feeding the buffer one delivery per lane at a time."""

    def __init__(
        self,
        buffer: DeliveryBuffer,
        epochs: Epochs,
        dead_letters: Literal["skip", "hold"],
        *,
        behind_replay: bool,
    ) -> None:
        self._buffer = buffer
        self._epochs = epochs
        self._policy = dead_letters
        # A lane with nothing waiting maps to None: most keys never need a deque.
        self._lanes: dict[Lane, deque[Delivery] | None] = {}
        # Lanes a dead letter holds (policy "hold"): lane -> the dead event's id.
        self._held_lanes: dict[Lane, str] = {}
        # Keyed deliveries of new publishes, waiting for the journal replay to finish.
        self._behind_replay: list[Delivery] | None = [] if behind_replay else None
        self.held = 0
        """Deliveries waiting behind a dead letter that holds their key."""
        self.admit: Callable[[Delivery], None] = (
            self._admit_behind_replay if behind_replay else self.enter
        )
        """Queue a keyed delivery whose room is reserved, or make it wait in its lane (or,
        while a replay runs, behind it)."""

    def __len__(self) -> int:
        """Lanes with a delivery under way (``stats().active_keys``)."""
        return len(self._lanes)

    def _admit_behind_replay(self, delivery: Delivery) -> None:
        assert self._behind_replay is not None
        self._behind_replay.append(delivery)

    def enter(self, delivery: Delivery) -> None:
        """Queue a keyed delivery now if its lane is free, else line it up in the lane."""
        event, subscription = delivery[0], delivery[1]  # by index: the hot path of keys
        lane_id = (subscription.receiver_id, event.key or "")
        lanes = self._lanes
        lane = lanes.get(lane_id, _NO_LANE)
        if lane is _NO_LANE:
            lanes[lane_id] = None
            self._buffer.put(delivery)
            return
        held = self._held_lanes.get(lane_id)
        if held is not None:  # (reading event.id only then: it is formatted when first read)
            if held == event.id:
                # The dead letter holding its lane comes back: it runs first, the rest wait.
                self._unhold(lane_id, lane)
                self._buffer.put(delivery)
                return
            self._set_aside(delivery)
        if lane is None:
            lanes[lane_id] = lane = deque()
        lane.append(delivery)

    def replay_finished(self, stopped: bool) -> None:
        """Let the keyed deliveries that waited behind the replay into their lanes."""
        behind, self._behind_replay = self._behind_replay, None
        self.admit = self.enter
        if behind and not stopped:
            for delivery in behind:
                self.enter(delivery)

    def done(self, event: Event, subscription: Subscription, *, dead: bool) -> None:
        """A keyed delivery finished: queue the next one of its lane, or hold the lane."""
        lane_id = (subscription.receiver_id, event.key or "")
        lane = self._lanes.get(lane_id, _NO_LANE)
        if lane is _NO_LANE:
            return
        if dead and self._policy == "hold":
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
        if lane:  # _advance, inlined: every keyed delivery ends here
            self._buffer.put(lane.popleft())
        else:
            del self._lanes[lane_id]

    def _advance(self, lane_id: Lane, lane: deque[Delivery] | None) -> None:
        if not lane:
            del self._lanes[lane_id]
            return
        # Stopping, it is queued all the same: it stays counted, and is reported as dropped.
        self._buffer.put(lane.popleft())

    def _set_aside(self, delivery: Delivery) -> None:
        """A delivery waits behind a held key: drain() no longer waits for it."""
        self.held += 1
        delivery.epoch.finish()

    def _unhold(self, lane_id: Lane, lane: deque[Delivery] | None) -> None:
        """The key is no longer held: its waiting deliveries count in the current epoch again."""
        del self._held_lanes[lane_id]
        if lane is None:
            return
        epoch = self._epochs.current
        for index, delivery in enumerate(lane):
            lane[index] = delivery._replace(epoch=epoch)
        epoch.unfinished += len(lane)
        self.held -= len(lane)

    def hold(self, event: Event, receiver_id: str) -> None:
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

    def holder(self, receiver_id: str, key: str) -> str | None:
        """The id of the dead event that holds the lane, if it is held."""
        return self._held_lanes.get((receiver_id, key))

    def waiting(self) -> list[Delivery]:
        """Every delivery waiting in a lane or behind the replay (for the stop's report)."""
        unrun = [delivery for lane in self._lanes.values() for delivery in lane or ()]
        unrun.extend(self._behind_replay or ())
        return unrun
