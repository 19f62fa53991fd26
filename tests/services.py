"""The servers some tests need: PostgreSQL and Redis, found from the environment.

A test asks for ``postgres_dsn`` or ``redis_url`` (fixtures in ``conftest.py``).
When the server does not answer, the test is skipped, and the run ends with one
line per missing server saying how to enable it. With
``AEVENTS_REQUIRE_SERVICES=1`` (``.ci/run`` sets it) a missing server fails the
test instead, so that CI never passes by skipping.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import attrs

REQUIRE = "AEVENTS_REQUIRE_SERVICES"


@attrs.frozen
class Service:
    name: str
    variable: str
    default: str

    @property
    def url(self) -> str:
        return os.environ.get(self.variable) or self.default

    def reachable(self) -> bool:
        """A TCP connection to the server's port opens (what the URL names)."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        try:
            with socket.create_connection((host, port or 0), timeout=2.0):
                return True
        except OSError:
            return False

    def how_to_enable(self) -> str:
        return (
            f"{self.name} is not reachable at {_without_password(self.url)}: start it, or set "
            f"{self.variable} to its URL (with {REQUIRE}=1 these tests fail instead)"
        )


POSTGRES = Service(
    "PostgreSQL", "AEVENTS_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS = Service("Redis", "AEVENTS_REDIS_URL", "redis://127.0.0.1:6379/0")


def required() -> bool:
    return os.environ.get(REQUIRE, "") not in ("", "0")


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


async def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete every key of the ``RedisStore`` with this prefix (a test's own, after it)."""
    from aevents import RedisStore

    store = RedisStore(url, prefix=prefix)
    await store.open()
    try:
        await store.delete_all()
    finally:
        await store.close()
