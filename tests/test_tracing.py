"""Tracing: producer and consumer spans, recorded by the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from aevents import Event, EventRuntime, MemoryStore, PayloadError, Registry, RetryPolicy
from aevents.contrib.otel import Tracing

pytestmark = pytest.mark.anyio

TWICE = RetryPolicy(attempts=2, initial_delay=0, jitter=0)

BLOCK_IMPORT = """
import importlib.abc, sys
class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None
sys.meta_path.insert(0, Uninstalled())
"""


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider of the test's own, never the global one, so tests cannot disturb each other."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def context_of(span: ReadableSpan) -> SpanContext:
    context: SpanContext | None = span.context
    assert context is not None
    return context


def ids(context: SpanContext | None) -> tuple[int, int] | None:
    """(trace id, span id): a propagated context differs from the local one only in is_remote."""
    return None if context is None else (context.trace_id, context.span_id)


def link_ids(span: ReadableSpan) -> list[tuple[int, int] | None]:
    return [ids(link.context) for link in span.links]


def traceparent(span: ReadableSpan) -> str:
    context = context_of(span)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_a_delivery_is_a_consumer_span_linked_to_and_child_of_the_producer_span(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """publish <name> nests under the request; process <name> is its child and links to it."""

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:*", receiver, id="orders")
    tracer = provider.get_tracer("test")
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        with tracer.start_as_current_span("request"):
            event = await runtime.publish("order:placed", metadata={"correlation_id": "checkout-7"})
        with anyio.fail_after(5):
            await runtime.drain()
    (request,) = named(exporter, "request")
    (producer,) = named(exporter, "publish order:placed")
    (consumer,) = named(exporter, "process order:placed")
    assert producer.kind is SpanKind.PRODUCER
    assert ids(producer.parent) == ids(context_of(request))
    assert dict(producer.attributes or {}) == {
        "messaging.system": "aevents",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "order:placed",
        "messaging.message.id": event.id,
        "messaging.message.conversation_id": "checkout-7",
    }
    assert consumer.kind is SpanKind.CONSUMER
    assert ids(consumer.parent) == ids(context_of(producer))
    assert link_ids(consumer) == [ids(context_of(producer))]
    assert dict(consumer.attributes or {}) == {
        "messaging.system": "aevents",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "order:placed",
        "messaging.destination.subscription.name": "order:*",
        "messaging.message.id": event.id,
        "messaging.message.conversation_id": "checkout-7",
        "aevents.receiver.id": "orders",
        "aevents.delivery.attempt": 1,
    }
    assert consumer.status.status_code is StatusCode.UNSET


async def test_the_trace_context_travels_in_the_metadata_never_the_payload(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The event carries the producer span as a W3C traceparent in its metadata."""
    seen: list[Event] = []

    async def receiver(event: Event) -> None:
        seen.append(event)

    registry.subscribe("order:placed", receiver, id="orders")
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        event = await runtime.publish("order:placed", payload={"order": 7})
        with anyio.fail_after(5):
            await runtime.drain()
    (producer,) = named(exporter, "publish order:placed")
    assert dict(event.metadata) == {"traceparent": traceparent(producer)}
    assert dict(event.payload) == {"order": 7}
    assert seen == [event]


async def test_with_same_trace_off_each_delivery_is_a_root_linked_to_its_producer(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """same_trace=False starts a new trace per delivery, keeping the link to the publisher."""

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:placed", receiver, id="orders")
    async with EventRuntime(registry, middleware=[Tracing(provider, same_trace=False)]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    (producer,) = named(exporter, "publish order:placed")
    (consumer,) = named(exporter, "process order:placed")
    assert consumer.parent is None
    assert context_of(consumer).trace_id != context_of(producer).trace_id
    assert link_ids(consumer) == [ids(context_of(producer))]


async def test_each_attempt_gets_a_consumer_span_and_a_failure_records_its_error(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A delivery that fails once and then succeeds leaves an error span, then a clean one."""
    attempts: list[int] = []

    async def flaky(event: Event) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("mail server down")

    registry.subscribe("mail:send", flaky, id="flaky", retry=TWICE)
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        await runtime.publish("mail:send")
        with anyio.fail_after(5):
            await runtime.drain()
    (producer,) = named(exporter, "publish mail:send")
    first, second = named(exporter, "process mail:send")
    assert [(span.attributes or {})["aevents.delivery.attempt"] for span in (first, second)] == [
        1,
        2,
    ]
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ConnectionError: mail server down"
    assert (first.attributes or {})["error.type"] == "ConnectionError"
    assert [event.name for event in first.events] == ["exception"]
    assert second.status.status_code is StatusCode.UNSET
    assert "error.type" not in (second.attributes or {})
    for span in (first, second):
        assert ids(span.parent) == ids(context_of(producer))
        assert link_ids(span) == [ids(context_of(producer))]


async def test_a_receivers_own_spans_and_publishes_nest_under_its_consumer_span(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The consumer span is current in the receiver: its spans and its publishes are children."""
    tracer = provider.get_tracer("test")

    async def on_order(event: Event) -> None:
        with tracer.start_as_current_span("charge card"):
            pass
        await runtime.publish("mail:send")

    async def on_mail(event: Event) -> None:
        pass

    registry.subscribe("order:placed", on_order, id="orders")
    registry.subscribe("mail:send", on_mail, id="mail")
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    (order,) = named(exporter, "process order:placed")
    (charge,) = named(exporter, "charge card")
    (child_producer,) = named(exporter, "publish mail:send")
    (child_consumer,) = named(exporter, "process mail:send")
    assert ids(charge.parent) == ids(context_of(order))
    assert ids(child_producer.parent) == ids(context_of(order))
    assert ids(child_consumer.parent) == ids(context_of(child_producer))
    assert link_ids(child_consumer) == [ids(context_of(child_producer))]
    trace_ids = {context_of(span).trace_id for span in exporter.get_finished_spans()}
    assert len(trace_ids) == 1


async def test_a_sync_receiver_on_a_worker_thread_runs_inside_its_consumer_span(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The thread a sync receiver runs on sees the consumer span as the current span."""
    current: list[SpanContext] = []

    def audit(event: Event) -> None:
        current.append(trace.get_current_span().get_span_context())

    registry.subscribe("order:placed", audit, id="audit")
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await runtime.drain()
    (consumer,) = named(exporter, "process order:placed")
    assert current == [context_of(consumer)]


async def test_each_delivery_a_worker_runs_sees_its_own_consumer_span(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """One worker running two deliveries in turn makes each one's span current in turn."""
    current: list[SpanContext] = []

    async def receiver(event: Event) -> None:
        current.append(trace.get_current_span().get_span_context())

    registry.subscribe("job:run", receiver, id="receiver")
    async with EventRuntime(registry, workers=1, middleware=[Tracing(provider)]) as runtime:
        await runtime.publish("job:run")
        await runtime.publish("job:run")
        with anyio.fail_after(5):
            await runtime.drain()
    consumers = named(exporter, "process job:run")
    assert current == [context_of(span) for span in consumers]
    first, second = consumers
    assert second.parent is not None
    assert ids(second.parent) != ids(context_of(first))


async def test_baggage_set_by_the_publisher_reaches_the_receiver(
    registry: Registry, provider: TracerProvider
) -> None:
    """The default propagator carries baggage in the metadata too, into the receiver's context."""
    seen: list[object] = []

    async def receiver(event: Event) -> None:
        seen.append(baggage.get_baggage("tenant"))

    registry.subscribe("order:placed", receiver, id="orders")
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            event = await runtime.publish("order:placed")
        finally:
            otel_context.detach(token)
        with anyio.fail_after(5):
            await runtime.drain()
    assert event.metadata["baggage"] == "tenant=acme"
    assert seen == ["acme"]


async def test_a_failed_publish_ends_its_span_with_the_error(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A payload refused at the call site leaves an error span and no message id."""
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        with pytest.raises(PayloadError):
            await runtime.publish("order:placed", payload={"when": object()})
    (producer,) = named(exporter, "publish order:placed")
    assert producer.status.status_code is StatusCode.ERROR
    assert (producer.attributes or {})["error.type"] == "aevents._exceptions.PayloadError"
    assert "messaging.message.id" not in (producer.attributes or {})


async def test_a_creation_context_the_publisher_set_is_kept_and_linked(
    registry: Registry, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Forwarding an event's metadata keeps its traceparent: both spans link to the original."""
    original = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    forwarded = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def receiver(event: Event) -> None:
        pass

    registry.subscribe("order:placed", receiver, id="orders")
    async with EventRuntime(registry, middleware=[Tracing(provider)]) as runtime:
        event = await runtime.publish("order:placed", metadata={"traceparent": forwarded})
        with anyio.fail_after(5):
            await runtime.drain()
    assert event.metadata["traceparent"] == forwarded
    (producer,) = named(exporter, "publish order:placed")
    (consumer,) = named(exporter, "process order:placed")
    assert link_ids(producer) == [ids(original)]
    assert link_ids(consumer) == [ids(original)]


async def test_the_trace_context_survives_the_journal_and_a_restart(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A delivery replayed by a new runtime links to the producer span of the first run."""
    store = MemoryStore()  # keeps its data across close and open, like a file would
    started = anyio.Event()

    async def stuck(event: Event) -> None:
        started.set()
        await anyio.sleep_forever()

    first = Registry()
    first.subscribe("order:placed", stuck, id="fulfil")
    async with EventRuntime(
        first, store=store, middleware=[Tracing(provider)], shutdown_timeout=0
    ) as runtime:
        await runtime.publish("order:placed")
        with anyio.fail_after(5):
            await started.wait()
    (producer,) = named(exporter, "publish order:placed")
    exporter.clear()

    async def fulfil(event: Event) -> None:
        pass

    second = Registry()
    second.subscribe("order:placed", fulfil, id="fulfil")
    async with EventRuntime(second, store=store, middleware=[Tracing(provider)]) as runtime:
        with anyio.fail_after(5):
            await runtime.drain()
    (replayed,) = named(exporter, "process order:placed")
    assert link_ids(replayed) == [ids(context_of(producer))]
    assert ids(replayed.parent) == ids(context_of(producer))
    assert (replayed.attributes or {})["aevents.delivery.attempt"] == 2
    assert replayed.status.status_code is StatusCode.UNSET


def test_the_core_never_imports_opentelemetry() -> None:
    """Running a runtime loads no opentelemetry module: without the extra, nothing is paid."""
    code = (
        "import sys, anyio, aevents\n"
        "async def main():\n"
        "    async with aevents.EventRuntime():\n"
        "        await aevents.publish('a:b')\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'opentelemetry'"
        " or m == 'aevents.contrib.otel'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_without_opentelemetry_says_how_to_install_it() -> None:
    """With opentelemetry-api not installed, the import fails with the pip extra to add."""
    code = BLOCK_IMPORT + "import aevents\nimport aevents.contrib.otel\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert (
        "ImportError: aevents.contrib.otel needs opentelemetry-api: pip install 'aevents[otel]'"
    ) in result.stderr
