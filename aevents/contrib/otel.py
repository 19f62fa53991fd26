"""OpenTelemetry tracing for aevents (``pip install 'aevents[otel]'``, the API only).

::

    from aevents.contrib.otel import Tracing

    async with aevents.EventRuntime(middleware=[Tracing()]) as runtime:
        ...

Each publish gets a PRODUCER span ``publish <name>``, and each delivery
attempt a CONSUMER span ``process <name>``, following the OpenTelemetry
messaging semantic conventions (attribute names from the registry's
``messaging.*``, ``messaging.operation.type`` ``send`` and ``process``). The
producer span's context travels as W3C ``traceparent`` / ``tracestate`` keys in
the event's *metadata*, never its payload, so it survives the queue and, with a
store, the journal and a restart.

Each consumer span links to the producer span, as the conventions require,
and is by default also its child: a delivery is one message pushed to one
receiver in the same process, so the request that published an event and what
its receivers did belong in one trace, and a parent-based sampler keeps or
drops them together. ``Tracing(same_trace=False)`` makes each delivery the root
of a trace of its own, linked to the publisher's, for chains that would
otherwise grow one trace without bound.

The consumer span is the current span while the receiver runs (async, or sync
on a worker thread), so the receiver's own spans nest under it, and an event
it publishes gets a producer span that is its child.

aevents never imports this module: without the extra, nothing is imported or paid.
"""

from __future__ import annotations

from contextvars import Token
from typing import Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.propagate import get_global_textmap
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    if error.name is None or error.name.partition(".")[0] != "opentelemetry":
        raise
    raise ImportError(
        "aevents.contrib.otel needs opentelemetry-api: pip install 'aevents[otel]'"
    ) from error

from .._delivery import DeliveryInfo
from .._middleware import Middleware, Publishing
from .._policy import describe_error

__all__ = ["TRACE_METADATA_KEYS", "Tracing"]

TRACE_METADATA_KEYS: Final = ("traceparent", "tracestate")
"""The metadata keys the default (W3C Trace Context) propagator writes; with the
default composite propagator, ``baggage`` too when there is baggage."""

# Semantic-convention attribute names (the messaging and error registries).
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_SUBSCRIPTION_NAME: Final = "messaging.destination.subscription.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_CONVERSATION_ID: Final = "messaging.message.conversation_id"
ERROR_TYPE: Final = "error.type"
# aevents' own, in its namespace.
RECEIVER_ID: Final = "aevents.receiver.id"
DELIVERY_ATTEMPT: Final = "aevents.delivery.attempt"

_SYSTEM: Final = "aevents"
_EMPTY: Final = Context()


class Tracing(Middleware):
    """Producer and consumer spans around each publish and each delivery attempt.

    Each publish gets a PRODUCER span ``publish <name>``, each attempt a
    CONSUMER span ``process <name>`` linked to it. The producer's context
    travels in the event's metadata, so it survives the queue and, with a
    store, a restart.

    Args:
        tracer_provider: Default ``None``: the global one, set by your
            OpenTelemetry SDK setup and looked up on use.
        propagator: Default ``None``: the global text-map propagator (W3C Trace
            Context and Baggage unless configured otherwise), looked up on use.
        same_trace: Make each consumer span a child of its producer span as
            well as linked to it, so that a request and what its receivers did
            form one trace. ``False`` makes each delivery the root of a trace of
            its own. Default ``True``.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
        same_trace: bool = True,
    ) -> None:
        self._tracer = trace.get_tracer("aevents", _version(), tracer_provider=tracer_provider)
        self._propagator = propagator
        self.same_trace = same_trace

    def _textmap(self) -> TextMapPropagator:
        return self._propagator if self._propagator is not None else get_global_textmap()

    # ------------------------------------------------------------------ publish

    def before_publish(self, publishing: Publishing) -> Span:
        """Start ``publish <name>`` and put its context in the event's metadata."""
        carrier = publishing.metadata
        links = None
        custom = "traceparent" in carrier
        if custom:
            # A creation context the publisher set itself (forwarding an event) is
            # kept as it is, as the conventions ask; the publish span links to it.
            links = _link_to(self._textmap().extract(carrier, context=_EMPTY))
        span = self._tracer.start_span(
            f"publish {publishing.name}",
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={
                MESSAGING_SYSTEM: _SYSTEM,
                MESSAGING_OPERATION_TYPE: "send",
                MESSAGING_OPERATION_NAME: "publish",
                MESSAGING_DESTINATION_NAME: publishing.name,
            },
        )
        if not custom:
            self._textmap().inject(carrier, context=trace.set_span_in_context(span))
        return span

    def after_publish(
        self, publishing: Publishing, state: Span, error: BaseException | None
    ) -> None:
        """Name the accepted event on the span, or record why the publish failed; end it."""
        event = publishing.event
        if event is not None:
            state.set_attribute(MESSAGING_MESSAGE_ID, event.id)
            state.set_attribute(MESSAGING_CONVERSATION_ID, event.correlation_id)
        if error is not None:
            _record_error(state, error)
        state.end()

    # ------------------------------------------------------------------ delivery

    def before_delivery(self, delivery: DeliveryInfo) -> tuple[Span, Token[Context]]:
        """Start ``process <name>`` from the event's metadata and make it current."""
        event = delivery.event
        producer = self._textmap().extract(event.metadata, context=_EMPTY)
        span = self._tracer.start_span(
            f"process {event.name}",
            context=producer if self.same_trace else _EMPTY,
            kind=SpanKind.CONSUMER,
            links=_link_to(producer),
            attributes={
                MESSAGING_SYSTEM: _SYSTEM,
                MESSAGING_OPERATION_TYPE: "process",
                MESSAGING_OPERATION_NAME: "process",
                MESSAGING_DESTINATION_NAME: event.name,
                MESSAGING_SUBSCRIPTION_NAME: delivery.pattern,
                MESSAGING_MESSAGE_ID: event.id,
                MESSAGING_CONVERSATION_ID: event.correlation_id,
                RECEIVER_ID: delivery.receiver_id,
                DELIVERY_ATTEMPT: delivery.attempt,
            },
        )
        # Baggage and anything else the propagator carried stay in the context too.
        token = otel_context.attach(trace.set_span_in_context(span, producer))
        return span, token

    def after_delivery(
        self,
        delivery: DeliveryInfo,
        state: tuple[Span, Token[Context]],
        error: BaseException | None,
    ) -> None:
        """Record the attempt's error, if any, end the span and restore the context."""
        span, token = state
        otel_context.detach(token)
        if error is not None:
            _record_error(span, error)
        span.end()


def _link_to(context: Context) -> list[Link] | None:
    span_context = trace.get_current_span(context).get_span_context()
    return [Link(span_context)] if span_context.is_valid else None


def _record_error(span: Span, error: BaseException) -> None:
    error_type, message = describe_error(error)
    span.set_attribute(ERROR_TYPE, error_type)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))


def _version() -> str:
    import aevents

    version: str = aevents.__version__
    return version
