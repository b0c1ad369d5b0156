"""``loom eval`` as CI runs it: a real subprocess, the worker's real engine against fake provider
servers speaking the OpenAI and Anthropic wire formats, the router of a real NATS, and (slow) the
real local model on the sample workers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.fakes.llm_server import FakeLLMServer, Reply, last_user_text
from tests.support.processes import LoomProcesses, loom_procs, run_cli

from loom.api.status import EvalRun

__all__ = ["loom_procs"]

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "config" / "samples"
EVALS = ROOT / "config" / "evals"

CATEGORIES = ["invoice", "contract", "news", "other"]


def classify(body: dict[str, Any]) -> Reply:
    """A fake model that finds the category named in the text, unless the prompt says STRICT, which
    makes it refuse contracts (the deliberate regression)."""
    system = next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), "")
    text = last_user_text(body).lower()
    found = next((c for c in CATEGORIES if c in text), "other")
    if "STRICT" in system and found == "contract":
        found = "other"
    return Reply(json={"category": found})


def write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def worker_doc(prompt: str) -> dict[str, Any]:
    return {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": "classifier"},
        "spec": {
            "workerKind": "llm",
            "systemPrompt": prompt,
            "defaultModelTier": "standard",
            "tiers": ["standard"],
            "inputSchema": {
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string"}},
            },
            "outputSchema": {
                "type": "object",
                "required": ["category"],
                "additionalProperties": False,
                "properties": {"category": {"type": "string", "enum": CATEGORIES}},
            },
            "outputRetries": 1,
            "timeoutSeconds": 30,
        },
    }


def policy_doc(openai: FakeLLMServer, judge: FakeLLMServer | None = None) -> dict[str, Any]:
    tiers: list[dict[str, Any]] = [
        {"name": "standard", "backend": "openai", "model": "m-1", "baseUrl": openai.url, "maxRetries": 0}
    ]
    urls = [openai.root_url]
    if judge is not None:
        tiers.append(
            {
                "name": "judge",
                "backend": "anthropic",
                "model": "judge-1",
                "baseUrl": judge.url,
                "apiKeyEnv": "JUDGE_API_KEY",
                "maxRetries": 0,
            }
        )
        urls.append(judge.root_url)
    return {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "RouterPolicy",
        "metadata": {"name": "default"},
        "spec": {"tiers": tiers, "modelEndpoints": {"allowedUrls": urls}},
    }


def suite_doc(**extra: Any) -> dict[str, Any]:
    return {
        "name": "classifier-evals",
        "worker": "classifier",
        "threshold": 0.5,
        "regressionTolerance": 0.0,
        "scorers": [{"type": "fields", "fields": [{"path": "/category"}], "weight": 3}, {"type": "schema"}],
        "cases": [
            {
                "id": "invoice",
                "input": {"text": "An invoice for 3 chairs"},
                "expected": {"category": "invoice"},
            },
            {
                "id": "contract",
                "input": {"text": "This contract binds"},
                "expected": {"category": "contract"},
            },
            {"id": "news", "input": {"text": "Today's news"}, "expected": {"category": "news"}},
        ],
        **extra,
    }


async def loom_eval(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``loom eval`` as a process while this loop keeps serving the fakes."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loom.cli.main",
        "eval",
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def openai() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("openai", default=classify) as server:
        yield server


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("anthropic") as server:
        yield server


async def test_a_prompt_change_that_breaks_a_case_fails_the_gate(
    tmp_path: Path, openai: FakeLLMServer
) -> None:
    worker = write(tmp_path / "worker.yaml", worker_doc("Sort the document into a category."))
    write(tmp_path / "policy.yaml", policy_doc(openai))
    suite = write(tmp_path / "suite.yaml", suite_doc())
    store = tmp_path / "runs.sqlite"

    code, out, err = await loom_eval(
        suite, tmp_path, "--store", store, "--save-baseline", "golden", "--junit", tmp_path / "j1.xml"
    )
    assert code == 0, err
    assert "aggregate 1.000" in out and "3/3 cases pass" in out and "as baseline 'golden'" in out
    first = ET.parse(tmp_path / "j1.xml").getroot()
    assert first.find("testsuite").get("failures") == "0"  # type: ignore[union-attr]
    assert len(openai.requests) == 3

    write(worker, worker_doc("Sort the document into a category. STRICT."))  # the deliberate change
    code, out, err = await loom_eval(
        suite, tmp_path, "--store", store, "--baseline", "golden", "--junit", tmp_path / "j2.xml"
    )
    assert code == 1, out + err
    assert "STRICT" in openai.requests[-1]["messages"][0]["content"]  # the engine sent the new prompt
    assert "regressed against baseline 'golden': contract" in err
    assert "aggregate score" not in err  # 2/3 cases still pass: above the threshold, failed by the regression
    assert "1 regressed" in out and "2 unchanged" in out
    suite_el = ET.parse(tmp_path / "j2.xml").getroot().find("testsuite")
    assert suite_el is not None and suite_el.get("failures") == "1"
    failed = [tc for tc in suite_el.iter("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failed] == ["contract"]
    failure = failed[0].find("failure")
    assert failure is not None and "1.000 -> 0.250" in (failure.get("message") or "")
    assert '"category": "other"' in (failure.text or "")

    # the same change held to a higher threshold also fails on the aggregate
    code, _, err = await loom_eval(suite, tmp_path, "--store", store, "--threshold", "0.9")
    assert code == 1 and "aggregate score 0.750 is below the threshold 0.9" in err

    # The GitOps form of the same gate: the baseline exported into the suite (no store needed where
    # the suite runs, e.g. an EvalSuite's Job), and the verdict the operator writes to status.
    code, exported, err = await loom_eval(suite, tmp_path, "--store", store, "--export-baseline", "golden")
    assert code == 0, err
    baseline = yaml.safe_load(exported)["baseline"]
    assert baseline["name"] == "golden"
    assert baseline["scores"] == {"invoice": 1.0, "contract": 1.0, "news": 1.0}
    gitops = write(tmp_path / "gitops.yaml", suite_doc(baseline=baseline))
    summary = tmp_path / "summary.json"
    code, out, err = await loom_eval(
        gitops, tmp_path, "--store", tmp_path / "fresh.sqlite", "--summary-file", summary
    )
    assert code == 1, out + err
    assert "regressed against baseline 'golden': contract" in err
    verdict = EvalRun.model_validate_json(summary.read_text())
    assert not verdict.passed and verdict.baseline == "golden" and verdict.regressed_cases == ["contract"]
    # A baseline that does not name its cases' scores within 0 and 1 is refused with the reason.
    bad = write(tmp_path / "bad-baseline.yaml", suite_doc(baseline={"name": "x", "scores": {"invoice": 2}}))
    code, _, err = await loom_eval(bad, tmp_path, "--store", store)
    assert code == 2 and "scores must be within 0 and 1" in err



async def test_json_run_keeps_raw_replies_retries_tokens_and_the_judges_reasoning(
    tmp_path: Path, openai: FakeLLMServer, anthropic: FakeLLMServer
) -> None:
    write(tmp_path / "worker.yaml", worker_doc("Sort the document into a category."))
    write(tmp_path / "policy.yaml", policy_doc(openai, anthropic))
    doc = suite_doc()
    doc["cases"] = doc["cases"][:1]
    doc["scorers"].append({"type": "judge", "tier": "judge", "rubric": "Is the category right?", "weight": 2})
    suite = write(tmp_path / "suite.yaml", doc)
    openai.push(Reply(text="I think it is an invoice."), Reply(json={"category": "invoice"}, model="m-1-v2"))
    anthropic.push(Reply(json={"reasoning": "Right category, no hedging.", "score": 0.5}, prompt_tokens=40))

    code, out, err = await loom_eval(
        suite, tmp_path, "--store", tmp_path / "s.sqlite", "--json", env={"JUDGE_API_KEY": "sk-ant-judge"}
    )
    assert code == 0, err
    report = json.loads(out)
    case = report["run"]["cases"][0]
    assert case["output"] == {"category": "invoice"}
    assert case["raw_replies"] == ["I think it is an invoice.", '{"category": "invoice"}']
    assert case["retries"] == 1 and case["model"] == "m-1-v2"
    assert (case["prompt_tokens"], case["completion_tokens"]) == (22, 14)
    judge = next(s for s in case["scores"] if s["type"] == "judge")
    assert judge["score"] == 0.5 and judge["details"]["reasoning"] == "Right category, no hedging."
    assert case["judge_tokens"] == 47
    assert case["score"] == pytest.approx((3 * 1 + 1 * 1 + 2 * 0.5) / 6)
    assert report["gate"] == {"passed": True, "reasons": []}
    # the judge saw the rubric, the input, the expected and the actual output, and its key
    judged = last_user_text(anthropic.requests[0])
    assert "Is the category right?" in judged and "An invoice for 3 chairs" in judged
    assert any("sk-ant-judge" in v for v in anthropic.headers[0].values())


async def test_an_unreadable_verdict_scores_zero_with_its_reason(
    tmp_path: Path, openai: FakeLLMServer, anthropic: FakeLLMServer
) -> None:
    write(tmp_path / "worker.yaml", worker_doc("Sort."))
    write(tmp_path / "policy.yaml", policy_doc(openai, anthropic))
    doc = suite_doc(scorers=[{"type": "judge", "tier": "judge", "rubric": "r"}])
    doc["cases"] = doc["cases"][:1]
    suite = write(tmp_path / "suite.yaml", doc)
    anthropic.push(Reply(text="Looks fine to me!"))
    code, out, err = await loom_eval(
        suite, tmp_path, "--store", tmp_path / "s.sqlite", env={"JUDGE_API_KEY": "k"}
    )
    assert code == 1
    assert "no JSON verdict in the judge's reply" in out
    assert "aggregate score 0.000 is below the threshold 0.5" in err


def test_bad_input_exits_2_with_the_reason(tmp_path: Path) -> None:
    bad_suite = write(tmp_path / "bad.yaml", {"worker": "doc-classifier", "cases": [{"id": "a"}]})
    out = run_cli("eval", str(bad_suite), str(SAMPLES))
    assert (
        out.returncode == 2
        and "invalid suite" in out.stderr
        and "cases.0.input: Field required" in out.stderr
    )

    ghost = write(tmp_path / "ghost.yaml", {**suite_doc(), "worker": "ghost"})
    out = run_cli("eval", str(ghost), str(SAMPLES), "--store", str(tmp_path / "s.sqlite"))
    assert out.returncode == 2 and "no Worker 'ghost' in the given paths (found: doc-classifier" in out.stderr

    extractor = EVALS / "doc-extractor.yaml"
    out = run_cli("eval", str(extractor), str(SAMPLES), "--tier", "frontier", "--store", str(tmp_path / "s"))
    assert out.returncode == 2 and "does not serve tier 'frontier'" in out.stderr
    out = run_cli("eval", str(extractor), str(SAMPLES), "--baseline", "nope", "--store", str(tmp_path / "s"))
    assert out.returncode == 2 and "has no baseline 'nope'" in out.stderr
    out = run_cli("eval", str(extractor), str(tmp_path / "missing"), "--store", str(tmp_path / "s"))
    assert out.returncode == 2 and "cannot read" in out.stderr
    out = run_cli("eval", str(extractor), str(SAMPLES), "--threshold", "2", "--store", str(tmp_path / "s"))
    assert out.returncode == 2 and "--threshold must be between 0 and 1" in out.stderr


def test_processor_suite_passes_in_the_engine(tmp_path: Path) -> None:
    out = run_cli(
        "eval", str(EVALS / "doc-extractor.yaml"), str(SAMPLES), "--json", "--store", str(tmp_path / "s")
    )
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["run"]
    assert run["mode"] == "engine" and run["summary"]["score"] == 1.0
    assert all(c["model"] == "loom.contrib.docs.facts" for c in run["cases"])


@pytest.mark.integration
async def test_through_the_router_of_a_running_system(
    tmp_path: Path, loom_procs: LoomProcesses, nats_url: str
) -> None:
    loom_procs.router(SAMPLES / "router-policy.yaml", SAMPLES / "worker-doc-extractor.yaml")
    loom_procs.worker(SAMPLES / "worker-doc-extractor.yaml", "local")
    out = await asyncio.to_thread(
        run_cli,
        "eval",
        str(EVALS / "doc-extractor.yaml"),
        str(SAMPLES),
        "--nats-url",
        nats_url,
        "--json",
        "--store",
        str(tmp_path / "s.sqlite"),
        "--timeout",
        "30",
    )
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["run"]
    assert run["mode"] == "router" and run["summary"]["score"] == 1.0
    assert [c["output"]["title"] for c in run["cases"]] == ["INVOICE #2291", "Quarterly report"]
    assert all(c["raw_replies"] is None for c in run["cases"])  # not on the wire
    # no worker for the tier: the router's failure reaches the report, the gate fails
    loom_procs.procs[-1].terminate()
    out = await asyncio.to_thread(
        run_cli,
        "eval",
        str(EVALS / "doc-extractor.yaml"),
        str(SAMPLES),
        "--nats-url",
        nats_url,
        "--store",
        str(tmp_path / "s.sqlite"),
        "--timeout",
        "3",
    )
    assert out.returncode == 1 and "no result within 3s" in out.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sample_suite_with_the_real_local_model(tmp_path: Path) -> None:
    """The shipped classifier suite on SmolLM2-135M: it reaches its threshold; taking 'news' out of
    the worker's categories (the model decodes to the schema) regresses that case: exit 1."""
    store = tmp_path / "runs.sqlite"
    out = run_cli(
        "eval",
        str(EVALS / "doc-classifier.yaml"),
        str(SAMPLES),
        "--store",
        str(store),
        "--json",
        "--save-baseline",
        "golden",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["run"]
    print(f"doc-classifier on the local model: {run['summary']}")
    assert run["summary"]["score"] >= 0.5
    news = next(c for c in run["cases"] if c["case_id"] == "news")
    assert news["passed"], news
    assert all(c["prompt_tokens"] > 0 and c["model"] for c in run["cases"])
    assert all(c["raw_replies"] for c in run["cases"])

    changed = tmp_path / "samples"
    changed.mkdir()
    (changed / "router-policy.yaml").write_text((SAMPLES / "router-policy.yaml").read_text())
    worker = yaml.safe_load((SAMPLES / "worker-doc-classifier.yaml").read_text())
    enum = worker["spec"]["outputSchema"]["properties"]["category"]["enum"]
    enum.remove("news")
    write(changed / "worker-doc-classifier.yaml", worker)
    out = run_cli(
        "eval",
        str(EVALS / "doc-classifier.yaml"),
        str(changed),
        "--store",
        str(store),
        "--baseline",
        "golden",
        "--junit",
        str(tmp_path / "junit.xml"),
        timeout=600,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "regressed against baseline 'golden'" in out.stderr and "news" in out.stderr
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    failed = {tc.get("name") for tc in junit.iter("testcase") if tc.find("failure") is not None}
    assert "news" in failed


async def test_cases_in_flight_together_keep_their_own_replies(tmp_path: Path, openai: FakeLLMServer) -> None:
    openai.delay = 0.3
    write(tmp_path / "worker.yaml", worker_doc("Sort the document into a category."))
    write(tmp_path / "policy.yaml", policy_doc(openai))
    suite = write(tmp_path / "suite.yaml", suite_doc(concurrency=3))
    code, out, err = await loom_eval(suite, tmp_path, "--store", tmp_path / "s.sqlite", "--json")
    assert code == 0, err
    assert openai.max_in_flight == 3
    for case in json.loads(out)["run"]["cases"]:
        assert [json.loads(r) for r in case["raw_replies"]] == [case["expected"]], case


def test_a_case_the_worker_refuses_scores_zero_with_the_workers_reason(tmp_path: Path) -> None:
    suite = write(
        tmp_path / "suite.yaml",
        {
            "worker": "doc-extractor",
            "threshold": 0.5,
            "scorers": [{"type": "schema"}],
            "cases": [
                {"id": "fine", "input": {"text": "Hello there."}},
                {"id": "empty", "input": {"text": ""}},
            ],
        },
    )
    out = run_cli("eval", str(suite), str(SAMPLES), "--json", "--store", str(tmp_path / "s.sqlite"))
    assert out.returncode == 0, out.stderr  # 0.5 reaches the threshold
    cases = {c["case_id"]: c for c in json.loads(out.stdout)["run"]["cases"]}
    assert cases["fine"]["passed"] and cases["fine"]["score"] == 1.0
    empty = cases["empty"]
    assert not empty["passed"] and empty["output"] is None and empty["error_code"] == "invalid_input"
    assert "text: '' should be non-empty" in empty["error"]
    assert empty["scores"][0]["error"].startswith("no output: payload does not match input_schema")


async def test_a_judge_that_cannot_be_reached_scores_zero_and_says_why(
    tmp_path: Path, openai: FakeLLMServer, anthropic: FakeLLMServer
) -> None:
    write(tmp_path / "worker.yaml", worker_doc("Sort."))
    write(tmp_path / "policy.yaml", policy_doc(openai, anthropic))
    doc = suite_doc(threshold=0.3)
    doc["cases"] = doc["cases"][:1]
    doc["scorers"].append({"type": "judge", "tier": "judge", "rubric": "r"})
    suite = write(tmp_path / "suite.yaml", doc)
    anthropic.push(Reply(status=401, error="invalid x-api-key"))
    code, out, err = await loom_eval(
        suite, tmp_path, "--store", tmp_path / "s.sqlite", "--json", env={"JUDGE_API_KEY": "wrong"}
    )
    assert code == 0, err
    judge = json.loads(out)["run"]["cases"][0]["scores"][-1]
    assert judge["score"] == 0.0 and judge["error"].startswith("judge call failed:")
    assert "HTTP 401" in judge["error"]


def test_an_eval_suite_manifest_runs_unchanged_and_leaves_its_verdict_in_the_summary_file(
    tmp_path: Path,
) -> None:
    """What an EvalSuite's Job does on a cluster: the custom resource as the suite file, and the
    verdict in at most 4 KB of JSON that the operator reads back as status.lastRun."""
    from loom.api.status import EvalRun

    plain = yaml.safe_load((EVALS / "doc-extractor.yaml").read_text())
    plain.pop("name")
    manifest = {"apiVersion": "loom.dev/v1alpha1", "kind": "EvalSuite", "metadata": {"name": "gate"}}
    good = write(tmp_path / "good.yaml", {**manifest, "spec": plain})
    summary = tmp_path / "summary.json"
    args = [str(SAMPLES), "--store", str(tmp_path / "s"), "--summary-file", str(summary)]
    out = run_cli("eval", str(good), *args)
    assert out.returncode == 0, out.stderr
    verdict = EvalRun.model_validate_json(summary.read_text())
    assert verdict.passed and verdict.score == 1.0 and verdict.cases == len(plain["cases"])
    plain["cases"][0]["expected"]["title"] = "RECEIPT"
    bad = write(tmp_path / "bad.yaml", {**manifest, "spec": plain})
    out = run_cli("eval", str(bad), *args)
    assert out.returncode == 1
    verdict = EvalRun.model_validate_json(summary.read_text())
    assert not verdict.passed and verdict.failed_cases == [plain["cases"][0]["id"]]
    assert "below the threshold" in verdict.reasons[0]
    assert len(summary.read_bytes()) <= 4096


GATE = """
apiVersion: loom.dev/v1alpha1
kind: EvalSuite
metadata: {name: extractor-judged}
spec:
  worker: doc-extractor
  threshold: 0.5
  caseTimeoutSeconds: 30
  scorers:
    - type: schema
    - {type: judge, tier: judge, rubric: "Is the title the document's first line?"}
  cases:
    - id: invoice
      input: {text: "INVOICE #2291\\nTotal due: 1,250.00 EUR."}
"""


@pytest.mark.integration
async def test_an_eval_suites_job_runs_its_judges_from_what_the_operator_mounts(
    tmp_path: Path, loom_procs: LoomProcesses, nats_url: str, anthropic: FakeLLMServer
) -> None:
    """The operator's rendered Job, run as the kubelet would: its ConfigMap files as the mount, its
    environment with the Secret's key, its arguments unchanged; the judge scores through them."""
    from loom.api import RouterPolicySpec, load_paths, load_text
    from loom_operator.dispatch import PolicyEntry, WorkerEntry, render_resource
    from loom_operator.render import Owner, worker_route
    from loom_operator.render.eval_suite import MOUNT, TERMINATION_LOG
    from loom_operator.settings import Settings

    loom_procs.router(SAMPLES / "router-policy.yaml", SAMPLES / "worker-doc-extractor.yaml")
    loom_procs.worker(SAMPLES / "worker-doc-extractor.yaml", "local")
    (w,) = load_paths([SAMPLES / "worker-doc-extractor.yaml"])
    entry = WorkerEntry(w.name, w.spec.worker_type, worker_route(w.spec), tuple(w.spec.served_tiers), w.spec)
    judge_tier = {
        "name": "judge",
        "backend": "anthropic",
        "model": "judge-1",
        "baseUrl": anthropic.url,
        "maxRetries": 0,
        "apiKeySecretRef": {"name": "judge-key", "key": "api-key"},
    }
    spec = RouterPolicySpec.model_validate(
        {
            "tiers": [{"name": "local", "backend": "local"}, judge_tier],
            "modelEndpoints": {"allowedUrls": [anthropic.root_url]},
        }
    )
    (suite_res,) = load_text(GATE, "gate.yaml")
    objects = render_resource(
        Owner("EvalSuite", "extractor-judged", "default"),
        suite_res,
        Settings(image="example.org/loom:test", nats_url=nats_url),
        keda=False,
        policies=(PolicyEntry("default", spec),),
        workers=(entry,),
        pipelines=(),
    )
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (job,) = [o for o in objects if o["kind"] == "Job"]
    mount = tmp_path / "mount"
    mount.mkdir()
    for key, text in cm["data"].items():
        (mount / key).write_text(text)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    secrets = {("judge-key", "api-key"): "sk-ant-from-secret"}
    env: dict[str, str] = {}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[(ref["name"], ref["key"])]
    summary = tmp_path / "termination-log"
    args = [
        a.replace(MOUNT, str(mount))
        .replace("$(LOOM_NATS_URL)", env["LOOM_NATS_URL"])
        .replace(TERMINATION_LOG, str(summary))
        .replace("/tmp/runs.sqlite", str(tmp_path / "runs.sqlite"))
        for a in c["args"]
    ]
    assert args[0] == "eval"
    anthropic.push(Reply(json={"reasoning": "The title is the first line.", "score": 1.0}))
    code, out, err = await loom_eval(*args[1:], env=env)
    assert code == 0, f"{out}\n{err}"
    verdict = json.loads(summary.read_text())
    assert verdict["passed"] is True and verdict["score"] == 1.0 and verdict["cases"] == 1
    # The judge saw the worker's real output (through the router) and the key from the Secret.
    assert "INVOICE #2291" in last_user_text(anthropic.requests[0])
    assert any("sk-ant-from-secret" in v for v in anthropic.headers[0].values())
