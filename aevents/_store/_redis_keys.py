"""Where a RedisStore keeps things (the keys its scripts use), and its URL shown safely.

Every key of a store starts with ``{prefix}``, a hash tag, so that a cluster
keeps them in one slot and each script can touch them all at once. The full
layout is described in ``_redis_scripts``; Python reads only the keys named here.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

__all__ = ["RedisKeys", "redact"]


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the only form shown. A
    password given as ``user:password@`` or as a ``password=`` query parameter (both of
    which coredis reads) is hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a Redis URL that could not be parsed>"
    if password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        query = [
            (name, "***" if name.lower() == "password" else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


@attrs.frozen
class RedisKeys:
    """The keys of one store, named from its prefix."""

    prefix: str

    @property
    def base(self) -> str:
        """``{prefix}``: the hash tag every key starts with (``KEYS[1]`` of each script)."""
        return "{" + self.prefix + "}"

    @property
    def events(self) -> str:
        return self.base + ":events"

    @property
    def dead(self) -> str:
        return self.base + ":dead"

    @property
    def counts(self) -> str:
        return self.base + ":counts"

    @property
    def seq(self) -> str:
        return self.base + ":seq"

    @property
    def idempotency_times(self) -> str:
        return self.base + ":idemt"

    @property
    def pattern(self) -> str:
        """A ``SCAN MATCH`` pattern of every key of the store (braces escaped)."""
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)
        return "\\{" + escaped + "\\}:*"

    def receiver(self, receiver_id: str) -> str:
        """The stream of one receiver's deliveries."""
        return f"{self.base}:r:{receiver_id}"
