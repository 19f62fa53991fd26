"""The app to add to ``INSTALLED_APPS``: ``"aevents.contrib.django"``."""

from __future__ import annotations

from django.apps import AppConfig

from ._discovery import autodiscover

__all__ = ["AeventsConfig"]


class AeventsConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    """Imports every installed app's ``events.py`` once the app registry is ready."""

    name = "aevents.contrib.django"
    label = "aevents"
    verbose_name = "aevents"

    def ready(self) -> None:
        """Autodiscover ``events.py`` modules; running it again changes nothing."""
        autodiscover()
