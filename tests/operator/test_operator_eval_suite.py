"""EvalSuite on the real API server under the operator: its Job, its verdict, its schema.

envtest runs no kubelet and no Job controller, so the test plays their part the way they would:
it creates the Job's pod from the Job's own template and writes the pod's terminated state with the
termination message ``loom eval --summary-file /dev/termination-log`` leaves (made by the same
``run_summary``). The operator must read it back and write status from it.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loom.evals.report import run_summary
from loom.evals.runner import CaseResult, RunResult
from loom_operator.render.eval_suite import JOB_LABEL
from tests.operator.conftest import Loom, wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("loom_operator")]

SUITE = "extractor-gate"


def suite_spec(threshold: float = 1.0) -> dict[str, Any]:
    return {
        "worker": "doc-extractor",
        "threshold": threshold,
        "scorers": [{"type": "schema"}, {"type": "fields", "fields": [{"path": "/title"}]}],
        "cases": [
            {"id": "invoice", "input": {"text": "INVOICE #1"}, "expected": {"title": "INVOICE #1"}},
            {"id": "memo", "input": {"text": "MEMO"}, "expected": {"title": "MEMO"}},
        ],
    }


def worker_spec() -> dict[str, Any]:
    return {"systemPrompt": "Extract the title.", "tiers": ["local"], "defaultModelTier": "local"}


def summary(passed: int, total: int, threshold: float) -> tuple[str, int]:
    """The termination message and exit code ``loom eval`` would leave for such a run."""
    cases = [
        CaseResult(f"case-{i}", {}, None, {}, [], 1.0 if i < passed else 0.0, i < passed)
        for i in range(total)
    ]
    run = RunResult(
        "r", SUITE, "doc-extractor", "local", "router", "2025-01-01T00:00:00Z", threshold, threshold, cases
    )
    reasons = [] if run.passed else [f"aggregate score {run.score:.3f} is below the threshold {threshold:g}"]
    return run_summary(run, reasons), 1 if reasons else 0


def jobs(loom: Loom) -> dict[str, Any]:
    batch = client.BatchV1Api(loom.core.api_client)
    items = batch.list_namespaced_job(loom.ns, label_selector=f"loom.dev/evalsuite={SUITE}").items
    return {j.metadata.name: j for j in items if not j.metadata.deletion_timestamp}


def play_the_pod(loom: Loom, job: Any, message: str, exit_code: int) -> None:
    """What the Job controller and the kubelet would do: a pod from the template, run, terminated."""
    api = loom.core.api_client
    template = api.sanitize_for_serialization(job.spec.template)
    name = f"{job.metadata.name}-x1"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    loom.core.create_namespaced_pod(loom.ns, pod)
    (container,) = template["spec"]["containers"]
    status = {
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "startedAt": "2025-01-01T00:00:00Z",
                            "finishedAt": "2025-01-01T00:00:30Z",
                        }
                    },
                }
            ],
        }
    }
    loom.core.patch_namespaced_pod_status(name, loom.ns, status)


def the_job(loom: Loom, but_not: str | None = None) -> Any:
    found: dict[str, Any] = wait_for(
        lambda: (js := {n: j for n, j in jobs(loom).items() if n != but_not}) and len(js) == 1 and js,
        30,
        what=f"the Job of EvalSuite {SUITE}",
    )
    (job,) = found.values()
    return job


def test_an_eval_suite_runs_as_a_job_and_its_verdict_becomes_status(loom: Loom) -> None:
    loom.create("Worker", "doc-extractor", worker_spec())
    loom.create("EvalSuite", SUITE, suite_spec())

    job = the_job(loom)
    assert job.metadata.name.startswith(f"{SUITE}-eval-")
    assert job.spec.template.metadata.labels[JOB_LABEL] == job.metadata.name
    (container,) = job.spec.template.spec.containers
    assert container.args[0] == "eval" and "--summary-file" in container.args
    running = wait_for(
        lambda: (c := loom.condition("EvalSuite", SUITE, "Ready")) and c["reason"] == "Running" and c,
        30,
        what="Ready=False Running",
    )
    assert running["status"] == "False"
    assert loom.get("EvalSuite", SUITE)["status"]["jobName"] == job.metadata.name

    message, code = summary(passed=2, total=2, threshold=1.0)
    play_the_pod(loom, job, message, code)
    ready = loom.wait_ready("EvalSuite", SUITE, timeout=30)
    last = ready["status"]["lastRun"]
    assert last["passed"] is True and last["score"] == 1.0 and last["cases"] == 2 and last["passedCases"] == 2
    assert last["jobName"] == job.metadata.name and last["finishedAt"] == "2025-01-01T00:00:30Z"

    # A changed spec is a new Job; the old one goes, and the new verdict (a failure) is reported.
    loom.patch("EvalSuite", SUITE, {"threshold": 0.9})
    new = the_job(loom, but_not=job.metadata.name)
    wait_for(lambda: job.metadata.name not in jobs(loom), 30, what="the old Job deleted")
    message, code = summary(passed=1, total=2, threshold=0.9)
    play_the_pod(loom, new, message, code)
    failed = wait_for(
        lambda: (c := loom.condition("EvalSuite", SUITE, "Ready")) and c["reason"] == "EvalFailed" and c,
        30,
        what="Ready=False EvalFailed",
    )
    assert failed["status"] == "False" and "below the threshold 0.9" in failed["message"]
    stalled = loom.condition("EvalSuite", SUITE, "Stalled")
    assert stalled is not None and stalled["status"] == "True" and stalled["reason"] == "EvalFailed"
    status = loom.get("EvalSuite", SUITE)["status"]
    assert status["lastRun"]["passed"] is False and status["lastRun"]["failedCases"] == ["case-1"]
    assert status["lastRun"]["jobName"] == new.metadata.name


def test_a_pod_that_ends_without_a_verdict_fails_the_suite_with_its_log_tail(loom: Loom) -> None:
    loom.create("Worker", "doc-extractor", worker_spec())
    loom.create("EvalSuite", SUITE, suite_spec())
    play_the_pod(loom, the_job(loom), "loom eval: cannot connect to NATS: nats: no servers available", 2)
    failed = wait_for(
        lambda: (c := loom.condition("EvalSuite", SUITE, "Ready")) and c["reason"] == "EvalFailed" and c,
        30,
        what="Ready=False EvalFailed",
    )
    assert "exit code 2" in failed["message"] and "no servers available" in failed["message"]


def test_a_suite_for_a_worker_type_nobody_serves_stalls(loom: Loom) -> None:
    loom.create("EvalSuite", SUITE, suite_spec())
    stalled = wait_for(
        lambda: (c := loom.condition("EvalSuite", SUITE, "Stalled")) and c["status"] == "True" and c,
        30,
        what="Stalled",
    )
    assert stalled["reason"] == "UnknownWorkerType" and "doc-extractor" in stalled["message"]
    assert jobs(loom) == {}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"threshold": 2}, "threshold"),
        ({"cases": []}, "cases"),
        ({"scorers": [{"type": "exact", "rubric": "nice"}]}, "rubric is a field of type judge only"),
        ({"scorers": [{"type": "numeric"}]}, "type numeric needs path"),
        ({"scorers": [{"type": "poetry"}]}, "type"),
    ],
)
def test_the_api_server_rejects_an_invalid_eval_suite(loom: Loom, change: dict[str, Any], says: str) -> None:
    with pytest.raises(ApiException) as exc:
        loom.create("EvalSuite", SUITE, {**suite_spec(), **change})
    assert exc.value.status == 422
    assert says in str(exc.value.body)
