"""The live terminal view of local mode, and the probes it shares with ``loom status``.

Everything shown comes from the same places an operator would look on a
cluster: each role's Prometheus ``/metrics`` and NATS' monitoring ``/jsz``
(consumer lag, dead letters). Collection is I/O; turning a snapshot into
tables is pure, so it is tested without processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loom.subjects import STREAM_DEAD_LETTER

Sample = tuple[str, dict[str, str], float]


@dataclass(frozen=True)
class ConsumerRow:
    """One durable JetStream consumer and its backlog."""

    stream: str
    name: str
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int

    @property
    def lag(self) -> int:
        """Pending plus unacknowledged: the queue depth autoscaling reads."""
        return self.pending + self.ack_pending


@dataclass
class Snapshot:
    """One refresh of everything the view shows."""

    processes: list[dict[str, Any]]
    consumers: list[ConsumerRow] = field(default_factory=list)
    dead_letters: int | None = None
    metrics: dict[str, list[Sample]] = field(default_factory=dict)
    nats_error: str | None = None
    nats_url: str = ""
    local_llm_url: str | None = None
    started_at: float | None = None
    at: float = field(default_factory=time.time)


def parse_metrics(text: str) -> list[Sample]:
    """Prometheus text exposition as (sample name, labels, value) triples."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_sum(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """Sum of a metric's samples matching ``labels``; None when the metric is absent."""
    values = [v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())]
    return sum(values) if values else None


def consumers_from_jsz(jsz: dict[str, Any]) -> tuple[list[ConsumerRow], dict[str, int]]:
    """Consumers and per-stream message counts from ``/jsz?streams=true&consumers=true``."""
    rows: list[ConsumerRow] = []
    streams: dict[str, int] = {}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            streams[stream["name"]] = int((stream.get("state") or {}).get("messages", 0))
            for c in stream.get("consumer_detail") or []:
                rows.append(
                    ConsumerRow(
                        stream=stream["name"],
                        name=c.get("name", ""),
                        pending=int(c.get("num_pending", 0)),
                        ack_pending=int(c.get("num_ack_pending", 0)),
                        redelivered=int(c.get("num_redelivered", 0)),
                        waiting=int(c.get("num_waiting", 0)),
                    )
                )
    rows.sort(key=lambda r: (r.stream, r.name))
    return rows, streams


async def fetch_jsz(client: httpx.AsyncClient, monitor_url: str) -> tuple[list[ConsumerRow], int | None]:
    """Consumers and the dead-letter count from a NATS monitoring endpoint."""
    resp = await client.get(f"{monitor_url.rstrip('/')}/jsz", params={"streams": "true", "consumers": "true"})
    resp.raise_for_status()
    rows, streams = consumers_from_jsz(resp.json())
    return rows, streams.get(STREAM_DEAD_LETTER)


async def collect(
    client: httpx.AsyncClient,
    processes: list[dict[str, Any]],
    monitor_url: str | None,
) -> Snapshot:
    """Read every role's /metrics and NATS /jsz concurrently into a snapshot."""

    async def metrics_of(proc: dict[str, Any]) -> tuple[str, list[Sample]]:
        url = proc.get("metrics_url")
        if not url or proc.get("pid") is None:
            return proc["name"], []
        try:
            resp = await client.get(url)
            return proc["name"], parse_metrics(resp.text) if resp.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return proc["name"], []

    snap = Snapshot(processes=processes)
    snap.metrics = dict(await asyncio.gather(*(metrics_of(p) for p in processes)))
    if monitor_url:
        try:
            snap.consumers, snap.dead_letters = await fetch_jsz(client, monitor_url)
        except (httpx.HTTPError, ValueError) as exc:
            snap.nats_error = f"NATS monitoring at {monitor_url} unreachable: {exc}"
    else:
        snap.nats_error = "NATS monitoring URL unknown (set --nats-monitor-url)"
    return snap


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _uptime(started: float | None, now: float) -> str:
    if not started:
        return "-"
    secs = int(now - started)
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


_STATE_STYLE = {
    "ready": "green",
    "running": "yellow",
    "starting": "yellow",
    "backoff": "red",
    "stopping": "magenta",
}


def processes_table(snap: Snapshot) -> Table:
    """Workers, tiers and every other process with state, restarts and task counts."""
    table = Table(title="processes", expand=True)
    table.add_column("process", no_wrap=True, min_width=22)
    for col in ("tier", "state", "pid", "up", "restarts", "busy", "done", "failed"):
        table.add_column(
            col, justify="right" if col in ("pid", "restarts", "busy", "done", "failed") else "left"
        )
    for p in snap.processes:
        samples = snap.metrics.get(p["name"], [])
        state = str(p.get("state", "?"))
        is_worker = p.get("role") == "worker"
        table.add_row(
            p["name"],
            str(p.get("tier") or ""),
            Text(state, style=_STATE_STYLE.get(state, "")),
            str(p.get("pid") or "-"),
            _uptime(p.get("started_at") if p.get("pid") else None, snap.at),
            Text(str(p.get("restarts", 0)), style="red" if p.get("restarts") else ""),
            _num(metric_sum(samples, "loom_worker_tasks_in_flight")) if is_worker else "",
            _num(metric_sum(samples, "loom_tasks_completed_total")) if is_worker else "",
            _num(metric_sum(samples, "loom_tasks_failed_total")) if is_worker else "",
        )
    return table


def tiers_table(snap: Snapshot) -> Table:
    """Per-tier routing and rate-limit state, from the router's metrics."""
    table = Table(title="tiers (router)", expand=True)
    for col in ("tier", "routed", "in flight", "waiting for limit", "limit rejections", "bucket left"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    router = next((snap.metrics.get(p["name"], []) for p in snap.processes if p.get("role") == "router"), [])
    for tier in sorted({lab["tier"] for _, lab, _ in router if "tier" in lab}):
        buckets = [
            f"{lab.get('limit', '?')}={_num(v)}"
            for n, lab, v in router
            if n == "loom_rate_limit_tokens_available" and lab.get("tier") == tier
        ]
        table.add_row(
            tier,
            _num(metric_sum(router, "loom_router_routed_total", tier=tier)),
            _num(metric_sum(router, "loom_tier_in_flight", tier=tier)),
            _num(metric_sum(router, "loom_rate_limit_waiting", tier=tier)),
            _num(metric_sum(router, "loom_rate_limit_rejections_total", tier=tier)),
            ", ".join(buckets) or "unlimited",
        )
    return table


def consumers_table(snap: Snapshot) -> Table:
    """JetStream consumers with their lag (pending + unacknowledged) and redeliveries."""
    table = Table(title="queues (JetStream consumers)", expand=True)
    table.add_column("stream", no_wrap=True, min_width=13)
    table.add_column("consumer", no_wrap=True, min_width=22)
    for col in ("pending", "unacked", "lag", "redelivered"):
        table.add_column(col, justify="right")
    for c in snap.consumers:
        table.add_row(
            c.stream,
            c.name,
            str(c.pending),
            str(c.ack_pending),
            Text(str(c.lag), style="yellow" if c.lag else ""),
            str(c.redelivered),
        )
    return table


def header(snap: Snapshot) -> Text:
    """One line: where NATS and the local model are, uptime and dead letters."""
    line = Text()
    line.append("loom up ", style="bold")
    line.append(f"nats {snap.nats_url}  ")
    if snap.local_llm_url:
        line.append(f"local model {snap.local_llm_url}  ")
    line.append(f"up {_uptime(snap.started_at, snap.at)}  ")
    dead = snap.dead_letters
    line.append(f"dead letters {'-' if dead is None else dead}", style="red bold" if dead else "")
    if snap.nats_error:
        line.append(f"\n{snap.nats_error}", style="red")
    line.append("\nCtrl-C drains and stops", style="dim")
    return line


def render(snap: Snapshot) -> RenderableType:
    """The whole view for one snapshot."""
    return Group(header(snap), processes_table(snap), tiers_table(snap), consumers_table(snap))


async def run_view(
    processes: Callable[[], list[dict[str, Any]]],
    *,
    monitor_url: str | None,
    nats_url: str,
    local_llm_url: str | None,
    started_at: float,
    stop: asyncio.Event,
    interval: float = 1.0,
) -> None:
    """Refresh the view every ``interval`` seconds until ``stop`` is set."""
    async with httpx.AsyncClient(timeout=1.5) as client:
        with Live(
            render(Snapshot(processes=processes(), nats_url=nats_url)),
            refresh_per_second=4,
            screen=False,
            transient=False,
        ) as live:
            while not stop.is_set():
                snap = await collect(client, processes(), monitor_url)
                snap.nats_url, snap.local_llm_url, snap.started_at = nats_url, local_llm_url, started_at
                live.update(render(snap))
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    continue
