"""Build the Loom Grafana dashboard: throughput, latency, lag, replicas, rate limits and dead letters
per worker and tier, plus model calls, pipelines and the operator.

Writes deploy/grafana/loom-dashboard.json and the chart's copy helm/loom/dashboards/loom.json
(shipped as a ConfigMap for the Grafana sidecar). Run ``python deploy/grafana/dashboard.py``;
a test fails when either file drifts from this builder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUTPUTS = (HERE / "loom-dashboard.json", REPO / "helm" / "loom" / "dashboards" / "loom.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
# Filters every worker-side query by the dashboard variables.
W = 'namespace=~"$namespace", worker_type=~"$worker_type", tier=~"$tier"'
T = 'namespace=~"$namespace", tier=~"$tier"'
N = 'namespace=~"$namespace"'
RECEIVED_IN_NS = 'loom_tasks_received_total{namespace=~"$namespace"}'


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(
    title: str,
    exprs: list[tuple[str, str]],
    unit: str,
    grid: tuple[int, int, int, int],
    description: str,
    kind: str = "timeseries",
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}
        },
        "targets": [target(e, legend, chr(ord("A") + i)) for i, (e, legend) in enumerate(exprs)],
    }


def row(title: str, y: int) -> dict[str, Any]:
    grid = {"x": 0, "y": y, "w": 24, "h": 1}
    return {"type": "row", "title": title, "collapsed": False, "gridPos": grid, "panels": []}


def variable(name: str, label: str, query: str, include_all: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": include_all,
        "multi": include_all,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"} if include_all else {},
        "sort": 1,
    }


def quantile(q: str, metric: str, by: str, flt: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{flt}}}[$__rate_interval])))"


def rate(metric: str, flt: str) -> str:
    return f"rate({metric}{{{flt}}}[$__rate_interval])"


def sum_by(labels: str, expr: str) -> str:
    return f"sum by ({labels}) ({expr})"


WT = "{{worker_type}}/{{tier}}"
BT = "{{backend}}/{{tier}}"
WT_LABELS = "worker_type, tier"
BT_LABELS = "backend, tier"
SCALER = 'worker=~"$worker_type", tier=~"$tier"'


def worker_panels() -> list[dict[str, Any]]:
    return [
        row("Workers (per worker type and tier)", 0),
        panel(
            "Throughput",
            [
                (sum_by(WT_LABELS, rate("loom_tasks_completed_total", W)), f"{WT} done"),
                (
                    sum_by(WT_LABELS, rate("loom_tasks_failed_total", W + ', outcome="failed"')),
                    f"{WT} failed",
                ),
            ],
            "reqps",
            (0, 1, 12, 8),
            "Tasks completed and finally failed per second "
            "(loom_tasks_completed_total, loom_tasks_failed_total).",
        ),
        panel(
            "Task latency p50 / p95 / p99",
            [
                (quantile(q, "loom_task_duration_seconds", WT_LABELS, W), f"{WT} p{q[2:]}")
                for q in ("0.5", "0.95", "0.99")
            ],
            "s",
            (12, 1, 12, 8),
            "Time a worker spends on one task attempt (loom_task_duration_seconds).",
        ),
        panel(
            "Consumer lag",
            [
                (f'max by (consumer) (loom_consumer_lag{{{N}, stream="LOOM_TASKS"}})', "{{consumer}}"),
                (
                    f'max by (consumer) (loom_consumer_lag{{{N}, stream="LOOM_INCOMING"}})',
                    "router {{consumer}}",
                ),
            ],
            "short",
            (0, 9, 8, 8),
            "Pending plus unacknowledged tasks per durable consumer: worker-<type>-<tier> and the router "
            "(loom_consumer_lag).",
        ),
        panel(
            "Replicas",
            [
                (f"count by ({WT_LABELS}) (loom_worker_tasks_in_flight{{{W}}})", f"{WT} running"),
                (
                    f"max by (worker, tier) (loom_operator_scaler_desired_replicas{{{SCALER}}})",
                    "{{worker}}/{{tier}} desired",
                ),
            ],
            "short",
            (8, 9, 8, 8),
            "Worker processes reporting metrics, and the replicas the built-in scaler wants "
            "(loom_worker_tasks_in_flight, loom_operator_scaler_desired_replicas).",
        ),
        panel(
            "Tasks in flight",
            [(sum_by(WT_LABELS, f"loom_worker_tasks_in_flight{{{W}}}"), WT)],
            "short",
            (16, 9, 8, 8),
            "Tasks worker processes are working on now (loom_worker_tasks_in_flight).",
        ),
        panel(
            "Dead letters per minute",
            [
                (sum_by("role, reason", rate("loom_dead_letters_total", N)) + " * 60", "{{role}} {{reason}}"),
                (
                    sum_by(
                        "loom_dev_worker, loom_dev_tier, reason",
                        rate("loom_dead_letters_total", N + ', role="worker"'),
                    )
                    + " * 60",
                    "{{loom_dev_worker}}/{{loom_dev_tier}} {{reason}}",
                ),
            ],
            "short",
            (0, 17, 12, 8),
            "Dead letters by role and reason, and per worker and tier from the pod labels "
            "(loom_dead_letters_total).",
        ),
        panel(
            "Retries and redeliveries",
            [
                (
                    sum_by(WT_LABELS, rate("loom_tasks_failed_total", W + ', outcome="retried"')),
                    f"{WT} retried",
                ),
                (sum_by(WT_LABELS, rate("loom_tasks_released_total", W)), f"{WT} released"),
            ],
            "reqps",
            (12, 17, 12, 8),
            "Task attempts that will be redelivered, and tasks handed back at shutdown.",
        ),
    ]


def router_panels() -> list[dict[str, Any]]:
    return [
        row("Router and rate limits (per tier)", 25),
        panel(
            "Routed",
            [(sum_by(WT_LABELS, rate("loom_router_routed_total", W)), WT)],
            "reqps",
            (0, 26, 8, 8),
            "Tasks routed to a worker subject (loom_router_routed_total).",
        ),
        panel(
            "Rate-limit waits and rejections",
            [
                (sum_by("tier", rate("loom_rate_limit_waits_total", T)), "{{tier}} waited"),
                (sum_by("tier", rate("loom_rate_limit_rejections_total", T)), "{{tier}} rejected"),
            ],
            "reqps",
            (8, 26, 8, 8),
            "Tasks that waited for capacity, and tasks dead-lettered after onLimit.maxWaitSeconds.",
        ),
        panel(
            "Waiting for capacity / in flight",
            [
                (sum_by("tier", f"loom_rate_limit_waiting{{{T}}}"), "{{tier}} waiting"),
                (sum_by("tier", f"loom_tier_in_flight{{{T}}}"), "{{tier}} in flight"),
                (
                    sum_by("tier, limit", f"loom_rate_limit_tokens_available{{{T}}}"),
                    "{{tier}} {{limit}} tokens left",
                ),
            ],
            "short",
            (16, 26, 8, 8),
            "Tasks waiting for rate-limit capacity, tasks in flight per tier, tokens left in each bucket.",
        ),
    ]


def model_panels() -> list[dict[str, Any]]:
    return [
        row("Model calls (per backend and tier)", 34),
        panel(
            "Model calls by outcome",
            [(sum_by(BT_LABELS + ", outcome", rate("loom_llm_requests_total", T)), BT + " {{outcome}}")],
            "reqps",
            (0, 35, 8, 8),
            "Model calls per second by outcome: ok or the provider error kind (loom_llm_requests_total).",
        ),
        panel(
            "Model call latency p95",
            [(quantile("0.95", "loom_llm_request_duration_seconds", BT_LABELS, T), BT)],
            "s",
            (8, 35, 8, 8),
            "Duration of one model call attempt (loom_llm_request_duration_seconds).",
        ),
        panel(
            "Tokens and circuit breakers",
            [
                (
                    sum_by(BT_LABELS + ", kind", rate("loom_llm_tokens_total", T)) + " * 60",
                    BT + " {{kind}} tokens/min",
                ),
                (f"max by ({BT_LABELS}) (loom_llm_circuit_open{{{T}}})", BT + " breaker open"),
                (
                    sum_by(BT_LABELS + ", reason", rate("loom_llm_retries_total", T)),
                    BT + " retries {{reason}}",
                ),
            ],
            "short",
            (16, 35, 8, 8),
            "Tokens per minute, circuit breaker state (1 = open) and provider retries.",
        ),
    ]


def pipeline_panels() -> list[dict[str, Any]]:
    return [
        row("Pipelines", 43),
        panel(
            "Goals",
            [
                (
                    sum_by("pipeline, outcome", rate("loom_goals_completed_total", N)),
                    "{{pipeline}} {{outcome}}",
                ),
                (sum_by("pipeline", f"loom_goals_in_flight{{{N}}}"), "{{pipeline}} in flight"),
            ],
            "short",
            (0, 44, 12, 8),
            "Goals finished per second by outcome, and goals in flight.",
        ),
        panel(
            "Goal latency p95",
            [(quantile("0.95", "loom_goal_duration_seconds", "pipeline", N), "{{pipeline}}")],
            "s",
            (12, 44, 12, 8),
            "Time from a goal's first start to its result (loom_goal_duration_seconds).",
        ),
    ]


def schedule_panels() -> list[dict[str, Any]]:
    return [
        row("Schedules", 52),
        panel(
            "Schedule fires, missed slots and dispatch errors",
            [
                (
                    sum_by("schedule", rate("loom_schedule_fires_total", N)) + " * 60",
                    "{{schedule}} fired/min",
                ),
                (
                    sum_by("schedule", rate("loom_schedule_missed_total", N)) + " * 60",
                    "{{schedule}} missed/min",
                ),
                (
                    sum_by("schedule", rate("loom_schedule_dispatch_errors_total", N)) + " * 60",
                    "{{schedule}} errors/min",
                ),
            ],
            "short",
            (0, 53, 24, 8),
            "Slots dispatched, skipped under the missed-fire policy, and failed publishes (loom_schedule_*).",
        ),
    ]


def operator_panels() -> list[dict[str, Any]]:
    return [
        row("Operator", 61),
        panel(
            "Reconciles",
            [(sum_by("kind, outcome", rate("loom_operator_reconciles_total", "")), "{{kind}} {{outcome}}")],
            "reqps",
            (0, 62, 8, 8),
            "Reconciles by kind and outcome (loom_operator_reconciles_total).",
        ),
        panel(
            "Reconcile duration p95",
            [(quantile("0.95", "loom_operator_reconcile_duration_seconds", "kind", ""), "{{kind}}")],
            "s",
            (8, 62, 8, 8),
            "Time to render, apply and report one resource (loom_operator_reconcile_duration_seconds).",
        ),
        panel(
            "Scaler: observed lag and errors",
            [
                (
                    f"max by (worker, tier) (loom_operator_scaler_observed_lag{{{SCALER}}})",
                    "{{worker}}/{{tier}} lag",
                ),
                (sum_by("stage", rate("loom_operator_scaler_errors_total", "")), "errors {{stage}}"),
            ],
            "short",
            (16, 62, 8, 8),
            "Consumer lag as read by the built-in scaler, and its failed passes.",
        ),
    ]


def panels() -> list[dict[str, Any]]:
    out = (
        worker_panels()
        + router_panels()
        + model_panels()
        + pipeline_panels()
        + schedule_panels()
        + operator_panels()
    )
    for i, p in enumerate(out, start=1):
        p["id"] = i
    return out


def dashboard() -> dict[str, Any]:
    return {
        "uid": "loom-overview",
        "title": "Loom",
        "description": "Loom workers, router, model calls, pipelines and operator. "
        "Generated by deploy/grafana/dashboard.py.",
        "tags": ["loom", "nats", "llm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("namespace", "Namespace", "label_values(loom_tasks_received_total, namespace)"),
                variable("worker_type", "Worker type", f"label_values({RECEIVED_IN_NS}, worker_type)"),
                variable("tier", "Tier", f"label_values({RECEIVED_IN_NS}, tier)"),
            ]
        },
        "panels": panels(),
    }


def rendered() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    text = rendered()
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
