"""The blog app."""

from django.apps import AppConfig


class BlogConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    """Nothing to do at ready(): aevents.contrib.django imports ``blog/events.py``."""

    name = "blog"
