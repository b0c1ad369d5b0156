"""The Argo CD health checks, run by a real Lua interpreter on Argo CD's own test-case layout.

Each ``resource_customizations/loom.dev/<Kind>/health_test.yaml`` lists inputs and the
expected ``hs.status`` / ``hs.message``, exactly as Argo CD's resource-customization tests
read them. The script runs with only the libraries Argo CD's sandbox opens.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import lupa
import pytest
import yaml

from loom.api.kinds import KIND_NAMES

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "deploy" / "argocd"
KINDS = KIND_NAMES
CUSTOMIZATIONS = ARGOCD / "resource_customizations" / "loom.dev"
# What Argo CD's Lua VM leaves out (it opens base, table, string, math and coroutine only).
SANDBOXED = ("os", "io", "require", "dofile", "loadfile", "package", "debug")


def run_health(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Run a health.lua on one object the way Argo CD does: global ``obj``, returned ``hs``."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
    g = lua.globals()
    for name in SANDBOXED:
        g[name] = None
    g.obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(script)
    assert hs is not None, "health.lua returned nothing"
    return {k: hs[k] for k in ("status", "message") if hs[k] is not None}


def _cases() -> list[Any]:
    params = []
    for kind in KINDS:
        spec = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
        for case in spec["tests"]:
            params.append(pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}"))
    return params


@pytest.mark.parametrize(("kind", "case"), _cases())
def test_health_case(kind: str, case: dict[str, Any]) -> None:
    script = (CUSTOMIZATIONS / kind / "health.lua").read_text()
    obj = yaml.safe_load((CUSTOMIZATIONS / kind / case["inputPath"]).read_text())
    assert obj["kind"] == kind
    assert run_health(script, obj) == case["healthStatus"]


def test_every_outcome_is_covered_per_kind() -> None:
    for kind in KINDS:
        spec = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
        statuses = {c["healthStatus"]["status"] for c in spec["tests"]}
        expected = {"Healthy", "Progressing", "Degraded"} | ({"Suspended"} if kind == "Schedule" else set())
        assert statuses == expected, kind


def test_suspend_only_applies_to_schedules() -> None:
    script = (ARGOCD / "health.lua").read_text()
    worker = yaml.safe_load((CUSTOMIZATIONS / "Worker" / "testdata" / "healthy.yaml").read_text())
    worker["spec"]["suspend"] = True
    assert run_health(script, worker)["status"] == "Healthy"


def test_stale_ready_condition_is_not_healthy() -> None:
    """A Ready=True written for an older generation must not report Healthy."""
    script = (ARGOCD / "health.lua").read_text()
    obj = yaml.safe_load((CUSTOMIZATIONS / "Pipeline" / "testdata" / "healthy.yaml").read_text())
    for c in obj["status"]["conditions"]:
        c["observedGeneration"] = 1
    assert run_health(script, obj) == {"status": "Progressing", "message": "Waiting for the Ready condition"}


def test_ready_false_without_reason_is_progressing() -> None:
    script = (ARGOCD / "health.lua").read_text()
    obj = {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": "w", "generation": 1},
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False"}]},
    }
    assert run_health(script, obj)["status"] == "Progressing"


def _render_module() -> Any:
    spec = importlib.util.spec_from_file_location("argocd_render", ARGOCD / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_match_the_source() -> None:
    """The per-kind copies and the argocd-cm snippet are what render.py writes now."""
    for path, content in _render_module().expected().items():
        assert path.read_text() == content, f"{path} is stale: run make generate"


def test_argocd_cm_snippet_carries_the_script_for_every_kind() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    script = (ARGOCD / "health.lua").read_text()
    for kind in KINDS:
        embedded = cm["data"][f"resource.customizations.health.loom.dev_{kind}"]
        assert embedded == script
        healthy = yaml.safe_load((CUSTOMIZATIONS / kind / "testdata" / "healthy.yaml").read_text())
        assert run_health(embedded, healthy)["status"] == "Healthy"


def test_example_applications_never_track_children_by_instance_label() -> None:
    """The example Applications sync the chart and the manifests; children stay out of Argo's tracking."""
    docs = [
        d for p in sorted(ARGOCD.glob("application*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]
    assert docs, "no example Application"
    for app in docs:
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        sync = app["spec"]["syncPolicy"]
        assert "ServerSideApply=true" in sync["syncOptions"]
