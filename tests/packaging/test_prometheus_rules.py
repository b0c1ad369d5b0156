"""The chart's alert rules and the dashboard's queries, checked and unit-tested by Prometheus's promtool.

``promtool check rules`` parses every expression and annotation template;
``promtool test rules`` feeds synthetic series through the real rule engine and asserts
which alerts fire, with which labels, at which time.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import chart, helm_bin, promtool_bin
from tests.support.chart import VALUE_SETS, one


def series(metric: str, namespace: str = "loom", **labels: str) -> str:
    """A promtool input series selector."""
    body = ", ".join(f'{k}="{v}"' for k, v in {"namespace": namespace, **labels}.items())
    return f"{metric}{{{body}}}"


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return promtool_bin.promtool()
    except promtool_bin.PromtoolUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def rule_groups(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    try:
        helm_bin.helm()
    except helm_bin.ToolUnavailable as exc:
        pytest.fail(str(exc))
    objects = chart.render(VALUE_SETS["monitoring"], tmp_path_factory.mktemp("rules"))
    groups: list[dict[str, Any]] = one(objects, "PrometheusRule")["spec"]["groups"]
    return groups


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_rules_parse(promtool: str, rule_groups: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
    proc = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 8 rules found" in proc.stdout


def _alert(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"exp_labels": {"alertname": name, **labels}}


def test_alerts_fire_on_the_right_series(
    promtool: str, rule_groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Annotations are checked by `check rules`; the unit test compares labels and timing.
    stripped = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in rule_groups
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": stripped}))
    worker_lag = {"namespace": "loom", "stream": "LOOM_TASKS", "consumer": "worker-summarizer-standard"}
    tests = [
        {
            "interval": "1m",
            "input_series": [
                # Grows by 100 per minute from 500: above 1000 after 6m, so firing once 10m more have passed.
                {
                    "series": series(
                        "loom_consumer_lag", stream="LOOM_TASKS", consumer="worker-summarizer-standard"
                    ),
                    "values": "500+100x40",
                },
                {
                    "series": series(
                        "loom_consumer_lag", stream="LOOM_TASKS", consumer="worker-classifier-local"
                    ),
                    "values": "10x40",
                },
                {
                    "series": series("loom_consumer_lag", stream="LOOM_INCOMING", consumer="router"),
                    "values": "5000x40",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "LoomConsumerLagHigh", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "LoomConsumerLagHigh",
                    "exp_alerts": [_alert("LoomConsumerLagHigh", {**worker_lag, "severity": "warning"})],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series(
                        "loom_dead_letters_total", role="worker", reason="invalid_output", pod="w-1"
                    ),
                    "values": "0+10x30",
                },
                {
                    "series": series(
                        "loom_dead_letters_total", role="router", reason="rate_limited", pod="r-1"
                    ),
                    "values": "7x30",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "LoomDeadLettersGrowing", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "LoomDeadLettersGrowing",
                    "exp_alerts": [
                        _alert(
                            "LoomDeadLettersGrowing",
                            {
                                "namespace": "loom",
                                "role": "worker",
                                "reason": "invalid_output",
                                "severity": "warning",
                            },
                        )
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series("loom_rate_limit_rejections_total", tier="standard", pod="r-1"),
                    "values": "0+3x30",
                },
                {
                    "series": series("loom_rate_limit_rejections_total", tier="standard", pod="r-2"),
                    "values": "0+2x30",
                },
                {
                    "series": series("loom_rate_limit_rejections_total", tier="local", pod="r-1"),
                    "values": "0+0x30",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "LoomRateLimitRejections",
                    "exp_alerts": [
                        _alert(
                            "LoomRateLimitRejections",
                            {"namespace": "loom", "tier": "standard", "severity": "warning"},
                        )
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series(
                        "loom_llm_circuit_open", backend="anthropic", tier="frontier", pod="w-1"
                    ),
                    "values": "0 0 1 1 1 1 1 1 1 1",
                },
                {
                    "series": series("loom_llm_circuit_open", backend="local", tier="local", pod="w-2"),
                    "values": "0x10",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "LoomCircuitBreakerOpen", "exp_alerts": []},
                {
                    "eval_time": "6m",
                    "alertname": "LoomCircuitBreakerOpen",
                    "exp_alerts": [
                        _alert(
                            "LoomCircuitBreakerOpen",
                            {
                                "namespace": "loom",
                                "backend": "anthropic",
                                "tier": "frontier",
                                "severity": "critical",
                            },
                        )
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series(
                        "loom_operator_reconciles_total",
                        namespace="loom-system",
                        kind="Worker",
                        outcome="error",
                    ),
                    "values": "0+2x30",
                },
                {
                    "series": series(
                        "loom_operator_reconciles_total",
                        namespace="loom-system",
                        kind="Pipeline",
                        outcome="ok",
                    ),
                    "values": "0+50x30",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "LoomOperatorReconcileErrors",
                    "exp_alerts": [
                        _alert(
                            "LoomOperatorReconcileErrors",
                            {"namespace": "loom-system", "kind": "Worker", "severity": "warning"},
                        )
                    ],
                },
                {"eval_time": "20m", "alertname": "LoomResourcesStalled", "exp_alerts": []},
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # Two router replicas report the same shared counter: 700 of 1000 tokens, then 850.
                *(
                    {
                        "series": series("loom_budget_used", budget="tenant:acme/tokens/day", pod=pod),
                        "values": "700x5 850x20",
                    }
                    for pod in ("r-1", "r-2")
                ),
                *(
                    {
                        "series": series("loom_budget_limit", budget="tenant:acme/tokens/day", pod=pod),
                        "values": "1000x25",
                    }
                    for pod in ("r-1", "r-2")
                ),
                {
                    "series": series("loom_budget_used", budget="tier:local/cost/month", pod="r-1"),
                    "values": "1x25",
                },
                {
                    "series": series("loom_budget_limit", budget="tier:local/cost/month", pod="r-1"),
                    "values": "10x25",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "8m", "alertname": "LoomBudgetNearlyExhausted", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "LoomBudgetNearlyExhausted",
                    "exp_alerts": [
                        _alert(
                            "LoomBudgetNearlyExhausted",
                            {"namespace": "loom", "budget": "tenant:acme/tokens/day", "severity": "warning"},
                        )
                    ],
                },
            ],
        },
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    proc = run(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, is valid PromQL."""
    dashboard = json.loads((chart.REPO / "deploy" / "grafana" / "loom-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    substitutions = {"$__rate_interval": "5m", "$namespace": ".*", "$worker_type": ".*", "$tier": ".*"}
    rules = []
    for i, expr in enumerate(exprs):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"loom:dashboard_query_{i}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    proc = run(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
