"""Monitoring in the chart: alerts and dashboard use metric names the code really exports;
the bundled NATS configuration runs on a real nats-server."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import chart, helm_bin
from tests.support.chart import VALUE_SETS, by_kind, one
from tests.support.nats_server import free_port, nats_server_binary

REPO = chart.REPO
METRIC_SOURCES = (REPO / "runtime", REPO / "operator")
DEFINITION = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|counter|gauge|histogram)\(\s*\"(loom_[a-z0-9_]+)\""
)
# Prometheus relabels the pods' loom.dev/* labels (PodMonitor podTargetLabels) to loom_dev_*.
TARGET_LABEL = re.compile(r"^loom_dev_")


def exported_series() -> dict[str, str]:
    """Every series name the code can export -> the metric that defines it."""
    out: dict[str, str] = {}
    for root in METRIC_SOURCES:
        for path in root.rglob("*.py"):
            for kind, name in DEFINITION.findall(path.read_text()):
                kind = kind.lower()
                if kind == "counter":
                    base = name.removesuffix("_total")
                    out[base + "_total"] = name
                elif kind in ("histogram", "summary"):
                    for suffix in ("_bucket", "_sum", "_count"):
                        out[name + suffix] = name
                    out[name] = name
                else:
                    out[name] = name
    return out


def referenced_metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\b(loom_[a-z0-9_]+)\b", expr))
    return {n for n in names if not TARGET_LABEL.match(n)}


@pytest.fixture(scope="module")
def monitoring_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    try:
        helm_bin.helm()
    except helm_bin.ToolUnavailable as exc:
        pytest.fail(str(exc))
    return chart.render(VALUE_SETS["monitoring"], tmp_path_factory.mktemp("monitoring"))


def _dashboard_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "loom_dashboard", REPO / "deploy" / "grafana" / "dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_alert_rules_cover_the_required_cases(monitoring_objects: list[dict[str, Any]]) -> None:
    rule = one(monitoring_objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    required = {
        "LoomDeadLettersGrowing": "loom_dead_letters_total",
        "LoomConsumerLagHigh": "loom_consumer_lag",
        "LoomRateLimitRejections": "loom_rate_limit_rejections_total",
        "LoomCircuitBreakerOpen": "loom_llm_circuit_open",
        "LoomOperatorReconcileErrors": "loom_operator_reconciles_total",
    }
    for alert, metric in required.items():
        assert metric in alerts[alert]["expr"], alert
        assert alerts[alert]["labels"]["severity"] in ("info", "warning", "critical")
        assert alerts[alert]["annotations"]["summary"] and alerts[alert]["annotations"]["description"]
    assert "> 1000" in alerts["LoomConsumerLagHigh"]["expr"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_alerts_use_metric_names_the_code_exports(monitoring_objects: list[dict[str, Any]]) -> None:
    exported = exported_series()
    assert "loom_tasks_completed_total" in exported, "metric definitions not found"
    rule = one(monitoring_objects, "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            missing = referenced_metrics(r["expr"]) - set(exported)
            assert not missing, f"{r['alert']} uses metrics nothing exports: {sorted(missing)}"


def test_dashboard_uses_metric_names_the_code_exports() -> None:
    exported = exported_series()
    dashboard = json.loads((REPO / "deploy" / "grafana" / "loom-dashboard.json").read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 20
    for expr in exprs:
        missing = referenced_metrics(expr) - set(exported)
        assert not missing, f"dashboard query uses metrics nothing exports: {sorted(missing)}: {expr}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "lag", "replicas", "rate-limit", "dead letters"):
        assert topic in titles, topic


def test_dashboard_files_match_the_builder() -> None:
    module = _dashboard_module()
    for path in module.OUTPUTS:
        assert path.read_text() == module.rendered(), (
            f"{path} is stale: run make generate"
        )


def test_dashboard_configmap_for_the_grafana_sidecar(monitoring_objects: list[dict[str, Any]]) -> None:
    cm = one(monitoring_objects, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Loom"}
    shipped = json.loads(cm["data"]["loom.json"])
    assert shipped == json.loads((REPO / "deploy" / "grafana" / "loom-dashboard.json").read_text())
    assert shipped["uid"] == "loom-overview"


def test_monitors_select_the_operator_and_its_children(monitoring_objects: list[dict[str, Any]]) -> None:
    sm = one(monitoring_objects, "ServiceMonitor")
    svc = one(monitoring_objects, "Service")
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    pm = one(monitoring_objects, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "loom",
        "app.kubernetes.io/managed-by": "loom-operator",
    }
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    for obj in (sm, pm):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    chart.validate(monitoring_objects)


def test_podmonitor_port_is_the_one_rendered_pods_expose() -> None:
    """The operator names its pods' metrics port; the PodMonitor scrapes it by that name."""
    common = REPO / "operator" / "loom_operator" / "render" / "common.py"
    assert re.search(r'"name": "metrics", "containerPort"', common.read_text())


def test_namespaced_podmonitor_watches_only_those_namespaces(tmp_path: Path) -> None:
    values = {"watchNamespaces": ["team-a"], "monitoring": {"podMonitor": {"enabled": True}}}
    pm = one(chart.render(values, tmp_path), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


@pytest.mark.integration
def test_bundled_nats_config_runs_on_a_real_server(tmp_path: Path) -> None:
    """The rendered nats.conf starts a real nats-server with JetStream and the configured limits."""
    try:
        objects = chart.render(VALUE_SETS["bundled-nats"], tmp_path)
    except helm_bin.ToolUnavailable as exc:
        pytest.fail(str(exc))
    conf = by_kind(objects, "ConfigMap")[0]["data"]["nats.conf"]
    store, run = tmp_path / "data", tmp_path / "run"
    store.mkdir()
    run.mkdir()
    client, monitor = free_port(), free_port()
    # Same file, with the pod's paths and fixed ports moved to the test's temp dir and free ports.
    local = (
        conf.replace("/data", str(store))
        .replace("/var/run/nats", str(run))
        .replace("port: 4222", f"port: {client}")
        .replace("http_port: 8222", f"http_port: {monitor}")
    )
    assert local.count(str(store)) == 1 and f"http_port: {monitor}" in local
    (tmp_path / "nats.conf").write_text(local)
    # Beside it, as in the pod, the users the operator writes (nats.auth.mode generated by default).
    (tmp_path / "auth.conf").write_text(_operator_users())
    check = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "SERVER_NAME": "loom-nats-0"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-c", str(tmp_path / "nats.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SERVER_NAME": "loom-nats-0"},
    )
    try:
        varz = _wait_json(
            f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", f"http://127.0.0.1:{monitor}/varz"
        )
        assert varz["server_name"] == "loom-nats-0"
        assert varz["auth_required"] is True
        assert varz["port"] == client
        assert varz["max_payload"] == 8 * 1024 * 1024
        js = varz["jetstream"]["config"]
        assert js["max_memory"] == 256 * 1024 * 1024 and js["max_storage"] == 8 * 1024 * 1024 * 1024
        assert js["store_dir"].startswith(str(store))
        assert (run / "nats.pid").read_text().strip() == str(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def _operator_users() -> str:
    import base64

    from loom_operator.render.bus_auth import AUTH_KEY, server_secrets
    from loom_operator.settings import Settings

    settings = Settings(
        nats_auth="generated", nats_auth_key="k" * 40, nats_auth_secret="loom-system/loom-nats-auth"
    )
    return base64.b64decode(server_secrets([], settings)[0]["data"][AUTH_KEY]).decode()


def _wait_json(health_url: str, url: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(health_url, timeout=1) as r:
                if r.status == 200:
                    with urllib.request.urlopen(url, timeout=2) as v:
                        return json.load(v)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_every_exported_metric_is_documented() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    metrics = set(exported_series().values())
    assert len(metrics) >= 30
    undocumented = sorted(m for m in metrics if f"`{m}`" not in docs)
    assert not undocumented, f"metrics missing from docs/operations.md: {undocumented}"
