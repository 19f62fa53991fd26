"""Who may see the dashboard, who did what, and the CSRF tokens of its forms.

CSRF: a signed double submit. Each browser gets a random nonce in a cookie
(``HttpOnly``, ``SameSite=Strict``, scoped to the dashboard's path); each form
carries ``HMAC-SHA256(secret, nonce)``. A POST is accepted only when the form's
token is the signature of the cookie's nonce, and, when the browser says where
the request comes from (``Origin``, ``Sec-Fetch-Site``), it comes from this site.
Another site can neither read the token nor forge one without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

from starlette.requests import Request

from ... import ConfigurationError

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "Actor",
    "Authorize",
    "CsrfTokens",
    "default_actor",
    "is_authorized",
    "same_origin",
]

CSRF_COOKIE: Final = "aevents_dashboard_csrf"
CSRF_FIELD: Final = "csrf_token"
_MIN_SECRET_BYTES: Final = 16

Authorize: TypeAlias = Callable[[Request], bool | Awaitable[bool]]
"""``request -> bool`` (or an awaitable of it): True lets the request through."""
Actor: TypeAlias = Callable[[Request], str | Awaitable[str]]
"""``request -> str``: who made a request, as the action log records it."""


class CsrfTokens:
    """Signs the nonce of a browser's cookie; a form's token is that signature."""

    def __init__(self, secret: str | bytes | None) -> None:
        if secret is None:
            self._secret = secrets.token_bytes(32)  # one per process: see the docs
            return
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_BYTES:
            raise ConfigurationError(
                "Dashboard",
                f"secret must be str or bytes of at least {_MIN_SECRET_BYTES} bytes "
                "(for example secrets.token_hex(32)), or None for a random one per process",
            )
        self._secret = secret

    @staticmethod
    def new_nonce() -> str:
        """A fresh random nonce for a browser's cookie."""
        return secrets.token_urlsafe(24)

    def token(self, nonce: str) -> str:
        """The form token that goes with ``nonce``."""
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def valid(self, nonce: str | None, token: str | None) -> bool:
        """True when ``token`` is the signature of ``nonce``."""
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.token(nonce), token)


async def is_authorized(authorize: Authorize | None, request: Request) -> bool:
    """What the hook says of ``request``; only ``True`` lets it through."""
    if authorize is None:  # built with allow_everyone=True
        return True
    answer: Any = authorize(request)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer is True


async def default_actor(request: Request) -> str:
    """The authenticated user's name (Starlette's ``AuthenticationMiddleware``), else the
    client's address."""
    user = request.scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        return str(getattr(user, "display_name", "") or user)
    client = request.client
    return f"anonymous at {client.host if client else 'unknown address'}"


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")
