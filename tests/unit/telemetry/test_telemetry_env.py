"""Tracing and audit settings reach every role: one rule for rendered pods and ``loom up``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loom.api.worker import WorkerSpec
from loom.telemetry import role_env
from loom_operator.render.common import Owner
from loom_operator.render.worker import render_worker
from loom_operator.settings import Settings


def test_role_env_passes_the_collector_and_audit_settings() -> None:
    env = {"LOOM_OTLP_ENDPOINT": "http://collector:4318", "LOOM_AUDIT_MAX_AGE_SECONDS": "3600", "OTHER": "x"}
    assert role_env(env) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "LOOM_AUDIT_MAX_AGE_SECONDS": "3600",
    }
    assert role_env({}, "http://127.0.0.1:4318") == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert role_env({}) == {}  # nothing set: tracing off, audit defaults


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOOM_OTLP_ENDPOINT": "collector:4317"}, "http"),
        ({"LOOM_AUDIT_MAX_AGE_SECONDS": "forever"}, "LOOM_AUDIT_MAX_AGE_SECONDS"),
    ],
)
def test_bad_settings_are_refused_once_with_their_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        role_env(env)


def _env_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    (deploy,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_rendered_worker_pods_get_the_collector_from_the_operator_settings() -> None:
    spec = WorkerSpec.model_validate(
        {"name": "echo", "workerKind": "processor", "processingBackend": "loom.contrib.noop.EchoBackend"}
    )
    owner = Owner(kind="Worker", name="echo", namespace="ns")
    on = Settings.from_env({"LOOM_OTLP_ENDPOINT": "http://otel.observability:4318", "LOOM_AUDIT": "off"})
    env = _env_of(render_worker(owner, spec, on))
    assert (
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.observability:4318" and env["LOOM_AUDIT"] == "off"
    )
    off = _env_of(render_worker(owner, spec, Settings.from_env({})))
    assert not any(k.startswith(("OTEL_", "LOOM_AUDIT")) for k in off)


def test_loom_up_hands_the_collector_to_every_process(tmp_path: Path) -> None:
    from loom.api.loader import load_paths
    from loom.cli.commands.up import process_specs
    from loom.local.manifests import build_plan

    samples = Path(__file__).resolve().parents[3] / "config" / "samples"
    plan = build_plan(
        load_paths([str(samples / "worker-doc-extractor.yaml")]),
        run_dir=tmp_path,
        ports=iter(range(20000, 20100)),
        local_llm_url=None,
        orchestrator_config=None,
        env={},
    )
    specs = process_specs(
        plan,
        nats_url="nats://x",
        log_level="INFO",
        cwd=str(tmp_path),
        telemetry=role_env({}, "http://127.0.0.1:4318"),
    )
    assert specs and all(s.env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318" for s in specs)
