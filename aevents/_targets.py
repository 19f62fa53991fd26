"""Finding an app from the command line: ``package.module`` or ``package.module:attribute``.

Shared by ``python -m aevents inspect`` and ``python -m aevents worker``. The
path is what the user typed on the command line, never something read from
stored data.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

__all__ = [
    "POSTGRES_URLS",
    "REDIS_URLS",
    "LoadError",
    "UsageError",
    "check_spec",
    "escape",
    "load_target",
    "use_app_dir",
]

POSTGRES_URLS = ("postgresql://", "postgres://")
"""How a store argument that names a ``PostgresStore`` starts (else: a journal path)."""
REDIS_URLS = ("redis://", "rediss://")
"""How a store argument that names a ``RedisStore`` starts."""


class UsageError(Exception):
    """A usage error found after parsing (argparse reports its own)."""


class LoadError(Exception):
    """A target that could not be imported or looked up."""


def escape(text: str) -> str:
    """``text`` as printed in a message: control characters escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


def check_spec(spec: str, what: str, *, attribute_required: bool) -> None:
    """Refuse a ``spec`` that is not ``package.module[:attribute]`` (a file path, say)."""
    module, colon, attribute = spec.partition(":")
    parts = module.split(".") + (attribute.split(".") if colon else [])
    if not all(part.isidentifier() for part in parts) or (attribute_required and not colon):
        shape = "'package.module:attribute'" if attribute_required else "'package.module'"
        hint = " (a module path, not a file)" if "/" in spec or spec.endswith(".py") else ""
        raise UsageError(f"{what} {spec!r} is not of the form {shape}{hint}")


def use_app_dir(app_dir: str) -> None:
    """Import targets from ``app_dir`` first, as uvicorn does.

    ``python -m`` puts the current directory on ``sys.path``, but ``python -P``,
    ``PYTHONSAFEPATH`` and console scripts do not.
    """
    path = os.path.abspath(app_dir)
    if not os.path.isdir(path):
        raise UsageError(f"--app-dir {app_dir!r} is not a directory")
    if sys.path[:1] != [path]:
        sys.path.insert(0, path)


def load_target(spec: str, *, show_traceback: bool) -> object:
    """Import the module ``spec`` names and look its attribute up, if it names one."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as error:
        if show_traceback:
            traceback.print_exception(error)
        missing = error.name if isinstance(error, ModuleNotFoundError) else None
        if missing is not None and f"{module_name}.".startswith(f"{missing}."):
            raise LoadError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in {sys.path[0]!r} first; run from the project root or pass --app-dir)"
            ) from None
        hint = "" if show_traceback else " (--traceback shows where)"
        raise LoadError(
            f"importing {module_name!r} raised {type(error).__name__}: {error}{hint}"
        ) from None
    for part in attribute.split(".") if attribute else []:
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise LoadError(f"cannot find {spec!r}: {error}") from None
    return target
