"""When a shared store judges a consumer's process dead (``aevents._store._procs``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from aevents._store._procs import identity_of, is_gone

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
def test_a_live_process_is_not_gone() -> None:
    identity = identity_of(os.getpid())
    assert identity is not None
    assert not is_gone(os.getpid(), *identity)


@linux_only
def test_a_reused_pid_is_gone_and_another_namespace_or_nothing_recorded_is_never() -> None:
    """A pid whose process started at another time than recorded is a new process; a
    consumer from another pid namespace, or with nothing recorded, is left to its lease."""
    namespace, started = identity_of(os.getpid()) or (0, 0)
    assert is_gone(os.getpid(), namespace, started + 1)
    assert not is_gone(os.getpid(), namespace + 1, started + 1)
    assert not is_gone(os.getpid(), None, None)
    assert not is_gone(os.getpid(), namespace, None)


@linux_only
def test_a_killed_process_is_gone_before_and_after_it_is_reaped() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        identity = identity_of(process.pid)
        assert identity is not None
        assert not is_gone(process.pid, *identity)
        os.kill(process.pid, signal.SIGKILL)
        while not is_gone(process.pid, *identity):  # a zombie until reaped: gone too
            os.sched_yield()
    finally:
        process.kill()
        process.wait()
    assert is_gone(process.pid, *identity)
    assert identity_of(process.pid) is None
