"""What the dashboard changed, by whom: each action is logged and kept in a short list."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import attrs

from ..._text import counted

__all__ = ["Action", "ActionLog", "logger"]

logger = logging.getLogger("aevents.dashboard")

Verb = Literal["redeliver", "discard"]


@attrs.frozen(slots=True)
class Action:
    """One action taken through the dashboard on dead letters."""

    number: int
    """Counts the actions of this dashboard, from 1."""
    at: datetime
    actor: str
    """Who did it, as the dashboard's ``actor`` hook named them."""
    verb: Verb
    letter_ids: tuple[str, ...]
    """The letters confirmed."""
    done: int
    """How many the runtime redelivered or discarded (letters already gone, or whose
    receiver is no longer subscribed, are not)."""


class ActionLog:
    """Logs each action on the ``aevents.dashboard`` logger and keeps the last ``size``."""

    def __init__(self, size: int = 50) -> None:
        self._kept: deque[Action] = deque(maxlen=size)
        self._numbers = itertools.count(1)

    def record(self, actor: str, verb: Verb, letter_ids: Sequence[str], done: int) -> Action:
        action = Action(
            next(self._numbers), datetime.now(UTC), actor, verb, tuple(letter_ids), done
        )
        self._kept.append(action)
        shown = ", ".join(action.letter_ids[:10]) + (" ..." if len(letter_ids) > 10 else "")
        logger.info(
            "dashboard: %s chose to %s %s, %d done: %s",
            actor,
            verb,
            counted(len(letter_ids), "dead letter"),
            done,
            shown,
            extra={"actor": actor, "action": verb, "dead_letter_ids": action.letter_ids},
        )
        return action

    def find(self, number: int) -> Action | None:
        return next((action for action in self._kept if action.number == number), None)

    def recent(self) -> list[Action]:
        """The actions kept, newest first."""
        return list(reversed(self._kept))
