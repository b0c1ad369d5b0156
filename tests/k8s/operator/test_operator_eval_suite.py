"""EvalSuite on the real API server under the operator: its Job, its verdict, its schema.

The control plane runs the real Job controller and kwok as the kubelet: the Job's pod is created
and "runs" to completion, but kwok runs no container, so it reports no termination message (the
operator must call that a failed run). The test then plays the container's part: it writes the
terminated state that ``loom eval --summary-file /dev/termination-log`` would have left (made by the
same ``run_summary``), as the kubelet reports it, and the operator must write status from it.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from loom.evals.report import run_summary
from loom.evals.runner import CaseResult, RunResult
from loom_operator.render.eval_suite import JOB_LABEL
from tests.k8s.operator.conftest import Loom, wait_for

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


def deploy(loom: Loom) -> None:
    """What the suite tests: the Worker and the router it runs through."""
    loom.create("RouterPolicy", "default", {"tiers": [{"name": "local"}]})
    loom.create("Worker", "doc-extractor", worker_spec())


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


def finished_pod(loom: Loom, job: Any) -> Any:
    """The Job's pod, once the Job controller made it and kwok ran it to its end."""

    def done() -> Any:
        pods = loom.core.list_namespaced_pod(loom.ns, label_selector=f"{JOB_LABEL}={job.metadata.name}").items
        for pod in pods:
            for status in pod.status.container_statuses or []:
                if status.state and status.state.terminated:
                    return pod
        return None

    return wait_for(done, 60, what=f"the pod of Job {job.metadata.name} terminated")


def leave_verdict(loom: Loom, job: Any, message: str, exit_code: int) -> None:
    """What the kubelet reports when ``loom eval`` exits: its exit code and termination message."""
    pod = finished_pod(loom, job)
    (container,) = pod.spec.containers
    status = {
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
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
    loom.core.patch_namespaced_pod_status(pod.metadata.name, loom.ns, status)


def the_job(loom: Loom, but_not: str | None = None) -> Any:
    found: dict[str, Any] = wait_for(
        lambda: (js := {n: j for n, j in jobs(loom).items() if n != but_not}) and len(js) == 1 and js,
        30,
        what=f"the Job of EvalSuite {SUITE}",
    )
    (job,) = found.values()
    return job


def test_the_job_waits_for_the_worker_and_the_router_it_tests(loom: Loom) -> None:
    """Applied together with what it tests (as `kubectl apply -f config/samples/` does), the suite
    creates no Job until its Worker and the router serving it are Ready: its cases would otherwise
    race pods still starting, and time out against a sound worker."""
    loom.create("Worker", "doc-extractor", worker_spec())
    loom.create("EvalSuite", SUITE, suite_spec())
    # First for the Worker's pods, then (the Worker Ready, which wakes the suite) for a router.
    waiting = wait_for(
        lambda: (
            (c := loom.condition("EvalSuite", SUITE, "Reconciling"))
            and c["reason"] == "Waiting"
            and "RouterPolicy in this namespace" in c["message"]
            and c
        ),
        60,
        what="Reconciling=True Waiting for a RouterPolicy",
    )
    assert waiting["status"] == "True"
    assert jobs(loom) == {}
    ready = loom.condition("EvalSuite", SUITE, "Ready")
    assert ready is not None and ready["status"] == "False"

    loom.create("RouterPolicy", "default", {"tiers": [{"name": "local"}]})
    job = the_job(loom)  # made once the router is Ready with doc-extractor in its catalog
    loom.wait_ready("RouterPolicy", "default", timeout=30)
    loom.wait_ready("Worker", "doc-extractor", timeout=30)
    wait_for(
        lambda: (loom.get("EvalSuite", SUITE).get("status") or {}).get("jobName") == job.metadata.name,
        30,
        what="status.jobName",
    )


def test_an_eval_suite_runs_as_a_job_and_its_verdict_becomes_status(loom: Loom) -> None:
    deploy(loom)
    loom.create("EvalSuite", SUITE, suite_spec())

    job = the_job(loom)
    assert job.metadata.name.startswith(f"{SUITE}-eval-")
    assert job.spec.template.metadata.labels[JOB_LABEL] == job.metadata.name
    (container,) = job.spec.template.spec.containers
    assert container.args[0] == "eval" and "--summary-file" in container.args
    wait_for(
        lambda: (loom.get("EvalSuite", SUITE).get("status") or {}).get("jobName") == job.metadata.name,
        30,
        what="status.jobName",
    )

    message, code = summary(passed=2, total=2, threshold=1.0)
    leave_verdict(loom, job, message, code)
    ready = loom.wait_ready("EvalSuite", SUITE, timeout=30)
    last = ready["status"]["lastRun"]
    assert last["passed"] is True and last["score"] == 1.0 and last["cases"] == 2 and last["passedCases"] == 2
    assert last["jobName"] == job.metadata.name and last["finishedAt"] == "2025-01-01T00:00:30Z"

    # A changed spec is a new Job; the old one goes, and the new verdict (a failure) is reported.
    loom.patch("EvalSuite", SUITE, {"threshold": 0.9})
    new = the_job(loom, but_not=job.metadata.name)
    wait_for(lambda: job.metadata.name not in jobs(loom), 30, what="the old Job deleted")
    message, code = summary(passed=1, total=2, threshold=0.9)
    leave_verdict(loom, new, message, code)
    failed = wait_for(
        lambda: (
            (c := loom.condition("EvalSuite", SUITE, "Ready")) and "below the threshold" in c["message"] and c
        ),
        30,
        what="Ready=False EvalFailed with the verdict's reason",
    )
    assert failed["status"] == "False" and failed["reason"] == "EvalFailed"
    assert "below the threshold 0.9" in failed["message"]
    stalled = loom.condition("EvalSuite", SUITE, "Stalled")
    assert stalled is not None and stalled["status"] == "True" and stalled["reason"] == "EvalFailed"
    status = loom.get("EvalSuite", SUITE)["status"]
    assert status["lastRun"]["passed"] is False and status["lastRun"]["failedCases"] == ["case-1"]
    assert status["lastRun"]["jobName"] == new.metadata.name


def test_a_pod_that_ends_without_a_verdict_fails_the_suite_saying_so(loom: Loom) -> None:
    deploy(loom)
    loom.create("EvalSuite", SUITE, suite_spec())
    job = the_job(loom)
    # kwok ends the pod with exit code 0 and no termination message: not a verdict.
    finished_pod(loom, job)
    failed = wait_for(
        lambda: (c := loom.condition("EvalSuite", SUITE, "Ready")) and c["reason"] == "EvalFailed" and c,
        30,
        what="Ready=False EvalFailed",
    )
    assert "without a verdict" in failed["message"] and "no termination message" in failed["message"]
    # The log's tail (FallbackToLogsOnError) is what a refused run leaves: it is shown.
    leave_verdict(loom, job, "loom eval: cannot connect to NATS: nats: no servers available", 2)
    failed = wait_for(
        lambda: (c := loom.condition("EvalSuite", SUITE, "Ready")) and "exit code 2" in c["message"] and c,
        30,
        what="the log tail in Ready",
    )
    assert failed["reason"] == "EvalFailed" and "no servers available" in failed["message"]


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
