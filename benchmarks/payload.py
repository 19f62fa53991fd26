"""The realistic payload every workload publishes, and the receiver bodies that count it.

Every system calls the same `Sink` method from inside its native receiver, so the
per-delivery work is identical and the correctness guard (`Sink.verify`) is shared.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from benchmarks.systems.base import BenchmarkError, Payload

#: A user sign-up as a web app would publish it (about 400 bytes of JSON).
BASE_PAYLOAD: Payload = {
    "user_id": 48213977,
    "email": "ada.lovelace@example.com",
    "name": "Ada Lovelace",
    "tags": ["beta", "newsletter", "premium"],
    "address": {
        "street": "12 Analytical Engine Row",
        "city": "London",
        "postcode": "NW1 6XE",
        "country": "GB",
    },
    "plan": "pro",
    "signup_source": "web",
    "referrer": "https://news.example.org/articles/2024/05/engines",
    "created_at": "2024-05-01T12:00:00.000000+00:00",
    "locale": "en-GB",
    "marketing_opt_in": True,
    "seq": 0,
}
PAYLOAD_BYTES = len(orjson.dumps(BASE_PAYLOAD))


def make_payload(seq: int) -> Payload:
    """A fresh dict per publish, as a real producer would build one."""
    payload = BASE_PAYLOAD.copy()
    payload["seq"] = seq
    return payload


def make_small_payload(seq: int) -> Payload:
    """The smallest realistic event: an id and a sequence number (about 30 bytes of JSON)."""
    return {"user_id": 48213977, "seq": seq}


def spin(nanoseconds: int) -> None:
    """Busy-wait: CPU work that no amount of concurrency hides (a slow receiver)."""
    deadline = time.perf_counter_ns() + nanoseconds
    while time.perf_counter_ns() < deadline:
        pass


class Sink:
    """Counts deliveries; the sum of `seq` proves each event arrived exactly once."""

    __slots__ = ("count", "latencies_ns", "lock", "seq_total", "slow_ns")

    def __init__(self, slow_ns: int = 0) -> None:
        self.count = 0
        self.seq_total = 0
        self.latencies_ns: list[int] = []
        self.lock = threading.Lock()
        self.slow_ns = slow_ns

    def hit(self, payload: Payload) -> None:
        self.count += 1
        self.seq_total += payload["seq"]

    def hit_threadsafe(self, payload: Payload) -> None:
        with self.lock:
            self.count += 1
            self.seq_total += payload["seq"]

    def latency(self, payload: Payload) -> None:
        self.latencies_ns.append(time.perf_counter_ns() - payload["t0"])
        self.count += 1
        self.seq_total += payload["seq"]

    def slow(self, payload: Payload) -> None:
        spin(self.slow_ns)
        self.count += 1
        self.seq_total += payload["seq"]

    def verify(self, system: str, expected: int, expected_seq_total: int | None = None) -> None:
        """Raise unless exactly `expected` deliveries happened (and, if given, the seq sum)."""
        if self.count != expected:
            raise BenchmarkError(
                f"{system}: {self.count} deliveries, expected exactly {expected}; "
                "the timing is discarded"
            )
        if expected_seq_total is not None and self.seq_total != expected_seq_total:
            raise BenchmarkError(
                f"{system}: deliveries do not cover each event exactly once "
                f"(seq sum {self.seq_total} != {expected_seq_total})"
            )


def seq_sum(n: int) -> int:
    """Sum of seq over events 0..n-1."""
    return n * (n - 1) // 2


def describe() -> dict[str, Any]:
    return {"payload_json_bytes": PAYLOAD_BYTES, "keys": sorted(BASE_PAYLOAD)}
