"""``Dashboard``: the ASGI app, its pages, its checks, and its two actions on dead letters."""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode

import attrs
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ... import AeventsError, ConfigurationError, EventRuntime, current_runtime
from ..._store._protocol import LeasedStore, shared
from ..._text import counted
from .._operations import redact
from . import _views as views
from ._actions import ActionLog, Verb
from ._samples import Samples, chart
from ._security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Actor,
    Authorize,
    CsrfTokens,
    default_actor,
    is_authorized,
    same_origin,
)

__all__ = ["Actor", "Authorize", "Dashboard"]

logger = logging.getLogger("aevents.dashboard")

_HERE: Final = Path(__file__).resolve().parent
_MAX_FORM_BYTES: Final = 4 * 1024 * 1024
_MAX_ROWS: Final = 500  # dead letters listed on one page
_VERBS: Final[tuple[Verb, ...]] = ("redeliver", "discard")
_STATE_KEY: Final = "events"  # where the Starlette and Django glue put the runtime
_SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class Dashboard:
    """The operations dashboard: an ASGI app to mount, for example at ``/_events``.

    Pages: the overview (counts and rates, the buffer, a chart, latencies per
    receiver), the receivers and their routes, the fleet (consumers, leases and
    backlog of a shared store), and the dead letters, which it redelivers or
    discards after a confirmation page. Every action is logged on the
    ``aevents.dashboard`` logger at INFO with who did it (see ``actor``).

    Args:
        runtime: The runtime to show. Default ``None``: the one the app's
            lifespan put in ``request.state.events`` (``aevents.contrib.starlette``
            and ``aevents.contrib.django`` do), else ``aevents.current_runtime()``.
        authorize: ``request -> bool``, sync or async: True lets the request
            in (any other answer is a 403). Called for every request, pages,
            static files and actions alike; a hook may look at
            ``request.method`` to allow reading but not acting.
        allow_everyone: Let every request in, with no ``authorize`` hook. Say
            it explicitly, for a dashboard behind a gateway that checks
            already. Default ``False``.
        secret: What the CSRF tokens are signed with: 16 bytes or more.
            Default ``None``: random, once per process, so a form posted to
            another process of the app is refused; give the processes of
            ``uvicorn --workers 4`` the same secret.
        actor: ``request -> str``, sync or async: who made a request, for the
            action log. Default: the authenticated user's ``display_name``
            (Starlette's ``AuthenticationMiddleware``), else the client address.
        refresh: Seconds between the page refreshes of the overview, the
            receivers and the fleet pages (the dead letters page does not
            refresh). Default 5.
        history: Samples of the counters kept for the chart and the rates,
            taken when pages are served, at most one per ``refresh`` seconds.
            Default 720 (an hour at 5 s).
        title: Shown in the header and the window title. Default ``"aevents"``.

    Raises:
        ConfigurationError: No ``authorize`` and no ``allow_everyone=True``, both
            given, or an option of the wrong type or range; the message names it.
    """

    def __init__(
        self,
        runtime: EventRuntime | None = None,
        *,
        authorize: Authorize | None = None,
        allow_everyone: bool = False,
        secret: str | bytes | None = None,
        actor: Actor | None = None,
        refresh: float = 5.0,
        history: int = 720,
        title: str = "aevents",
    ) -> None:
        what = "Dashboard"
        if allow_everyone is not True and allow_everyone is not False:
            raise ConfigurationError(
                what, f"allow_everyone must be True or False, got {allow_everyone!r}"
            )
        if authorize is None and not allow_everyone:
            raise ConfigurationError(
                what,
                "authorize= is required: a callable that gets the request and returns True "
                "to let it in (for example, a check of the session's user); pass "
                "allow_everyone=True instead only if something in front of it checks already",
            )
        if authorize is not None and allow_everyone:
            raise ConfigurationError(
                what, "give authorize= or allow_everyone=True, not both: which one applies?"
            )
        if authorize is not None and not callable(authorize):
            raise ConfigurationError(what, f"authorize must be callable, got {authorize!r}")
        if actor is not None and not callable(actor):
            raise ConfigurationError(what, f"actor must be callable, got {actor!r}")
        if runtime is not None and not isinstance(runtime, EventRuntime):
            raise ConfigurationError(what, f"runtime must be an EventRuntime, got {runtime!r}")
        if (
            isinstance(refresh, bool)
            or not isinstance(refresh, int | float)
            or not 0 < refresh < math.inf
        ):
            raise ConfigurationError(what, f"refresh must be seconds > 0, got {refresh!r}")
        if type(history) is not int or history < 3:
            raise ConfigurationError(what, f"history must be an int >= 3, got {history!r}")
        if not isinstance(title, str):
            raise ConfigurationError(what, f"title must be a str, got {title!r}")
        self.runtime = runtime
        self.refresh = float(refresh)
        self.title = title
        self._authorize = authorize
        self._actor: Actor = actor if actor is not None else default_actor
        self._csrf = CsrfTokens(secret)
        self._samples = Samples(history, self.refresh)
        self.actions = ActionLog()
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters["duration"] = views.duration
        self._app = Starlette(
            routes=[
                Route("/", self._overview, name="overview"),
                Route("/receivers", self._receivers, name="receivers"),
                Route("/fleet", self._fleet, name="fleet"),
                Route("/dead-letters", self._dead_letters, name="dead_letters"),
                Route("/dead-letters/confirm", self._confirm, methods=["POST"]),
                Route("/dead-letters/apply", self._apply, methods=["POST"]),
                Route("/dead-letters/{letter_id}", self._letter, name="letter"),
                Mount("/static", app=StaticFiles(directory=_HERE / "static"), name="static"),
            ]
        )

    def __repr__(self) -> str:
        guard = "allow_everyone=True" if self._authorize is None else "authorize=..."
        return f"<Dashboard {guard} refresh={self.refresh}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope, receive)
            if not await is_authorized(self._authorize, request):
                if request.method not in {"GET", "HEAD"}:
                    logger.warning(
                        "dashboard: refused %s %s from %s: not authorised",
                        request.method,
                        request.url.path,
                        request.client.host if request.client else "an unknown address",
                    )
                await self._page(request, "refused.html", {}, status_code=403)(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def mount(self, app: ASGIApp, path: str = "/_events") -> ASGIApp:
        """An ASGI app serving the dashboard under ``path`` and ``app`` for everything else.

        For apps that are not Starlette (Django's ASGI application): lifespan
        events go to ``app``, so the runtime it starts is the one shown.
        """
        if not path.startswith("/") or path.endswith("/"):
            raise ConfigurationError(
                "Dashboard.mount", f"path must start with / and not end with one, got {path!r}"
            )

        async def routed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                root = scope.get("root_path", "")
                full = scope["path"]
                route = full[len(root) :] if root and full.startswith(root) else full
                if route == path or route.startswith(path + "/"):
                    prefix = root + path if root and full.startswith(root) else path
                    await self({**scope, "root_path": prefix}, receive, send)
                    return
            await app(scope, receive, send)

        return routed

    # ------------------------------------------------------------------ helpers

    def _runtime(self, request: Request) -> EventRuntime | None:
        if self.runtime is not None:
            return self.runtime
        state = request.scope.get("state")
        found = state.get(_STATE_KEY) if isinstance(state, Mapping) else None
        if isinstance(found, EventRuntime):
            return found
        return current_runtime()

    def _page(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status_code: int = 200,
        refresh: bool = False,
        nav: str = "",
    ) -> Response:
        nonce = request.cookies.get(CSRF_COOKIE) or ""
        fresh = not re.fullmatch(r"[A-Za-z0-9_-]{20,64}", nonce)
        if fresh:
            nonce = self._csrf.new_nonce()
        base = request.scope.get("root_path", "")
        page = self._templates.get_template(template)
        values = {
            "base": base,
            "title": self.title,
            "nav": nav,
            "refresh": self.refresh if refresh else None,
            "csrf_field": CSRF_FIELD,
            "csrf_token": self._csrf.token(nonce),
            **context,
        }
        if request.headers.get("x-dashboard-partial") == "1":
            body = "".join(page.blocks["content"](page.new_context(values)))
        else:
            body = page.render(values)
        response = HTMLResponse(body, status_code=status_code, headers=_SECURITY_HEADERS)
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                nonce,
                path=base or "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    def _no_runtime(self, request: Request, nav: str) -> Response:
        return self._page(request, "no_runtime.html", {}, status_code=503, nav=nav)

    async def _who(self, request: Request) -> str:
        answer: Any = self._actor(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return str(answer)

    async def _form(self, request: Request) -> dict[str, list[str]] | Response:
        """The POSTed form, once CSRF and origin checks pass; else the refusal."""
        if not same_origin(request):
            return self._refuse(request, "the request came from another site")
        kind = request.headers.get("content-type", "").partition(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            return self._refuse(request, "the request is not a form", status_code=415)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return self._refuse(request, "the form is too large", status_code=413)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        token = (form.get(CSRF_FIELD) or [""])[0]
        if not self._csrf.valid(request.cookies.get(CSRF_COOKIE), token):
            return self._refuse(request, "the form's CSRF token is missing or wrong")
        return form

    def _refuse(self, request: Request, why: str, *, status_code: int = 403) -> Response:
        logger.warning(
            "dashboard: refused %s %s from %s: %s",
            request.method,
            request.url.path,
            request.client.host if request.client else "an unknown address",
            why,
        )
        return self._page(request, "error.html", {"why": why}, status_code=status_code)

    # ------------------------------------------------------------------ pages

    async def _overview(self, request: Request) -> Response:
        runtime = self._runtime(request)
        if runtime is None:
            return self._no_runtime(request, "overview")
        stats = runtime.stats()
        self._samples.take(stats, id(runtime))
        store_stats, store_error = await views.store_stats(runtime)
        counters = [
            (
                label,
                getattr(stats, field),
                self._samples.rate(field, 60),
                self._samples.rate(field, 300),
            )
            for label, field in (
                ("Published", "published"),
                ("Delivered", "delivered"),
                ("Failed attempts", "failed"),
                ("Dead-lettered", "dead"),
            )
        ]
        context = {
            "running": runtime.running,
            "stats": stats,
            "counters": counters,
            "store": views.describe_store(runtime),
            "store_kind": views.store_kind(runtime),
            "store_stats": store_stats,
            "store_error": store_error,
            "chart": chart(self._samples.samples()),
            "samples": len(self._samples),
            "latencies": views.latencies(runtime),
        }
        return self._page(request, "overview.html", context, refresh=True, nav="overview")

    async def _receivers(self, request: Request) -> Response:
        runtime = self._runtime(request)
        if runtime is None:
            return self._no_runtime(request, "receivers")
        self._samples.take(runtime.stats(), id(runtime))
        metrics = runtime.stats().metrics
        rows = []
        for subscription in sorted(
            runtime.registry.subscriptions(), key=lambda s: (s.receiver_id, s.pattern)
        ):
            figures = (
                None
                if metrics is None
                else metrics.subscriptions.get((subscription.pattern, subscription.receiver_id))
            )
            rows.append(
                {
                    "subscription": subscription,
                    "retry": subscription.retry or runtime.retry,
                    "timeout": subscription.timeout
                    if subscription.timeout is not None
                    else runtime.timeout,
                    "kind": "inline"
                    if subscription.inline
                    else "async"
                    if subscription.is_async
                    else "sync (thread)",
                    "figures": figures,
                }
            )
        context = {
            "rows": rows,
            "metrics": metrics is not None,
            "report": await views.routes_report(runtime),
        }
        return self._page(request, "receivers.html", context, refresh=True, nav="receivers")

    async def _fleet(self, request: Request) -> Response:
        runtime = self._runtime(request)
        if runtime is None:
            return self._no_runtime(request, "fleet")
        self._samples.take(runtime.stats(), id(runtime))
        store = runtime.store
        fleet, error = None, None
        if shared(store) and isinstance(store, LeasedStore):
            try:
                fleet = await views.read_fleet(store)
            except AeventsError as failure:
                error = redact(str(failure))
        store_stats, stats_error = await views.store_stats(runtime)
        context = {
            "store": views.describe_store(runtime),
            "store_kind": views.store_kind(runtime),
            "fleet": fleet,
            "error": error or stats_error,
            "store_stats": store_stats,
            "now": views.now(),
            "age": views.age,
        }
        return self._page(request, "fleet.html", context, refresh=True, nav="fleet")

    async def _dead_letters(self, request: Request) -> Response:
        runtime = self._runtime(request)
        if runtime is None:
            return self._no_runtime(request, "dead_letters")
        filters = views.Filters.read(request.query_params)
        letters, error = [], None
        try:
            letters = await runtime.dead_letters()
        except AeventsError as failure:
            error = redact(str(failure))
        matching = views.filter_letters(letters, filters)
        done = request.query_params.get("done", "")
        context = {
            "filters": filters,
            "filter_problem": filters.problem(),
            "query": urlencode(attrs.asdict(filters)),
            "receivers": sorted({letter.receiver_id for letter in letters}),
            "error_types": sorted({letter.error_type for letter in letters}),
            "total": len(letters),
            "matching": len(matching),
            "shown": list(reversed(matching))[:_MAX_ROWS],
            "error": error,
            "running": runtime.running,
            "can_discard": views.store_kind(runtime) != "journal",
            "done": self.actions.find(int(done)) if done.isdigit() else None,
            "actions": self.actions.recent()[:10],
            "redact": redact,
        }
        return self._page(request, "dead_letters.html", context, nav="dead_letters")

    async def _letter(self, request: Request) -> Response:
        runtime = self._runtime(request)
        if runtime is None:
            return self._no_runtime(request, "dead_letters")
        letter_id = request.path_params["letter_id"]
        try:
            letters = await runtime.dead_letters()
        except AeventsError as failure:
            return self._page(request, "error.html", {"why": redact(str(failure))}, status_code=503)
        letter = next((found for found in letters if found.id == letter_id), None)
        if letter is None:
            return self._page(
                request,
                "error.html",
                {"why": f"there is no dead letter {letter_id!r} (any more)"},
                status_code=404,
                nav="dead_letters",
            )
        event = letter.event
        context = {
            "letter": letter,
            "event": event,
            "payload": views.pretty_json(dict(event.payload)),
            "metadata": views.pretty_json(dict(event.metadata)),
            "error_message": redact(letter.error_message),
            "subscribed": runtime.registry.receiver(letter.receiver_id, event.name) is not None,
            "running": runtime.running,
            "can_discard": views.store_kind(runtime) != "journal",
        }
        return self._page(request, "letter.html", context, nav="dead_letters")

    # ------------------------------------------------------------------ actions

    async def _confirm(self, request: Request) -> Response:
        """Step one: what the chosen action would change, with a form to confirm it."""
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        runtime = self._runtime(request)
        if runtime is None:
            return self._no_runtime(request, "dead_letters")
        verb, _, scope = (form.get("action") or [""])[0].partition(":")
        if verb not in _VERBS or scope not in {"", "matching"}:
            return self._page(
                request, "error.html", {"why": f"unknown action {verb!r}"}, status_code=400
            )
        try:
            letters = await runtime.dead_letters()
        except AeventsError as failure:
            return self._page(request, "error.html", {"why": redact(str(failure))}, status_code=503)
        filters = views.Filters.read({key: values[0] for key, values in form.items() if values})
        if scope == "matching":
            chosen = views.filter_letters(letters, filters)
        else:
            wanted = set(form.get("ids", []))
            chosen = [letter for letter in letters if letter.id in wanted]
        context = {
            "verb": verb,
            "chosen": chosen,
            "shown": chosen[:50],
            "filters": filters,
            "back": urlencode(attrs.asdict(filters)),
            "running": runtime.running,
            "can_discard": views.store_kind(runtime) != "journal",
        }
        return self._page(request, "confirm.html", context, nav="dead_letters")

    async def _apply(self, request: Request) -> Response:
        """Step two: do it, log who did, and show the list again with what was done."""
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        runtime = self._runtime(request)
        if runtime is None:
            return self._no_runtime(request, "dead_letters")
        verb = (form.get("action") or [""])[0]
        if verb not in _VERBS or (form.get("confirmed") or [""])[0] != "yes":
            return self._page(
                request, "error.html", {"why": "the action was not confirmed"}, status_code=400
            )
        ids = [letter_id for letter_id in dict.fromkeys(form.get("ids", [])) if letter_id]
        actor = await self._who(request)
        try:
            done = await (runtime.redeliver(ids) if verb == "redeliver" else runtime.discard(ids))
        except AeventsError as failure:
            why = redact(str(failure))
            logger.warning(
                "dashboard: %s could not %s %s: %s",
                actor,
                verb,
                counted(len(ids), "dead letter"),
                why,
            )
            return self._page(request, "error.html", {"why": why}, status_code=409)
        action = self.actions.record(actor, verb, ids, done)
        filters = views.Filters.read({key: values[0] for key, values in form.items() if values})
        query = urlencode(
            {"done": action.number, **{k: v for k, v in attrs.asdict(filters).items() if v}}
        )
        return RedirectResponse(
            f"{request.scope.get('root_path', '')}/dead-letters?{query}", status_code=303
        )
