"""A real trace backend for the tracing tests: Jaeger (all-in-one, in-memory storage) on free
loopback ports, receiving OTLP/HTTP and answering its query HTTP API.

The binary comes from ``hack/tracing/build.sh`` (the ``tracing`` step of ``hack/test-setup.sh``);
nothing is built here.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.nats_server import free_port
from tests.support.setup_outputs import checked_output

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "hack" / "tracing" / "build.sh"

_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    # It would trace itself to localhost:4317, where nothing listens here, and spend 10 s of every
    # shutdown trying to flush those spans.
    enable_tracing: false
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"""


@functools.cache
def jaeger_binary() -> str:
    """Path of the jaeger binary (``LOOM_JAEGER`` first)."""
    explicit = os.environ.get("LOOM_JAEGER")
    if explicit:
        return explicit
    return checked_output(BUILD_SH, "tracing")


@dataclass
class Span:
    """One span as Jaeger's query API returns it."""

    span_id: str
    parent_id: str | None
    name: str
    service: str
    tags: dict[str, Any]


@dataclass
class Jaeger:
    """One Jaeger process."""

    otlp_port: int = field(default_factory=free_port)
    query_port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="loom-jaeger-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def otlp_endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to (OTLP/HTTP)."""
        return f"http://127.0.0.1:{self.otlp_port}"

    def start(self, timeout: float = 60.0) -> Jaeger:
        config = self.dir / "config.yaml"
        config.write_text(
            _CONFIG.format(
                health=free_port(), query=self.query_port, query_grpc=free_port(), otlp=self.otlp_port
            )
        )
        log = open(self.dir / "jaeger.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [jaeger_binary(), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jaeger exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                self._get("/api/services")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"jaeger not answering within {timeout}s: {self.log()[-3000:]}")

    def log(self) -> str:
        path = self.dir / "jaeger.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.query_port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def trace(self, trace_id: str) -> list[Span]:
        """Every span stored for ``trace_id`` (empty when none arrived yet)."""
        try:
            doc = self._get(f"/api/traces/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        out: list[Span] = []
        for t in doc.get("data") or []:
            services = {k: v["serviceName"] for k, v in (t.get("processes") or {}).items()}
            for s in t["spans"]:
                parents = [r["spanID"] for r in s.get("references") or [] if r["refType"] == "CHILD_OF"]
                out.append(
                    Span(
                        span_id=s["spanID"],
                        parent_id=parents[0] if parents else None,
                        name=s["operationName"],
                        service=services.get(s["processID"], "?"),
                        tags={tag["key"]: tag["value"] for tag in s.get("tags") or []},
                    )
                )
        return out


@pytest.fixture
def jaeger() -> Iterator[Jaeger]:
    """A started Jaeger, stopped after the test."""
    j = Jaeger().start()
    try:
        yield j
    finally:
        j.stop()
