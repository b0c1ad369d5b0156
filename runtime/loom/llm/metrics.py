"""Prometheus metrics for model calls (default registry), bound once per (backend, tier)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from loom.llm.base import Usage

REQUESTS = Counter(
    "loom_llm_requests_total",
    "Model calls by backend, tier and outcome (ok or the provider error kind).",
    ["backend", "tier", "outcome"],
)
TOKENS = Counter(
    "loom_llm_tokens_total",
    "Tokens consumed by model calls, by kind: prompt (fresh input, full rate), cache_read (input "
    "read from the provider's prompt cache), cache_write (input written to it) or completion.",
    ["backend", "tier", "kind"],
)
DURATION = Histogram(
    "loom_llm_request_duration_seconds",
    "Duration of one model call (one attempt).",
    ["backend", "tier"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RETRIES = Counter(
    "loom_llm_retries_total",
    "Model calls retried after a retryable provider error.",
    ["backend", "tier", "reason"],
)
CIRCUIT_OPEN = Gauge(
    "loom_llm_circuit_open",
    "1 while the provider's circuit breaker is open (calls fail fast), else 0.",
    ["backend", "tier"],
)

FALLBACKS = Counter(
    "loom_llm_fallback_total",
    "Model calls answered by a fallback tier because the worker's own tier was unavailable.",
    ["tier", "answered_by"],
)
FALLBACK_EXHAUSTED = Counter(
    "loom_llm_fallback_exhausted_total",
    "Model calls for which the tier and every fallback tier were unavailable.",
    ["tier"],
)


class CallMetrics:
    """The metric children of one (backend, tier), resolved once so each call only increments."""

    def __init__(self, backend: str, tier: str):
        self.backend = backend
        self.tier = tier
        self._ok = REQUESTS.labels(backend, tier, "ok")
        self._prompt = TOKENS.labels(backend, tier, "prompt")
        self._completion = TOKENS.labels(backend, tier, "completion")
        self._cache_read = TOKENS.labels(backend, tier, "cache_read")
        self._cache_write = TOKENS.labels(backend, tier, "cache_write")
        self._duration = DURATION.labels(backend, tier)
        self._circuit = CIRCUIT_OPEN.labels(backend, tier)
        self._circuit.set(0)

    def success(self, seconds: float, usage: Usage) -> None:
        """Record a successful call."""
        self._ok.inc()
        self._duration.observe(seconds)
        if usage.prompt_tokens:
            self._prompt.inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self._completion.inc(usage.completion_tokens)
        if usage.cache_read_tokens:
            self._cache_read.inc(usage.cache_read_tokens)
        if usage.cache_write_tokens:
            self._cache_write.inc(usage.cache_write_tokens)

    def failure(self, seconds: float, kind: str) -> None:
        """Record a failed call by error kind (a bounded label set)."""
        REQUESTS.labels(self.backend, self.tier, kind).inc()
        self._duration.observe(seconds)

    def retry(self, kind: str) -> None:
        """Record that a failed call is being retried."""
        RETRIES.labels(self.backend, self.tier, kind).inc()

    def circuit(self, is_open: bool) -> None:
        """Publish the breaker state."""
        self._circuit.set(1 if is_open else 0)
