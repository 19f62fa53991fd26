"""A sync receiver that never returns, or raises KeyboardInterrupt, never keeps a process alive."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).with_name("stuck_app.py")

pytestmark = pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])


def _run(backend: str, mode: str) -> subprocess.CompletedProcess[str]:
    # The timeout only keeps a regression from hanging the suite; a pass never nears it.
    return subprocess.run(
        [sys.executable, str(APP), backend, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("mode", ["stuck", "stuck-timeout"])
def test_a_blocked_sync_receiver_does_not_keep_the_process_alive(backend: str, mode: str) -> None:
    """The runtime returns, names the abandoned receiver, and the interpreter exits."""
    done = _run(backend, mode)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["receiver started", "runtime returned"]
    assert "abandoned on daemon threads" in done.stderr
    assert "'stuck-receiver'" in done.stderr


def test_keyboard_interrupt_in_a_sync_receiver_ends_the_process(backend: str) -> None:
    """KeyboardInterrupt raised by a sync receiver propagates and the process exits as on ^C."""
    done = _run(backend, "interrupt")
    assert done.returncode in (130, -signal.SIGINT), done.stderr
    assert "KeyboardInterrupt" in done.stderr
    assert "runtime returned" not in done.stdout
