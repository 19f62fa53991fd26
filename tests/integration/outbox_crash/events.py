"""The crashing inbox receiver of ``shop:order:placed``."""

import json
import os
import signal
from pathlib import Path

from django.db import transaction

import aevents
from aevents.contrib.django import atomic_receiver

from .models import Effect

PLAN: dict[str, str] = json.loads(os.environ.get("INBOX_CRASH_PLAN", "{}"))
MARKERS = Path(os.environ.get("INBOX_CRASH_DIR", "."))


def _crash_here(order_id: int, point: str) -> None:
    """SIGKILL this process if ``point`` is the one planned for this order, the first time."""
    if PLAN.get(str(order_id)) != point:
        return
    try:
        marker = os.open(MARKERS / f"{order_id}-{point}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(marker, str(os.getpid()).encode())  # which process the crash ended
    os.close(marker)
    os.kill(os.getpid(), signal.SIGKILL)


@aevents.subscribe(
    "shop:order:placed",
    id="outbox_crash.record_effect",
    retry=aevents.RetryPolicy(attempts=100, initial_delay=0.01, max_delay=0.05),
)
@atomic_receiver()
def record_effect(event: aevents.Event) -> None:
    order_id = int(event.payload["id"])
    _crash_here(order_id, "before")
    Effect.objects.create(order_id=order_id, event_id=event.id)
    _crash_here(order_id, "between")
    # Runs once the receiver's transaction (its write and the completion) committed.
    transaction.on_commit(lambda: _crash_here(order_id, "after"))
