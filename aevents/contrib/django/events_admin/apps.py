"""The admin pages' app config."""

from __future__ import annotations

from django.apps import AppConfig


class EventsAdminConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    """Dead letters and deliveries in Django's admin (see the package's docstring)."""

    name = "aevents.contrib.django.events_admin"
    label = "aevents_admin"
    verbose_name = "Events"
    default_auto_field = "django.db.models.AutoField"
