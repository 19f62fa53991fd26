"""Is a process on this host gone? What a shared store needs to take back a dead
consumer's leases at once instead of after the lease.

A consumer counts as dead only when all of these hold (Linux; elsewhere nothing
counts as dead, and its leases pass when they expire):

* it registered from this host (the caller compares host names);
* it registered in this process's pid namespace (the inode of
  ``/proc/self/ns/pid``, recorded with the consumer): a container with its own
  pids and the same host name is never judged from here;
* its pid is gone, a zombie, or now belongs to a process that started at
  another time than the one recorded when it registered (a reused pid).
"""

from __future__ import annotations

import os
import sys

__all__ = ["Identity", "identity_of", "is_gone"]

Identity = tuple[int, int]  # (pid namespace inode, start time in clock ticks after boot)


def _pid_namespace() -> int | None:
    """This process's pid namespace, if ``/proc`` is this namespace's (else ``None``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if int(os.readlink("/proc/self")) != os.getpid():
            return None  # /proc is mounted from another pid namespace
        return os.stat("/proc/self/ns/pid").st_ino
    except (OSError, ValueError):
        return None


def _start_of(pid: int) -> tuple[str, int] | None:
    """``(state, start time)`` of ``pid`` from ``/proc/<pid>/stat``; ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    try:
        fields = data[data.rindex(b")") + 2 :].split()
        return fields[0].decode(), int(fields[19])
    except (ValueError, IndexError):
        return None


def identity_of(pid: int) -> Identity | None:
    """What to record with a consumer in process ``pid`` of this host, seen from here;
    ``None`` when it cannot be told (not Linux, a foreign ``/proc``, no such process)."""
    namespace = _pid_namespace()
    if namespace is None:
        return None
    found = _start_of(pid)
    if found is None or found[0] in ("Z", "X"):
        return None
    return namespace, found[1]


def is_gone(pid: int, pid_ns: int | None, started: int | None) -> bool:
    """Whether the process a consumer recorded as ``(pid, pid_ns, started)`` is dead.

    ``False`` whenever it cannot be sure: nothing was recorded, another pid
    namespace recorded it, or this is not Linux.
    """
    if pid_ns is None or started is None or pid_ns != _pid_namespace():
        return False
    found = _start_of(pid)
    return found is None or found[0] in ("Z", "X") or found[1] != started
