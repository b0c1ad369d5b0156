"""Distributed tracing: one goal is one trace, across every process it crosses.

W3C trace context (``traceparent``) and baggage (who submitted) travel in NATS headers on
every task, goal and dead letter, and on results where spans are exported (:func:`inject` on
publish, :func:`extract` on delivery); results and dead letters also name their trace in the
body. Exporting is configured by the standard ``OTEL_*`` variables and off by default: with no
exporter configured the context is carried as the headers themselves and no span is made. Even
then the submitter starts a trace id, so results, dead letters, audit records and log lines of
one goal share an id.

Model calls follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``); prompt and
completion content is recorded only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: Baggage key naming who submitted a goal or task (a NATS user, an MCP client, a schedule).
SUBMITTER = "loom.submitter"
#: Headers that carry the context; a message without them starts no trace of its own.
TRACEPARENT = "traceparent"

BAGGAGE = "baggage"

_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@dataclass(frozen=True, slots=True)
class Carried:
    """A delivered message's trace context while tracing is off: its headers, passed on unparsed.

    With no exporter nothing is recorded, so the OpenTelemetry context machinery is skipped
    (it costs tens of microseconds per message); the ids still travel and still name the trace."""

    traceparent: str
    baggage: str | None = None


#: The context being carried while tracing is off (see :class:`Carried`).
_carried: ContextVar[Carried | None] = ContextVar("loom_trace_carried", default=None)
#: What :func:`extract` returns: an OpenTelemetry context (tracing on) or the carried headers (off).
Parent = Context | Carried
_tracer = trace.get_tracer("loom")
_state: dict[str, Any] = {"enabled": False, "provider": None}

Kind = SpanKind


def exporter_configured(env: Mapping[str, str]) -> str | None:
    """The span exporter the ``OTEL_*`` variables ask for (``otlp`` or ``console``), or None: tracing off.

    Off unless ``OTEL_TRACES_EXPORTER`` names an exporter or an OTLP endpoint is set;
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off in any case.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter in ("otlp", "console"):
        return exporter
    if exporter:
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r} is not supported (otlp, console or none)")
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def setup(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider when the environment asks for an exporter; True when on.

    ``service`` names the process in the backend unless ``OTEL_SERVICE_NAME`` does. Called once
    per process by each role's entrypoint; a second call keeps the first provider.
    """
    env = os.environ if env is None else env
    exporter = exporter_configured(env)
    if exporter is None or _state["enabled"]:
        return bool(_state["enabled"])
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT / HEADERS itself
    name = env.get("OTEL_SERVICE_NAME") or "-".join(service.split())
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _state.update(enabled=True, provider=provider)
    return True


def enabled() -> bool:
    """Whether spans are recorded and exported in this process."""
    return bool(_state["enabled"])


def flush(timeout_ms: int = 5000) -> None:
    """Export finished spans now (before a process exits or a test queries the backend)."""
    provider = _state["provider"]
    if provider is not None:
        provider.force_flush(timeout_ms)


# -- propagation ----------------------------------------------------------------------------------


def inject(headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` with the current trace context and baggage added (unchanged when there is none,
    or when they already carry a context: a forwarded message keeps the one it came with)."""
    if headers is not None and TRACEPARENT in headers:
        return headers
    if not _state["enabled"]:
        carried = _carried.get()
        if carried is None:
            return headers
        out = dict(headers or {})
        out[TRACEPARENT] = carried.traceparent
        if carried.baggage:
            out[BAGGAGE] = carried.baggage
        return out
    if not trace.get_current_span().get_span_context().is_valid:
        return headers
    out = dict(headers or {})
    _PROPAGATOR.inject(out)
    return out


def extract(headers: Mapping[str, str] | None) -> Parent | None:
    """The context a delivered message carries, or None when it carries none (or a malformed one)."""
    if not headers:
        return None
    traceparent = headers.get(TRACEPARENT)
    if traceparent is None:
        return None
    if not _state["enabled"]:
        if _TRACEPARENT.fullmatch(traceparent) is None:
            return None
        return Carried(traceparent, headers.get(BAGGAGE))
    return _PROPAGATOR.extract(headers)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, or None outside any trace."""
    if not _state["enabled"]:
        carried = _carried.get()
        if carried is None:
            return None
        m = _TRACEPARENT.fullmatch(carried.traceparent)
        return (m.group(1), m.group(2)) if m else None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str | None:
    """The current trace id in hex, or None outside any trace."""
    ids = current_ids()
    return ids[0] if ids else None


def submitter() -> str | None:
    """Who submitted the work being done (from the baggage), when known."""
    if not _state["enabled"]:
        carried = _carried.get()
        for entry in (carried.baggage or "").split(",") if carried else ():
            key, sep, value = entry.partition("=")
            if sep and key.strip() == SUBMITTER:
                return unquote(value.split(";", 1)[0].strip()) or None
        return None
    stated = baggage.get_baggage(SUBMITTER)
    return str(stated) if stated else None


def exemplar() -> dict[str, str] | None:
    """A histogram exemplar naming the current trace, when this process exports it."""
    if not _state["enabled"]:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}


# -- spans ----------------------------------------------------------------------------------------


@contextmanager
def root(
    name: str, *, submitted_by: str | None = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """The first span of a trace (a submit, a schedule's fire, an MCP tool call).

    With tracing off here it still starts a trace id (nothing recorded here; flagged sampled so the
    roles that do export spans record this trace), so everything downstream carries one.
    ``submitted_by`` goes into the baggage, read by the audit trail.
    """
    if not _state["enabled"]:
        # Flagged sampled: this process records nothing, the roles that export spans record the trace.
        traceparent = f"00-{random.getrandbits(128) or 1:032x}-{random.getrandbits(64) or 1:016x}-01"
        token = _carried.set(
            Carried(traceparent, f"{SUBMITTER}={quote(submitted_by)}" if submitted_by else None)
        )
        try:
            yield INVALID_SPAN
        finally:
            _carried.reset(token)
        return
    ctx = otel_context.Context()
    if submitted_by:
        ctx = baggage.set_baggage(SUBMITTER, submitted_by, ctx)
    attached = otel_context.attach(ctx)  # the baggage stays current under the span
    try:
        with _tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as s:
            yield s
    finally:
        otel_context.detach(attached)


@contextmanager
def span(
    name: str,
    *,
    parent: Parent | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A child span of ``parent`` (a delivered message's context) or of the current span.

    With a ``parent``, the parent's baggage (the submitter) becomes current too."""
    if not _state["enabled"]:
        carried = _carried.set(parent) if isinstance(parent, Carried) else None
        try:
            yield INVALID_SPAN
        finally:
            if carried is not None:
                _carried.reset(carried)
        return
    token = otel_context.attach(parent) if isinstance(parent, Context) else None
    try:
        with _tracer.start_as_current_span(name, kind=kind, attributes=attributes) as s:
            yield s
    finally:
        if token is not None:
            otel_context.detach(token)


def mark(name: str, *, parent: Parent | None, attributes: Mapping[str, Any] | None = None) -> None:
    """A span that ends at once: a delivery's arrival, exported even if the process dies while
    working on it (a SIGKILLed worker's open spans are lost; this one shows the attempt)."""
    if _state["enabled"]:
        context = parent if isinstance(parent, Context) else None
        _tracer.start_span(name, context=context, kind=SpanKind.CONSUMER, attributes=attributes).end()


def start(name: str, *, attributes: Mapping[str, Any] | None = None) -> Span:
    """A child of the current span, ended by the caller: for work whose start and end are in
    different calls, like a pipeline stage waiting for its result."""
    if not _state["enabled"]:
        return INVALID_SPAN
    return _tracer.start_span(name, attributes=attributes)


def use(s: Span) -> Any:
    """Make ``s`` current for a ``with`` block without ending it."""
    if not _state["enabled"]:
        return contextlib.nullcontext()
    return trace.use_span(s, end_on_exit=False)


def fail(error: str, kind: str | None = None, s: Span | None = None) -> None:
    """Mark ``s`` (the current span by default) failed, with the error and its kind (``error.type``)."""
    s = s or trace.get_current_span()
    if s.is_recording():
        s.set_status(Status(StatusCode.ERROR, error))
        if kind:
            s.set_attribute("error.type", kind)


# -- GenAI semantic conventions -------------------------------------------------------------------

#: Loom backend name -> ``gen_ai.provider.name`` (well-known values of the conventions).
_PROVIDERS = {"anthropic": "anthropic", "openai": "openai", "ollama": "ollama", "local": "llama_cpp"}


def capture_content(env: Mapping[str, str] | None = None) -> bool:
    """Whether prompts and completions go into spans (off unless explicitly enabled)."""
    value = (os.environ if env is None else env).get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return value.strip().lower() == "true"


def chat_attributes(
    backend: str, model: str, max_tokens: int | None, temperature: float | None
) -> dict[str, Any]:
    """Request attributes of one model call (``gen_ai.operation.name`` chat)."""
    provider = _PROVIDERS.get(backend, backend)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
    }
    if max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = max_tokens
    if temperature is not None:
        attrs["gen_ai.request.temperature"] = temperature
    return attrs


def record_chat_response(
    s: Span,
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    finish_reason: str | None,
    completion: str | None = None,
) -> None:
    """Response attributes of one model call: model, token usage (cached input apart), finish reason."""
    if not s.is_recording():
        return
    if model:
        s.set_attribute("gen_ai.response.model", model)
    s.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    s.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if cache_read_tokens:
        s.set_attribute("gen_ai.usage.cache_read.input_tokens", cache_read_tokens)
    if cache_write_tokens:
        s.set_attribute("gen_ai.usage.cache_creation.input_tokens", cache_write_tokens)
    if finish_reason:
        s.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
    if completion is not None:
        s.set_attribute("gen_ai.output.messages", completion)
