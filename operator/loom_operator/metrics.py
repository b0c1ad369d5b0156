"""Operator metrics and the /metrics + /healthz endpoint (one port, OPERATOR-CONTRACT.md: 8080)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "loom_operator_reconciles_total",
    "Reconciles by kind and outcome (ok, progressing, stalled, retry, error).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "loom_operator_reconcile_duration_seconds",
    "Time to render, apply and report one resource.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SCALER_LAG = Gauge(
    "loom_operator_scaler_observed_lag",
    "Pending + unacknowledged tasks on a worker tier's consumer, as last read by the built-in scaler.",
    ["worker", "tier"],
    registry=REGISTRY,
)
SCALER_DESIRED = Gauge(
    "loom_operator_scaler_desired_replicas",
    "Replicas the built-in scaler decided for a worker tier.",
    ["worker", "tier"],
    registry=REGISTRY,
)
SCALER_ERRORS = Counter(
    "loom_operator_scaler_errors_total",
    "Scaler passes that could not read lag or apply a decision.",
    ["stage"],
    registry=REGISTRY,
)


def forget_tier(worker: str, tier: str) -> None:
    """Drop a tier's scaler series (the tier or worker is gone)."""
    for gauge in (SCALER_LAG, SCALER_DESIRED):
        try:
            gauge.remove(worker, tier)
        except KeyError:
            continue


async def start_server(port: int, healthy: Callable[[], bool], host: str = "0.0.0.0") -> web.AppRunner:
    """Serve /metrics and /healthz (200 while ``healthy()``, else 503); returns the runner to clean up."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
