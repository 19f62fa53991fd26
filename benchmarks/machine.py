"""What the numbers were measured on: machine, Python, library versions."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "aevents",
    "anyio",
    "attrs",
    "orjson",
    "trio",
    "uvloop",
    "blinker",
    "django",
    "asgiref",
    "pyee",
    "bubus",
    "pydantic",
    "rich",
    "psutil",
    "matplotlib",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def git_revision(root: Path) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return None
    return completed.stdout.strip() or None


def source_digest(package: Path) -> str | None:
    """sha256 over the package's .py files: which aevents code was measured (pre-commit too)."""
    files = sorted(package.rglob("*.py"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe(root: Path) -> dict[str, Any]:
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    ram = memory_bytes()
    return {
        "machine": {
            "cpu": cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": physical,
            "ram_gib": round(ram / 2**30, 1) if ram else None,
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "libraries": versions(),
        "git": git_revision(root),
        "aevents_source_sha256": source_digest(root / "aevents"),
    }
