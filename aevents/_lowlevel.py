"""Backend-specific shortcuts kept out of the runtime's way: cancel checks, error groups."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["cancelled_check_for_backend", "leaf_errors"]


def cancelled_check_for_backend() -> Callable[[], bool] | None:
    """The cheapest correct "is the calling task inside a cancelled scope?" for this backend.

    ``anyio.lowlevel.checkpoint_if_cancelled`` costs 0.7 µs on asyncio, a
    third of a publish: it finds the backend through sniffio, then the task's
    cancel scope through a ``WeakKeyDictionary``, inside a coroutine. Publish
    instead asks a plain predicate resolved once per runtime, and only when it
    says yes awaits a checkpoint that delivers the cancellation. On trio,
    ``trio.lowlevel.checkpoint_if_cancelled`` itself is cheaper (0.29 µs) than
    any predicate it offers publicly, so ``None`` says "await that". On asyncio it
    remembers the last publishing task's anyio state and walks the same
    cancel-scope chain anyio walks; if anyio's internals ever change shape the
    public function is used instead (the cancellation tests cover both).
    """
    if anyio.get_cancelled_exc_class().__module__.startswith("trio"):
        return None
    try:
        from anyio._backends._asyncio import CancelScope, _task_states

        probe = CancelScope()
        for attribute in ("_cancel_called", "_shield", "_parent_scope"):
            getattr(probe, attribute)
    except (ImportError, AttributeError):  # pragma: no cover - a future anyio layout
        return None  # then publish awaits anyio's checkpoint_if_cancelled()

    import asyncio

    current_task = asyncio.current_task
    last_task: list[Any] = [None, None]  # [task, its anyio TaskState]

    def cancelled() -> bool:
        task = current_task()
        if task is last_task[0]:
            state = last_task[1]
        else:
            state = _task_states.get(task) if task is not None else None
            if state is None:
                return False  # no anyio cancel scope around this task (yet)
            last_task[0], last_task[1] = task, state
        scope = state.cancel_scope
        while scope is not None:
            if scope._cancel_called:
                return True
            if scope._shield:
                return False
            scope = scope._parent_scope
        return False

    return cancelled


def leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside (nested) groups, less the cancellations that came with them."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(leaf_errors(error))
        elif not isinstance(error, cancelled):
            leaves.append(error)
    return leaves
