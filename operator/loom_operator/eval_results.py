"""What an EvalSuite's Job concluded, read from its pod or the Job itself (pure).

The Job's ``loom eval --summary-file /dev/termination-log`` leaves the verdict (``EvalRun`` as
compact JSON) in the pod's termination message; Kubernetes keeps it in the pod's status after the
container exits, so the operator reads it with pod read rights alone (no logs, no exec, no NATS).
A message that is not a verdict (``loom eval`` refused its input, the container was killed: the
log's tail, by FallbackToLogsOnError) is a failed run that says why. A Job that failed without any
pod finishing (deadline, pod never started) is a failed run too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from loom.api.status import EvalRun
from loom_operator.conditions import Phase
from loom_operator.render.eval_suite import JOB_LABEL

#: The container of the eval Job's pod (render.eval_suite).
CONTAINER = "eval"
#: Reason of Ready=False (and Stalled=True) when the suite ran and failed its gate.
EVAL_FAILED = "EvalFailed"


def run_from_pod(pod: Mapping[str, Any]) -> EvalRun | None:
    """The run an eval pod finished, or None while it has not (or it is not an eval pod)."""
    meta = pod.get("metadata") or {}
    job = (meta.get("labels") or {}).get(JOB_LABEL)
    if not job:
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == CONTAINER), None)
    terminated = ((status or {}).get("state") or {}).get("terminated")
    if not terminated:
        return None
    message = str(terminated.get("message") or "").strip()
    finished = terminated.get("finishedAt")
    try:
        run = EvalRun.model_validate_json(message)
    except ValidationError:
        code, reason = terminated.get("exitCode"), terminated.get("reason") or "Error"
        tail = message[-600:] if message else "no termination message"
        return EvalRun(
            job_name=job,
            passed=False,
            reasons=[f"the eval Job's pod ended ({reason}, exit code {code}) without a verdict: {tail}"],
            finished_at=finished,
        )
    return run.model_copy(update={"job_name": job, "finished_at": finished})


def run_from_job(job: Mapping[str, Any]) -> EvalRun | None:
    """A failed run when the Job itself failed (no pod verdict may ever come), else None."""
    conditions = (job.get("status") or {}).get("conditions") or []
    failed = next((c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"), None)
    if failed is None:
        return None
    why = ": ".join(x for x in (failed.get("reason"), failed.get("message")) if x) or "Failed"
    return EvalRun(
        job_name=(job.get("metadata") or {}).get("name", ""),
        passed=False,
        reasons=[f"the eval Job failed: {why}"],
        finished_at=failed.get("lastTransitionTime"),
    )


#: Reason of Reconciling=True while the suite's Job waits for what it tests (job_waits_for).
WAITING = "Waiting"


def job_waits_for(
    worker_type: str, workers: Mapping[str, bool], router: str | None, router_serves: bool
) -> str | None:
    """What an EvalSuite's Job waits for before it is created, or None when it may run now.

    The Job tests the deployed system through the router, so it starts once every Worker of its
    worker type (``workers``: name -> Ready) and the namespace's router (RouterPolicy ``router``,
    Ready with this worker type in its catalog: ``router_serves``) are. Started earlier (everything
    applied at once, pods still starting), its cases would time out and fail a sound worker.
    """
    unready = sorted(name for name, ready in workers.items() if not ready)
    if unready:
        names = ", ".join(unready)
        return (
            f"waiting for Worker {names} (worker type {worker_type!r}) to be Ready before running the suite"
        )
    if router is None:
        return "waiting for a RouterPolicy in this namespace: the suite runs through its router"
    if not router_serves:
        return (
            f"waiting for the router of RouterPolicy {router!r} to be Ready with worker type "
            f"{worker_type!r} in its catalog before running the suite"
        )
    return None


def eval_phase(job: str, run: EvalRun | None) -> Phase:
    """Ready when the current spec's Job passed, stalled (EvalFailed) when it failed, else running."""
    if run is None:
        return Phase.progressing("Running", f"Job {job} is running the suite")
    if run.passed:
        score = "" if run.score is None else f": score {run.score:g}"
        return Phase.ready(f"Job {job} passed{score} ({run.passed_cases}/{run.cases} cases)")
    detail = "; ".join(run.reasons) or "the gate failed"
    return Phase.stalled(EVAL_FAILED, f"Job {job}: {detail}")
