"""Trace context in headers, the off-by-default decision, and trace ids in log lines (no exporter)."""

from __future__ import annotations

import json
import logging

import pytest

from loom import tracing
from loom.logs import JsonFormatter


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_tracing_is_off_unless_an_exporter_is_configured(env: dict[str, str], expected: str | None) -> None:
    assert tracing.exporter_configured(env) == expected


def test_an_unknown_exporter_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        tracing.exporter_configured({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_setup_without_exporter_keeps_the_no_op_tracer() -> None:
    assert tracing.setup("loom-test", env={}) is False
    assert not tracing.enabled()


def test_a_root_starts_a_trace_that_travels_in_headers_with_the_submitter() -> None:
    assert tracing.inject(None) is None  # outside any trace nothing is added
    with tracing.root("submit", submitted_by="tenant_acme"):
        trace_id = tracing.current_trace_id()
        headers = tracing.inject({"Nats-Msg-Id": "x"})
        assert tracing.exemplar() is None  # this process exports nothing: no exemplar points at it
    assert trace_id is not None and len(trace_id) == 32
    assert headers is not None and headers["Nats-Msg-Id"] == "x"
    # flagged sampled: roles that export spans record the trace though this process records nothing
    assert headers["traceparent"].startswith(f"00-{trace_id}-") and headers["traceparent"].endswith("-01")
    assert "loom.submitter=tenant_acme" in headers["baggage"]
    assert tracing.current_trace_id() is None and tracing.submitter() is None

    # The consumer side: a child of the delivered context, with its baggage.
    with tracing.span("task", parent=tracing.extract(headers)):
        assert tracing.current_trace_id() == trace_id
        assert tracing.submitter() == "tenant_acme"
        forwarded = tracing.inject(None)
    assert forwarded is not None and forwarded["traceparent"].split("-")[1] == trace_id


def test_a_forwarded_message_keeps_the_context_it_came_with() -> None:
    original = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    with tracing.root("other"):
        assert tracing.inject(original) == original


def test_a_message_without_context_starts_none() -> None:
    assert tracing.extract(None) is None
    assert tracing.extract({"Nats-Msg-Id": "x"}) is None


def test_json_log_lines_carry_trace_and_span_ids_inside_a_trace() -> None:
    fmt = JsonFormatter()

    def line() -> dict[str, object]:
        record = logging.LogRecord("loom.test", logging.INFO, __file__, 1, "hello", None, None)
        return dict(json.loads(fmt.format(record)))

    assert "trace_id" not in line()
    with tracing.root("submit"):
        ids = tracing.current_ids()
        doc = line()
    assert ids is not None
    assert (doc["trace_id"], doc["span_id"]) == ids


def test_chat_attributes_follow_the_genai_conventions() -> None:
    attrs = tracing.chat_attributes("local", "smollm2", 256, None)
    assert attrs == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "llama_cpp",
        "gen_ai.system": "llama_cpp",
        "gen_ai.request.model": "smollm2",
        "gen_ai.request.max_tokens": 256,
    }
    assert tracing.capture_content({}) is False
    assert tracing.capture_content({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}) is True


_EXEMPLAR_SCRIPT = """
import sys
from loom import metrics, tracing
assert tracing.setup("loom-test")  # OTEL_TRACES_EXPORTER=console: spans recorded and exported
with tracing.span("task"):
    trace_id = tracing.current_trace_id()
    metrics.TASK_DURATION.labels("exemplar-test", "local", "completed").observe(0.42, tracing.exemplar())
body, content_type = metrics.negotiated_exposition("application/openmetrics-text; version=1.0.0")
plain, plain_type = metrics.negotiated_exposition(None)
head = [trace_id, content_type, plain_type, str(int(b"trace_id" in plain))]
sys.stderr.write("\\n".join(head) + "\\n" + body.decode())
"""


def test_durations_carry_the_trace_as_an_exemplar_in_openmetrics_when_spans_are_exported() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console"}
    done = subprocess.run(
        [sys.executable, "-c", _EXEMPLAR_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    trace_id, content_type, plain_type, plain_has_ids, *body = done.stderr.splitlines()
    assert content_type.startswith("application/openmetrics-text") and plain_type.startswith("text/plain")
    buckets = [ln for ln in body if ln.startswith("loom_task_duration_seconds_bucket")]
    line = next(ln for ln in buckets if 'worker_type="exemplar-test"' in ln and "#" in ln)
    assert f'trace_id="{trace_id}"' in line and "0.42" in line
    assert plain_has_ids == "0"  # the Prometheus text format has no exemplars


def test_no_exemplar_when_this_process_exports_no_spans() -> None:
    with tracing.root("submit"):
        assert tracing.current_trace_id() is not None
        assert tracing.exemplar() is None


def test_a_malformed_context_is_ignored_and_foreign_baggage_is_passed_on() -> None:
    assert tracing.extract({"traceparent": "00-nothex-xyz-01"}) is None
    headers = {
        "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
        "baggage": "team=x,loom.submitter=a%20b",
    }
    with tracing.span("task", parent=tracing.extract(headers)):
        assert tracing.current_ids() == ("ab" * 16, "cd" * 8)
        assert tracing.submitter() == "a b"
        assert tracing.inject(None) == headers
