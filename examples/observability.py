"""Observability in one run: metrics, a Prometheus scrape, OpenTelemetry spans, own middleware.

Run it with ``python examples/observability.py`` in the venv; pass ``trio`` or
``uvloop`` as the first argument to use that backend. It needs the extras
``pip install 'aevents[otel,prometheus]' opentelemetry-sdk``.
"""

from __future__ import annotations

import sys
import time
from contextvars import ContextVar, Token
from typing import Any

import anyio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, generate_latest

import aevents
from aevents import DeliveryInfo, Event, Publishing, RetryPolicy
from aevents.contrib.otel import Tracing
from aevents.contrib.prometheus import register

# An application would call trace.set_tracer_provider() with a batching exporter
# (OTLP, say) and use Tracing(); this one keeps the spans in memory to print them.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("shop")

current_tenant: ContextVar[str] = ContextVar("current_tenant", default="-")


class Tenancy(aevents.Middleware):
    """Carries the publisher's tenant in each event's metadata, and back into receivers."""

    def before_publish(self, publishing: Publishing) -> None:
        publishing.metadata.setdefault("tenant", current_tenant.get())

    def before_delivery(self, delivery: DeliveryInfo) -> Token[str]:
        return current_tenant.set(delivery.event.metadata.get("tenant", "-"))

    def after_delivery(
        self, delivery: DeliveryInfo, state: Token[str], error: BaseException | None
    ) -> None:
        current_tenant.reset(state)


class SlowAttempts(aevents.Middleware):
    """Reports attempts that take longer than ``threshold`` seconds."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def before_delivery(self, delivery: DeliveryInfo) -> float:
        return time.perf_counter()

    def after_delivery(
        self, delivery: DeliveryInfo, state: float, error: BaseException | None
    ) -> None:
        elapsed = time.perf_counter() - state
        if elapsed > self.threshold:
            print(f"slow: {delivery.receiver_id} took {elapsed * 1000:.0f} ms")


@aevents.subscribe("shop:order:placed", id="charge-card")
async def charge_card(event: Event) -> None:
    """A receiver with a span of its own: it nests under the delivery's span."""
    print(f"charging order {event.payload['order']} for tenant {current_tenant.get()}")
    with tracer.start_as_current_span("call payment provider"):
        await anyio.sleep(0.02)
    await aevents.publish("shop:order:paid", payload=dict(event.payload))


@aevents.subscribe("shop:order:*", id="send-receipt", retry=RetryPolicy(initial_delay=0.01))
async def send_receipt(event: Event) -> None:
    """A flaky receiver: its first attempt on a paid order fails, the retry succeeds."""
    delivery = aevents.current_delivery()
    if event.name == "shop:order:paid" and delivery is not None and delivery.attempt == 1:
        raise ConnectionError("mail server busy")
    print(f"receipt for {event.name} sent to tenant {current_tenant.get()}")


def show_spans(spans: tuple[ReadableSpan, ...]) -> None:
    """The spans of the first trace as a tree: each span indented under its parent."""
    trace_id = spans[0].context.trace_id if spans[0].context else None
    ours = [span for span in spans if span.context and span.context.trace_id == trace_id]
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(ours, key=lambda span: span.start_time or 0):
        by_parent.setdefault(span.parent.span_id if span.parent else None, []).append(span)

    def walk(parent: int | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            attributes: dict[str, Any] = dict(span.attributes or {})
            suffix = ""
            if span.kind is SpanKind.CONSUMER:
                receiver_id = attributes["aevents.receiver.id"]
                attempt = attributes["aevents.delivery.attempt"]
                suffix = f" [{receiver_id}, attempt {attempt}, {span.status.status_code.name}]"
            print(f"  {'  ' * depth}{span.kind.name.lower()} {span.name}{suffix}")
            walk(span.context.span_id if span.context else None, depth + 1)

    walk(None, 0)


async def main() -> None:
    metrics = aevents.Metrics()
    middleware = [Tracing(provider), Tenancy(), SlowAttempts(threshold=0.01)]
    async with aevents.EventRuntime(metrics=metrics, middleware=middleware) as runtime:
        prometheus = CollectorRegistry()
        register(runtime, prometheus)
        current_tenant.set("acme")
        with tracer.start_as_current_span("POST /orders"):
            await aevents.publish("shop:order:placed", payload={"order": 1})
        await runtime.drain()

        snapshot = metrics.snapshot()
        for receiver_id, figures in sorted(snapshot.by_receiver.items()):
            print(
                f"{receiver_id}: published={figures.published} delivered={figures.delivered} "
                f"failed={figures.failed} "
                f"p99 duration={figures.duration.quantile(0.99) * 1000:.1f} ms"
            )
        scrape = generate_latest(prometheus).decode()
        for line in scrape.splitlines():
            if line.startswith("aevents_deliveries_delivered_total"):
                print(f"scrape: {line}")
    print("spans of the order's trace:")
    show_spans(exporter.get_finished_spans())


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    print(f"observability example on {backend}")
    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)
