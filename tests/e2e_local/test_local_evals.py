"""`loom up` runs each EvalSuite once through the router after everything is ready, and says how it
went: the same `loom eval` an EvalSuite's Job runs on a cluster (real NATS, router and worker)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.e2e_local.conftest import SAMPLES, wait_until


def suite(name: str, expected_title: str) -> dict[str, Any]:
    return {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "EvalSuite",
        "metadata": {"name": name},
        "spec": {
            "worker": "doc-extractor",
            "threshold": 1.0,
            "scorers": [{"type": "schema"}, {"type": "fields", "fields": [{"path": "/title"}]}],
            "cases": [
                {
                    "id": "invoice",
                    "input": {"text": "INVOICE #2291\nTotal due: 1,250.00 EUR."},
                    "expected": {"title": expected_title},
                }
            ],
        },
    }


def test_loom_up_runs_each_eval_suite_through_the_router_and_reports_it(
    local_up_factory: Any, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    shutil.copy(SAMPLES / "worker-doc-extractor.yaml", manifests)
    # Two suites in one file: each runs on its own.
    (manifests / "evals.yaml").write_text(
        yaml.safe_dump_all([suite("title-right", "INVOICE #2291"), suite("title-wrong", "RECEIPT")])
    )
    up = local_up_factory([manifests])
    up.wait_ready(timeout=180)
    wait_until(lambda: "EvalSuite title-wrong:" in up.log(), 120, "both suites reported")
    log = up.log()
    assert "loom up: EvalSuite title-right: passed" in log
    assert "loom up: EvalSuite title-wrong: FAILED" in log
    # The runs went through the router (mode router) and are stored beside the written suites.
    assert "(router)" in log
    assert (up.run_dir / "evals" / "title-right.runs.sqlite").exists()
    assert up.stop() == 0
