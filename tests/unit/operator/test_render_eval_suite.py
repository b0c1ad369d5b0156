"""EvalSuite → ConfigMap + Job (pure render), and reading the Job's verdict back (no cluster)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loom.api import RouterPolicySpec, WorkerSpec, load_text
from loom.api.eval_suite import EvalBaseline, EvalSuiteSpec
from loom.api.status import EvalRun
from loom.bus_auth import Role, permissions
from loom.evals.compare import compare_runs, inline_baseline
from loom.evals.report import TERMINATION_MESSAGE_LIMIT, gate, run_summary
from loom.evals.runner import CaseResult, RunResult
from loom.evals.suite import parse_suite
from loom.subjects import incoming_subject
from loom_operator.dispatch import PolicyEntry, Stalled, WorkerEntry, render_resource
from loom_operator.eval_results import EVAL_FAILED, eval_phase, job_waits_for, run_from_job, run_from_pod
from loom_operator.render import Owner, worker_route
from loom_operator.render.bus_auth import identity
from loom_operator.render.eval_suite import JOB_LABEL, POLICY_KEY, SUITE_KEY, TERMINATION_LOG, WORKER_KEY
from loom_operator.settings import Settings

SETTINGS = Settings(image="example.org/loom:test", nats_url="nats://nats.loom:4222")
GENERATED = Settings(
    image="example.org/loom:test",
    nats_url="nats://nats.loom:4222",
    nats_auth="generated",
    nats_auth_key="k" * 32,
    nats_auth_secret="loom-system/loom-nats-auth",
)
OWNER = Owner("EvalSuite", "extractor-gate", "team-a", "9d1c2b3a-1111-2222-3333-444455556666")
SUITE = """
apiVersion: loom.dev/v1alpha1
kind: EvalSuite
metadata: {name: extractor-gate, namespace: team-a}
spec:
  worker: doc-extractor
  threshold: 1.0
  tenant: evals
  scorers:
    - type: schema
    - type: fields
      fields: [{path: /title}]
  cases:
    - id: invoice
      input: {text: "INVOICE #1"}
      expected: {title: "INVOICE #1"}
"""


def worker(prompt: str = "Extract.") -> WorkerEntry:
    spec = WorkerSpec.model_validate(
        {"name": "doc-extractor", "systemPrompt": prompt, "tiers": ["local"], "defaultModelTier": "local"}
    )
    return WorkerEntry("doc-extractor", spec.worker_type, worker_route(spec), ("local",), spec)


def suite(**overrides: Any) -> Any:
    (res,) = load_text(SUITE, "suite.yaml")
    if overrides:
        res.spec = EvalSuiteSpec.model_validate({**res.spec.model_dump(by_alias=True), **overrides})
    return res


def render(res: Any = None, settings: Settings = SETTINGS, workers: tuple[WorkerEntry, ...] | None = None):
    return render_resource(
        OWNER,
        res or suite(),
        settings,
        keda=False,
        policies=(),
        workers=(worker(),) if workers is None else workers,
        pipelines=(),
    )


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


def test_config_map_and_job_are_valid_hardened_and_owned() -> None:
    objects = render()
    cm, job = one(objects, "ConfigMap"), one(objects, "Job")
    for obj in (cm, job):
        kubernetes_validate.validate(obj, "1.33", strict=True)
        assert obj["metadata"]["labels"]["loom.dev/evalsuite"] == "extractor-gate"
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == "eval"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert cm["metadata"]["name"] == "extractor-gate-eval-config"
    # The suite file is the EvalSuite manifest itself: `loom eval` reads it unchanged.
    parsed = parse_suite(yaml.safe_load(cm["data"][SUITE_KEY]), SUITE_KEY)
    assert parsed.name == "extractor-gate" and parsed.tenant == "evals"
    assert yaml.safe_load(cm["data"][WORKER_KEY])["spec"]["systemPrompt"] == "Extract."
    name = job["metadata"]["name"]
    assert name.startswith("extractor-gate-eval-") and len(name) == len("extractor-gate-eval-") + 10
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"][JOB_LABEL] == name
    assert job["spec"]["backoffLimit"] == 0 and pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (c,) = pod["spec"]["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["command"] == ["loom"]
    assert c["args"][:3] == ["eval", f"/etc/loom/eval/{SUITE_KEY}", f"/etc/loom/eval/{WORKER_KEY}"]
    assert c["args"][c["args"].index("--summary-file") + 1] == TERMINATION_LOG
    assert c["args"][c["args"].index("--nats-url") + 1] == "$(LOOM_NATS_URL)"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_job_name_follows_suite_worker_and_image_and_nothing_else() -> None:
    name = one(render(), "Job")["metadata"]["name"]
    assert one(render(), "Job")["metadata"]["name"] == name, "same inputs, same Job: never run twice"
    assert one(render(suite(threshold=0.5)), "Job")["metadata"]["name"] != name
    assert one(render(workers=(worker("Extract better."),)), "Job")["metadata"]["name"] != name
    other_image = Settings(image="example.org/loom:next", nats_url=SETTINGS.nats_url)
    assert one(render(settings=other_image), "Job")["metadata"]["name"] != name


def test_generated_identity_is_a_submitter_of_the_suites_tenant_only() -> None:
    objects = render(settings=GENERATED)
    secret, job = one(objects, "Secret"), one(objects, "Job")
    assert secret["metadata"]["name"] == "extractor-gate-eval-nats"
    user = base64.b64decode(secret["data"]["user"]).decode()
    assert user == "eval_team-a_extractor-gate"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["LOOM_NATS_USER"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "user"}}
    # The identity reaches the server's user list after the Job is made: the Job keeps trying it.
    assert c["args"][-3:] == ["--retry-refused", "--connect-timeout", "300"]
    assert "--retry-refused" not in one(render(), "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    kubernetes_validate.validate(job, "1.33", strict=True)
    ident = identity(OWNER, suite().spec)
    assert ident.role is Role.EVAL and ident.tenant == "evals"
    perms = permissions(ident)
    # Its own tenant's intake only: never a worker's task subject, never past the router.
    assert [p for p in perms.publish if p.startswith("loom.tasks")] == [incoming_subject("evals")]
    assert all(s.startswith(("_INBOX_", "loom.results")) for s in perms.subscribe)


def test_unknown_worker_and_tier_stall_with_the_reason() -> None:
    with pytest.raises(Stalled) as exc:
        render(workers=())
    assert exc.value.reason == "UnknownWorkerType" and "doc-extractor" in exc.value.message
    with pytest.raises(Stalled) as exc:
        render(suite(tier="frontier"))
    assert "tier 'frontier' is not served" in exc.value.message


def policy(*judge_tiers: dict[str, Any]) -> PolicyEntry:
    tiers = [{"name": "local", "backend": "local"}, *judge_tiers]
    return PolicyEntry("default", RouterPolicySpec.model_validate({"tiers": tiers}))


JUDGE_TIER = {
    "name": "judge",
    "backend": "anthropic",
    "model": "claude-judge",
    "apiKeySecretRef": {"name": "anthropic-key", "key": "api-key"},
}


def test_judges_get_the_policy_and_their_tiers_keys_from_secrets() -> None:
    judged = suite(scorers=[{"type": "judge", "tier": "judge", "rubric": "Is it right?"}])
    objects = render_resource(
        OWNER, judged, SETTINGS, keda=False, policies=(policy(JUDGE_TIER),), workers=(worker(),), pipelines=()
    )
    cm, job = one(objects, "ConfigMap"), one(objects, "Job")
    kubernetes_validate.validate(job, "1.33", strict=True)
    doc = yaml.safe_load(cm["data"][POLICY_KEY])
    assert doc["kind"] == "RouterPolicy" and [t["name"] for t in doc["spec"]["tiers"]] == ["local", "judge"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert f"/etc/loom/eval/{POLICY_KEY}" in c["args"]
    env = {e["name"]: e.get("valueFrom") for e in c["env"]}
    assert env["ANTHROPIC_API_KEY"] == {"secretKeyRef": {"name": "anthropic-key", "key": "api-key"}}
    # The judge named its tier, so the worker's embedded local tier is not a judge: no key, no stall.
    plain = one(render(), "Job")["spec"]["template"]["spec"]["containers"][0]
    assert POLICY_KEY not in " ".join(plain["args"]) and "ANTHROPIC_API_KEY" not in str(plain["env"])


def test_judges_that_cannot_run_in_a_job_stall_with_the_reason() -> None:
    def stalled(res: Any, policies: tuple[PolicyEntry, ...]) -> str:
        with pytest.raises(Stalled) as exc:
            render_resource(
                OWNER, res, SETTINGS, keda=False, policies=policies, workers=(worker(),), pipelines=()
            )
        return exc.value.message

    on_suite_tier = suite(scorers=[{"type": "judge", "rubric": "r"}])
    assert "need the namespace's RouterPolicy" in stalled(on_suite_tier, ())
    assert "judge tier 'local' is the embedded local model" in stalled(on_suite_tier, (policy(JUDGE_TIER),))
    missing = suite(scorers=[{"type": "judge", "tier": "frontier", "rubric": "r"}])
    assert "judge tier 'frontier' is not defined" in stalled(missing, (policy(JUDGE_TIER),))
    other = {**JUDGE_TIER, "name": "judge2", "apiKeySecretRef": {"name": "other-key", "key": "api-key"}}
    two = suite(
        scorers=[
            {"type": "judge", "tier": "judge", "rubric": "r"},
            {"type": "judge", "tier": "judge2", "rubric": "r"},
        ]
    )
    assert "read different keys from ANTHROPIC_API_KEY" in stalled(two, (policy(JUDGE_TIER, other),))


def _run(passed_cases: int, total: int, threshold: float = 1.0) -> RunResult:
    cases = [
        CaseResult(
            case_id=f"case-{i:04d}-" + "x" * 60,
            input={},
            expected=None,
            output={},
            scores=[],
            score=1.0 if i < passed_cases else 0.0,
            passed=i < passed_cases,
        )
        for i in range(total)
    ]
    return RunResult("r1", "s", "w", "local", "router", "2025-01-01T00:00:00Z", threshold, threshold, cases)


def terminated_pod(message: str, *, exit_code: int = 0, job: str = "g-eval-0123456789") -> dict[str, Any]:
    return {
        "metadata": {"labels": {JOB_LABEL: job}},
        "status": {
            "containerStatuses": [
                {
                    "name": "eval",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "finishedAt": "2025-01-01T00:01:00Z",
                        }
                    },
                }
            ]
        },
    }


def test_summary_fits_the_termination_message_and_reads_back_as_the_status_model() -> None:
    run = _run(passed_cases=10, total=1000)
    reasons = ["aggregate score 0.010 is below the threshold 1"]
    text = run_summary(run, reasons)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    back = run_from_pod(terminated_pod(text, exit_code=1))
    assert back is not None
    assert (back.passed, back.cases, back.passed_cases, back.reasons) == (False, 1000, 10, reasons)
    assert back.job_name == "g-eval-0123456789" and back.finished_at == "2025-01-01T00:01:00Z"
    assert 0 < len(back.failed_cases) <= 20
    ok = run_from_pod(terminated_pod(run_summary(_run(3, 3), [])))
    assert ok is not None and ok.passed and ok.score == 1.0


def test_a_regression_against_the_suites_baseline_reaches_status_with_its_cases() -> None:
    """spec.baseline is the gate on a cluster: the Job compares with it, the status names it."""
    spec = parse_suite(
        {
            "worker": "w",
            "threshold": 0.5,
            "scorers": [{"type": "schema"}],
            "cases": [{"id": f"c{i}", "input": {}} for i in range(3)],
            "baseline": {"name": "golden", "runId": "r0", "scores": {"c0": 1.0, "c1": 1.0, "c2": 0.0}},
        },
        "suite",
    )
    base = inline_baseline(spec)
    assert base is not None and [c.passed for c in base.cases] == [True, True, False]
    run = _run(passed_cases=1, total=3, threshold=0.3)  # case-0000 passes; ids differ from the baseline's
    run.cases = [replace(c, case_id=f"c{i}") for i, c in enumerate(run.cases)]
    comparison = compare_runs(run, base, name="golden", tolerance=0.0)
    reasons = gate(run, comparison)
    assert reasons and "regressed against baseline 'golden': c1" in reasons[0]
    back = run_from_pod(terminated_pod(run_summary(run, reasons, comparison), exit_code=1))
    assert back is not None and not back.passed
    assert (back.baseline, back.regressed_cases) == ("golden", ["c1"])
    # 1,000 regressed cases still fit the termination message; the verdict and baseline are kept.
    many = _run(passed_cases=0, total=1000, threshold=0.0)
    all_passed = EvalBaseline(name="golden", scores={c.case_id: 1.0 for c in many.cases})
    everything = inline_baseline(spec.model_copy(update={"baseline": all_passed}))
    assert everything is not None
    lots = compare_runs(many, everything, name="golden", tolerance=0.0)
    text = run_summary(many, gate(many, lots), lots)
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    kept = run_from_pod(terminated_pod(text, exit_code=1))
    assert kept is not None and not kept.passed and kept.baseline == "golden"
    assert 0 < len(kept.regressed_cases) <= 20


def test_a_pod_without_a_verdict_is_a_failed_run_that_says_why() -> None:
    run = run_from_pod(terminated_pod("loom eval: invalid suite:\n  cases[0]: ...", exit_code=2))
    assert run is not None and not run.passed
    assert "exit code 2" in run.reasons[0] and "invalid suite" in run.reasons[0]
    running = terminated_pod("")
    running["status"]["containerStatuses"][0]["state"] = {"running": {}}
    assert run_from_pod(running) is None
    assert run_from_pod({"metadata": {"labels": {}}, "status": {}}) is None


def test_a_failed_job_is_a_failed_run_and_phases_follow_the_verdict() -> None:
    job = {
        "metadata": {"name": "g-eval-0123456789"},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]},
    }
    failed = run_from_job(job)
    assert failed is not None and not failed.passed and "DeadlineExceeded" in failed.reasons[0]
    assert run_from_job({"metadata": {"name": "j"}, "status": {}}) is None
    assert eval_phase("j", None).state == "progressing"
    assert (
        eval_phase("j", EvalRun(job_name="j", passed=True, score=1.0, cases=1, passed_cases=1)).state
        == "ready"
    )
    phase = eval_phase("j", failed)
    assert (phase.state, phase.reason) == ("stalled", EVAL_FAILED)
    assert json.loads(json.dumps(failed.to_manifest_dict()))["jobName"] == "g-eval-0123456789"


def test_a_suite_named_like_its_worker_shares_no_object_name_with_it() -> None:
    from loom_operator.render import render_worker

    same = Owner("Worker", OWNER.name, OWNER.namespace)
    worker_names = {(o["kind"], o["metadata"]["name"]) for o in render_worker(same, worker().spec, GENERATED)}
    suite_names = {(o["kind"], o["metadata"]["name"]) for o in render(settings=GENERATED)}
    assert not worker_names & suite_names


def test_the_job_waits_for_every_worker_of_its_type_and_the_router_serving_it() -> None:
    """Applied all at once, the suite's cases must not race the pods they test."""
    waits = job_waits_for("doc-extractor", {"b": False, "a": False, "c": True}, "default", True)
    assert waits is not None and "Worker a, b (worker type 'doc-extractor')" in waits
    no_router = job_waits_for("doc-extractor", {"a": True}, None, False)
    assert no_router is not None and "RouterPolicy in this namespace" in no_router
    router = job_waits_for("doc-extractor", {"a": True}, "default", False)
    assert router is not None and "router of RouterPolicy 'default'" in router and "catalog" in router
    assert job_waits_for("doc-extractor", {"a": True, "b": True}, "default", True) is None
