"""A real ASGI server in a subprocess, for the integration tests: uvicorn or Hypercorn.

The server runs from the repository root on a loopback port the kernel
chooses (port 0); its merged output is read line by line as it comes, and the
port is read from its startup line. Tests stop it with SIGTERM, as a process
manager does, and it is killed if a test leaves it running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # seconds: a generous bound on every wait, never a synchronisation


class Server:
    """A server process whose merged output is read line by line as it comes."""

    def __init__(self, command: list[str], ready: str, env: dict[str, str]) -> None:
        self.ready = ready  # the startup line's text, which carries the port
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: kill() ends its workers too
        )
        self.lines: list[str] = []
        self._finished = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str) -> str:
        """The first output line containing ``text``, waiting for it up to WAIT seconds."""

        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() or self._finished, timeout=WAIT):
                raise AssertionError(f"no {text!r} in {WAIT} s; output so far:\n{self.output}")
            line = found()
        if line is None:
            raise AssertionError(f"the server exited without {text!r}; output:\n{self.output}")
        return line

    def started(self) -> httpx.Client:
        """A client for the server once it says it is running."""
        line = self.wait_for(self.ready)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match is not None, line
        return httpx.Client(base_url=f"http://127.0.0.1:{match[1]}", timeout=WAIT)

    def terminate(self) -> int:
        """SIGTERM, as a process manager stops a server; the exit status once it is gone."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        returncode = self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        return returncode

    def kill(self) -> None:
        """SIGKILL the server and every process of its group (``--workers`` children,
        which would outlive it and hold its output open)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def serve(command: list[str], ready: str, env: dict[str, str]) -> Iterator[Server]:
    """Run ``command``; the server is killed if the test leaves it running."""
    server = Server(command, ready, env)
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def uvicorn(app: str, loop: str, **env: str) -> Iterator[Server]:
    """``python -m uvicorn app --loop loop``."""
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "0"]
    with serve([*command, "--loop", loop], "Uvicorn running on", env) as server:
        yield server


@contextmanager
def hypercorn(app: str, worker_class: str, **env: str) -> Iterator[Server]:
    """``python -m hypercorn app --worker-class worker_class`` (asyncio, uvloop or trio)."""
    command = [sys.executable, "-m", "hypercorn", app, "--bind", "127.0.0.1:0"]
    with serve([*command, "--worker-class", worker_class], "Running on", env) as server:
        yield server
