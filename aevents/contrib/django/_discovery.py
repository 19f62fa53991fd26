"""Finding each installed app's ``events.py``: its catalogs, receivers and mirrored signals."""

from __future__ import annotations

from importlib import import_module

from django.apps import apps
from django.utils.module_loading import module_has_submodule

from ..._registry import Registry, default_registry

__all__ = ["autodiscover"]


def autodiscover(module: str = "events", *, registry: Registry | None = None) -> list[str]:
    """Import ``<app>.<module>`` for every installed app that has one; return their names.

    Safe to call again (``AppConfig.ready()`` may run twice): a module already
    imported is not run again. An app without the module is skipped; a module
    that fails to import raises its own error, after the subscriptions it made
    in ``registry`` (``aevents.default_registry`` by default) are taken back,
    so a later attempt does not trip over receivers left by the failed one.
    """
    registry = registry if registry is not None else default_registry
    found: list[str] = []
    for app_config in apps.get_app_configs():
        if not module_has_submodule(app_config.module, module):
            continue
        dotted = f"{app_config.name}.{module}"
        before = set(registry.subscriptions())
        try:
            import_module(dotted)
        except BaseException:
            for subscription in registry.subscriptions():
                if subscription not in before:
                    registry.unsubscribe(subscription.pattern, id=subscription.receiver_id)
            raise
        found.append(dotted)
    return found
