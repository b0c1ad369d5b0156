"""The live view's pure parts: metrics and /jsz parsing, and the tables they become."""

from __future__ import annotations

from rich.console import Console

from loom.local.view import (
    Snapshot,
    consumers_from_jsz,
    metric_sum,
    parse_metrics,
    render,
)

METRICS = """
# HELP loom_worker_tasks_in_flight Tasks a worker process is working on.
# TYPE loom_worker_tasks_in_flight gauge
loom_worker_tasks_in_flight{tier="local",worker_type="doc-summarizer"} 2.0
# HELP loom_tasks_completed_total Tasks completed by workers.
# TYPE loom_tasks_completed_total counter
loom_tasks_completed_total{tier="local",worker_type="doc-summarizer"} 7.0
"""

ROUTER_METRICS = """
# TYPE loom_router_routed_total counter
loom_router_routed_total{tier="local",worker_type="a"} 5.0
loom_router_routed_total{tier="local",worker_type="b"} 4.0
# TYPE loom_rate_limit_waiting gauge
loom_rate_limit_waiting{tier="local"} 3.0
# TYPE loom_rate_limit_tokens_available gauge
loom_rate_limit_tokens_available{limit="requests",tier="local"} 12.0
# TYPE loom_tier_in_flight gauge
loom_tier_in_flight{tier="local"} 6.0
"""

JSZ = {
    "account_details": [
        {
            "stream_detail": [
                {
                    "name": "LOOM_TASKS",
                    "state": {"messages": 5},
                    "consumer_detail": [
                        {
                            "name": "worker-doc-summarizer-local",
                            "num_pending": 3,
                            "num_ack_pending": 2,
                            "num_redelivered": 1,
                            "num_waiting": 1,
                        },
                    ],
                },
                {"name": "LOOM_DEAD_LETTER", "state": {"messages": 4}},
            ]
        }
    ]
}


def test_metrics_are_parsed_and_summed_by_label() -> None:
    samples = parse_metrics(ROUTER_METRICS)
    assert metric_sum(samples, "loom_router_routed_total", tier="local") == 9.0
    assert metric_sum(samples, "loom_router_routed_total", worker_type="b") == 4.0
    assert metric_sum(samples, "loom_router_routed_total", tier="gold") is None
    assert metric_sum(samples, "loom_missing") is None


def test_jsz_gives_consumer_lag_and_stream_counts() -> None:
    rows, streams = consumers_from_jsz(JSZ)
    assert [(r.name, r.pending, r.ack_pending, r.lag, r.redelivered) for r in rows] == [
        ("worker-doc-summarizer-local", 3, 2, 5, 1)
    ]
    assert streams == {"LOOM_TASKS": 5, "LOOM_DEAD_LETTER": 4}


def test_render_shows_processes_tiers_queues_and_dead_letters() -> None:
    rows, streams = consumers_from_jsz(JSZ)
    snap = Snapshot(
        processes=[
            {"name": "router", "role": "router", "state": "ready", "pid": 10, "restarts": 0},
            {
                "name": "worker-doc-summarizer-local",
                "role": "worker",
                "tier": "local",
                "state": "backoff",
                "pid": None,
                "restarts": 2,
            },
        ],
        consumers=rows,
        dead_letters=streams["LOOM_DEAD_LETTER"],
        metrics={
            "router": parse_metrics(ROUTER_METRICS),
            "worker-doc-summarizer-local": parse_metrics(METRICS),
        },
        nats_url="nats://127.0.0.1:4222",
    )
    console = Console(width=200, record=True)
    console.print(render(snap))
    text = console.export_text()
    assert "dead letters 4" in text
    assert "worker-doc-summarizer-local" in text and "backoff" in text
    tier_line = next(line for line in text.splitlines() if line.strip().startswith("│ local "))
    cells = [c.strip() for c in tier_line.split("│")[1:-1]]
    assert cells == ["local", "9", "6", "3", "-", "requests=12"]
    queue_line = next(line for line in text.splitlines() if "LOOM_TASKS" in line)
    assert [c.strip() for c in queue_line.split("│")[1:-1]] == [
        "LOOM_TASKS",
        "worker-doc-summarizer-local",
        "3",
        "2",
        "5",
        "1",
    ]
    worker_line = next(line for line in text.splitlines() if "backoff" in line)
    cells = [c.strip() for c in worker_line.split("│")[1:-1]]
    assert cells == ["worker-doc-summarizer-local", "local", "backoff", "-", "-", "2", "2", "7", "-"]
