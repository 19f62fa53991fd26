"""The admin pages: dead letters (list, detail, redeliver, discard) and deliveries.

Each page is a view of the ``ModelAdmin`` of an unmanaged model, registered on
the default admin site: the admin's login, permissions and look, with the rows
read from the store instead of the database.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Any
from urllib.parse import urlencode

import attrs
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from .... import AeventsError, DeadLetter
from ...._store._protocol import Backlog, Lease, LeasedStore, PendingDelivery
from ..._operations import Filters, filter_letters, pretty_json, redact
from . import models
from ._stores import with_store

logger = logging.getLogger("aevents.dashboard")

MAX_ROWS = 500  # rows listed on one page
VERBS = {"redeliver": "change", "discard": "delete"}  # each action's admin permission


class _StorePage(admin.ModelAdmin):  # type: ignore[misc]  # Django ships no type information
    """A page of the admin whose rows come from the store: no add, change or delete views."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            **extra,
        }


@admin.register(models.DeadLetter)
class DeadLetterAdmin(_StorePage):
    """Dead letters: filter, open, redeliver (change permission), discard (delete permission)."""

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name="aevents_admin_deadletter_changelist"),
            path("act/", wrap(self.act_view), name="aevents_admin_deadletter_act"),
            path(
                "<str:letter_id>/", wrap(self.letter_view), name="aevents_admin_deadletter_letter"
            ),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        filters = Filters.read(request.GET)
        letters, error = _letters()
        matching = filter_letters(letters, filters)
        context = self._context(
            request,
            "Dead letters",
            filters=filters,
            filter_problem=filters.problem(),
            receivers=sorted({letter.receiver_id for letter in letters}),
            error_types=sorted({letter.error_type for letter in letters}),
            total=len(letters),
            matching=len(matching),
            shown=[_row(letter) for letter in reversed(matching[-MAX_ROWS:])],
            error=error,
            verbs=[verb for verb in VERBS if self._may(request, verb)],
        )
        return TemplateResponse(request, "aevents_admin/dead_letters.html", context)

    def letter_view(self, request: HttpRequest, letter_id: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        letters, error = _letters()
        letter = next((found for found in letters if found.id == letter_id), None)
        if letter is None:
            missing = error or f"There is no dead letter {letter_id!r} (any more)."
            self.message_user(request, missing, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:aevents_admin_deadletter_changelist"))
        context = self._context(
            request,
            f"Dead letter {letter.id}",
            letter=_row(letter),
            payload=pretty_json(dict(letter.event.payload)),
            metadata=pretty_json(dict(letter.event.metadata)),
            verbs=[verb for verb in VERBS if self._may(request, verb)],
        )
        return TemplateResponse(request, "aevents_admin/letter.html", context)

    def act_view(self, request: HttpRequest) -> HttpResponse:
        """POST: the confirmation page, then (``confirmed=yes``) the action itself."""
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:aevents_admin_deadletter_changelist"))
        verb, _, scope = request.POST.get("action", "").partition(":")
        if verb not in VERBS or not self._may(request, verb):
            raise PermissionDenied
        filters = Filters.read(request.POST)
        back = reverse("admin:aevents_admin_deadletter_changelist")
        query = urlencode({k: v for k, v in attrs.asdict(filters).items() if v})
        if request.POST.get("confirmed") == "yes":
            ids = list(dict.fromkeys(request.POST.getlist("ids")))
            try:
                done = with_store(
                    lambda store: getattr(store, verb)(ids)  # redeliver or discard
                )
            except AeventsError as failure:
                self.message_user(request, redact(str(failure)), messages.ERROR)
                return HttpResponseRedirect(f"{back}?{query}")
            user = request.user.get_username() if request.user.is_authenticated else "?"
            logger.info(
                "admin: %s chose to %s %d dead letters, %d done: %s",
                user,
                verb,
                len(ids),
                done,
                ", ".join(ids[:10]),
                extra={"actor": user, "action": verb, "dead_letter_ids": tuple(ids)},
            )
            past = "redelivered" if verb == "redeliver" else "discarded"
            self.message_user(request, f"{done} of {len(ids)} dead letters {past}.")
            return HttpResponseRedirect(f"{back}?{query}")
        letters, error = _letters()
        if scope == "matching":
            chosen = filter_letters(letters, filters)
        else:
            wanted = set(request.POST.getlist("ids"))
            chosen = [letter for letter in letters if letter.id in wanted]
        context = self._context(
            request,
            f"{verb.capitalize()} {len(chosen)} dead letters?",
            verb=verb,
            chosen=[_row(letter) for letter in chosen],
            filters=filters,
            back=f"{back}?{query}",
            error=error,
        )
        return TemplateResponse(request, "aevents_admin/confirm.html", context)

    def _may(self, request: HttpRequest, verb: str) -> bool:
        if VERBS[verb] == "change":
            return bool(self.has_change_permission(request))
        return bool(self.has_delete_permission(request))


@admin.register(models.Delivery)
class DeliveryAdmin(_StorePage):
    """Deliveries not done: the backlog per receiver, the leases, the first pending ones."""

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [path("", wrap(self.changelist_view), name="aevents_admin_delivery_changelist")]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        receiver = request.GET.get("receiver", "").strip()
        try:
            found = with_store(_deliveries)
            error = None
        except AeventsError as failure:
            found, error = _Deliveries(), redact(str(failure))
        backlog, leases, pending = found.backlog, found.leases, found.pending
        if receiver:
            leases = [lease for lease in leases if lease.receiver_id == receiver]
            pending = [item for item in pending if item.receiver_id == receiver]
        context = self._context(
            request,
            "Deliveries",
            receiver=receiver,
            receivers=[row.receiver_id for row in backlog],
            backlog=backlog if not receiver else [r for r in backlog if r.receiver_id == receiver],
            leases=leases[:MAX_ROWS],
            pending=pending,
            lists_pending=found.lists_pending,
            store=found.store,
            error=error,
        )
        return TemplateResponse(request, "aevents_admin/deliveries.html", context)


def _letters() -> tuple[list[DeadLetter], str | None]:
    try:
        return with_store(lambda store: store.dead_letters()), None
    except AeventsError as failure:
        return [], redact(str(failure))


def _row(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "name": letter.event.name,
        "event_id": letter.event.id,
        "key": letter.event.key,
        "occurred_at": letter.event.occurred_at,
        "receiver_id": letter.receiver_id,
        "attempts": letter.attempts,
        "error_type": letter.error_type,
        "error_message": redact(letter.error_message),
        "failed_at": letter.failed_at,
    }


@attrs.frozen
class _Deliveries:
    """What the deliveries page read from the store."""

    backlog: list[Backlog] = attrs.Factory(list)
    leases: list[Lease] = attrs.Factory(list)
    pending: list[PendingDelivery] = attrs.Factory(list)
    lists_pending: bool = True
    """False for a store without ``pending()`` (a third-party ``LeasedStore``, say)."""
    store: str = ""
    """The store, as its ``repr`` names it (redacted)."""


async def _deliveries(store: Any) -> _Deliveries:
    backlog: list[Backlog] = []
    leases: list[Lease] = []
    pending: list[PendingDelivery] = []
    if isinstance(store, LeasedStore):
        backlog, leases = await store.backlog(), await store.leases()
    lists_pending = hasattr(store, "pending")  # a journal (Store) too, as SQLiteStore is
    if lists_pending:
        async with aclosing(store.pending()) as stream:
            async for item in stream:
                pending.append(item)
                if len(pending) >= MAX_ROWS:
                    break
    return _Deliveries(backlog, leases, pending, lists_pending, redact(repr(store)))
