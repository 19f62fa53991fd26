"""``manage.py aevents_worker``: run this project's receivers until SIGTERM.

The Django form of ``python -m aevents worker``: Django is set up by
``manage.py``, so the installed apps' ``events.py`` modules have subscribed
their receivers; the runtime is built from ``settings.AEVENTS`` as the ASGI
application builds it, and must have a ``store``.
"""

from __future__ import annotations

from typing import Any

import anyio
from django.core.management.base import BaseCommand, CommandError, CommandParser

from aevents._exceptions import AeventsError
from aevents._worker import BACKENDS, serve, show_logs
from aevents.contrib.django._asgi import runtime_from_settings


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = (
        "Run this project's event receivers on the store in settings.AEVENTS until SIGTERM "
        "or SIGINT, then drain and stop (a second signal stops at once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency",
            type=int,
            metavar="N",
            help="deliveries run at once (default: settings.AEVENTS['workers'], or 8)",
        )
        parser.add_argument(
            "--start-ahead",
            type=int,
            metavar="N",
            help="claims started ahead of the workers, so that a batch takes fewer store "
            "calls; a worker that dies counts an attempt for each (default: "
            "settings.AEVENTS['start_ahead'], or as many as --concurrency)",
        )
        parser.add_argument("--backend", choices=BACKENDS, default="asyncio")

    def handle(self, *args: Any, **options: Any) -> None:
        overrides: dict[str, int] = {}
        for flag, option in (("concurrency", "workers"), ("start_ahead", "start_ahead")):
            value = options[flag]
            if value is not None and value < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
            if value is not None:
                overrides[option] = value
        try:
            runtime = runtime_from_settings(**overrides)
        except AeventsError as error:
            raise CommandError(str(error)) from None
        if runtime.store is None:
            raise CommandError(
                "settings.AEVENTS has no 'store': a worker without a store runs only what it "
                "publishes itself; set AEVENTS['store'] to the journal the web processes use"
            )
        show_logs()
        backend, backend_options = options["backend"], {}
        if backend == "uvloop":
            backend, backend_options = "asyncio", {"use_uvloop": True}
        try:
            anyio.run(serve, runtime, backend=backend, backend_options=backend_options)
        except AeventsError as error:
            raise CommandError(str(error)) from None
