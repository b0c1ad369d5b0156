"""Prometheus metrics of every role, on one registry (``loom_`` prefix, bounded labels only).

Labels are worker type, tier, outcome, reason and role: all bounded by the
configuration. Task ids and tenants never become labels.

Other roles define their own metrics in their modules with :func:`counter`,
:func:`gauge` and :func:`histogram`, which register on :data:`REGISTRY` and
return the existing metric when a module is imported twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import REGISTRY as _DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

REGISTRY: CollectorRegistry = _DEFAULT_REGISTRY
PREFIX = "loom_"

#: Task durations: from sub-millisecond no-op processors to long model calls.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)

_M = TypeVar("_M", bound=MetricWrapperBase)
_defined: dict[str, MetricWrapperBase] = {}


def _define(cls: type[_M], name: str, doc: str, labels: Sequence[str], **kw: object) -> _M:
    if not name.startswith(PREFIX):
        raise ValueError(f"metric {name!r} must start with {PREFIX!r}")
    existing = _defined.get(name)
    if existing is not None:
        if not isinstance(existing, cls):
            raise ValueError(f"metric {name!r} already defined as {type(existing).__name__}")
        return existing
    metric = cls(name, doc, labelnames=tuple(labels), registry=REGISTRY, **kw)  # type: ignore[arg-type]
    _defined[name] = metric
    return metric


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    """A counter on the shared registry (name ends in ``_total`` by convention)."""
    return _define(Counter, name.removesuffix("_total"), doc, labels)


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    """A gauge on the shared registry."""
    return _define(Gauge, name, doc, labels)


def histogram(
    name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = DURATION_BUCKETS
) -> Histogram:
    """A histogram on the shared registry (``_seconds`` for durations)."""
    return _define(Histogram, name, doc, labels, buckets=tuple(buckets))


def negotiated_exposition(accept: str | None) -> tuple[bytes, str]:
    """The registry in the format a scraper asks for, and its content type: OpenMetrics (which
    carries the histograms' trace-id exemplars) when ``accept`` names it, else Prometheus text."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(REGISTRY), content_type


# -- workers ------------------------------------------------------------------------------------------

TASKS_RECEIVED = counter(
    "loom_tasks_received_total", "Task deliveries taken by workers.", ["worker_type", "tier"]
)
TASKS_COMPLETED = counter(
    "loom_tasks_completed_total", "Tasks completed by workers.", ["worker_type", "tier"]
)
TASKS_FAILED = counter(
    "loom_tasks_failed_total",
    "Task attempts that failed; outcome is retried (redelivered later) or failed (final).",
    ["worker_type", "tier", "outcome"],
)
TASKS_RELEASED = counter(
    "loom_tasks_released_total", "Tasks handed back unfinished at shutdown.", ["worker_type", "tier"]
)
TASK_DURATION = histogram(
    "loom_task_duration_seconds",
    "Time a worker spent on one task attempt.",
    ["worker_type", "tier", "outcome"],
)
TASKS_IN_FLIGHT = gauge(
    "loom_worker_tasks_in_flight", "Tasks a worker process is working on.", ["worker_type", "tier"]
)

# -- router ---------------------------------------------------------------------------------------------

ROUTED = counter("loom_router_routed_total", "Tasks routed to a worker subject.", ["worker_type", "tier"])
RATE_LIMIT_WAITS = counter(
    "loom_rate_limit_waits_total", "Tasks that had to wait for rate-limit capacity.", ["tier"]
)
RATE_LIMIT_REJECTIONS = counter(
    "loom_rate_limit_rejections_total", "Tasks dead-lettered after waiting too long for capacity.", ["tier"]
)
RATE_LIMIT_WAITING = gauge("loom_rate_limit_waiting", "Tasks waiting for rate-limit capacity now.", ["tier"])
TOKENS_AVAILABLE = gauge(
    "loom_rate_limit_tokens_available",
    "Tokens left in a tier's bucket (this router replica).",
    ["tier", "limit"],
)
TIER_IN_FLIGHT = gauge("loom_tier_in_flight", "Tasks dispatched to a tier and not yet answered.", ["tier"])
BUDGET_USED = gauge(
    "loom_budget_used",
    "Units a budget's current window holds (settled usage plus open reservations), all replicas; "
    "cost in the prices' currency. budget is scope/unit/period from the RouterPolicy.",
    ["budget"],
)
BUDGET_LIMIT = gauge("loom_budget_limit", "A budget's limit per window (cost in currency).", ["budget"])
BUDGET_EXHAUSTED = counter(
    "loom_budget_exhausted_total", "Tasks dead-lettered because a budget was exhausted.", ["budget"]
)
COST = counter(
    "loom_router_cost_total", "Cost of the settled results at the tier's price (currency).", ["tier"]
)
TASKS_WITHOUT_WORKER = gauge(
    "loom_router_tasks_without_worker",
    "Tasks stored for a worker type and tier that no worker consumes (dead letters after no_worker_wait).",
)

# -- shared ----------------------------------------------------------------------------------------------

DEAD_LETTERS = counter("loom_dead_letters_total", "Messages dead-lettered, by reason.", ["reason", "role"])
CONSUMER_LAG = gauge(
    "loom_consumer_lag", "Pending plus unacknowledged messages of a durable consumer.", ["stream", "consumer"]
)
CONSUMER_PENDING = gauge("loom_consumer_pending", "Messages not yet delivered.", ["stream", "consumer"])
CONSUMER_ACK_PENDING = gauge(
    "loom_consumer_ack_pending", "Messages delivered, not yet acknowledged.", ["stream", "consumer"]
)
NATS_CONNECTED = gauge(
    "loom_nats_connected", "1 while connected to NATS (set by the client's connection callbacks).", ["role"]
)
