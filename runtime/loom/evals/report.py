"""What a run looks like to a person (a table), to a program (JSON) and to CI (JUnit XML)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any, TextIO

from loom.api.status import EvalRun
from loom.evals.compare import Comparison, Verdict
from loom.evals.runner import CaseResult, RunResult

#: Case errors named among the gate's reasons (the rest are counted).
MAX_CASE_ERRORS = 3


def gate(run: RunResult, comparison: Comparison | None) -> list[str]:
    """Why the run fails the gate (empty when it passes): aggregate under threshold, regressions."""
    reasons = []
    if not run.passed:
        reasons.append(f"aggregate score {run.score:.3f} is below the threshold {run.threshold:g}")
        # A case that produced no output says why (a timeout, a dead letter): the number alone does not.
        errors = [c for c in run.cases if c.error]
        reasons += [f"case {c.case_id}: {c.error}" for c in errors[:MAX_CASE_ERRORS]]
        if len(errors) > MAX_CASE_ERRORS:
            reasons.append(f"{len(errors) - MAX_CASE_ERRORS} more case(s) ended in an error")
    if comparison is not None and comparison.regressed:
        ids = ", ".join(c.case_id for c in comparison.regressed)
        reasons.append(
            f"{len(comparison.regressed)} case(s) regressed against baseline "
            f"{comparison.baseline_name!r}: {ids}"
        )
    return reasons


#: Kubernetes keeps at most this many bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def run_summary(
    run: RunResult,
    reasons: list[str],
    comparison: Comparison | None = None,
    *,
    limit: int = TERMINATION_MESSAGE_LIMIT,
) -> str:
    """The run in a few numbers as compact JSON of at most ``limit`` bytes: what an EvalSuite's Job
    leaves in its termination message and the operator writes to status (``EvalRun``)."""
    failed = [c.case_id for c in run.cases if not c.passed]
    doc = EvalRun(
        passed=not reasons,
        score=round(run.score, 4),
        threshold=run.threshold,
        cases=len(run.cases),
        passed_cases=len(run.cases) - len(failed),
        failed_cases=failed[:20],
        reasons=[r[:400] for r in reasons[:10]],
        baseline=comparison.baseline_name if comparison is not None else None,
        regressed_cases=[c.case_id for c in comparison.regressed][:20] if comparison is not None else [],
    )
    text = json.dumps(doc.to_manifest_dict(), separators=(",", ":"), ensure_ascii=False)
    while len(text.encode()) > limit and (doc.failed_cases or doc.regressed_cases or doc.reasons):
        # Drop detail, never the verdict: case ids first, then reasons from the end.
        if doc.failed_cases or doc.regressed_cases:
            doc.failed_cases = doc.failed_cases[: len(doc.failed_cases) // 2]
            doc.regressed_cases = doc.regressed_cases[: len(doc.regressed_cases) // 2]
        else:
            doc.reasons = doc.reasons[:-1]
        text = json.dumps(doc.to_manifest_dict(), separators=(",", ":"), ensure_ascii=False)
    return text


def _scores_text(case: CaseResult) -> str:
    return ", ".join(f"{s.scorer} {s.score:.2f}" + (" !" if s.error else "") for s in case.scores)


def print_table(run: RunResult, comparison: Comparison | None, out: TextIO) -> None:
    """A per-case table, the aggregate, and the baseline comparison."""
    from rich.console import Console
    from rich.table import Table

    columns = ("case", "score", "pass", "scorers", "tokens", "ms", "retries", "model", "vs baseline", "error")
    title = f"eval {run.suite} — worker {run.worker}, tier {run.tier or '-'} ({run.mode})"
    table = Table(*columns, title=title)
    for case in run.cases:
        verdict = comparison.verdict_of(case.case_id) if comparison else None
        table.add_row(
            case.case_id,
            f"{case.score:.3f}",
            "PASS" if case.passed else "FAIL",
            _scores_text(case),
            str(case.tokens),
            f"{case.latency_ms:.0f}",
            "-" if case.retries is None else str(case.retries),
            case.model or "-",
            verdict.value if verdict else "-",
            (case.error or "")[:120],
        )
    console = Console(file=out, width=200)
    console.print(table)
    console.print(
        f"aggregate {run.score:.3f} (threshold {run.threshold:g}, case pass at {run.case_threshold:g}): "
        f"{sum(c.passed for c in run.cases)}/{len(run.cases)} cases pass; "
        f"tokens {run.tokens} (+{run.judge_tokens} judge); mean latency {run.latency_ms:.0f} ms; "
        f"run {run.run_id}",
        highlight=False,
    )
    for case in run.cases:
        for s in case.scores:
            if s.error:
                console.print(f"  {case.case_id} / {s.scorer}: {s.error}", highlight=False, markup=False)
            elif "reasoning" in s.details:
                console.print(
                    f"  {case.case_id} / {s.scorer} reasoning: {s.details['reasoning']}",
                    highlight=False,
                    markup=False,
                )
    if comparison is not None:
        counts = ", ".join(f"{len(comparison.of(v))} {v.value}" for v in Verdict if comparison.of(v))
        console.print(
            f"against baseline {comparison.baseline_name!r} (run {comparison.baseline_run_id}, "
            f"score {comparison.baseline_score:.3f}, tolerance {comparison.tolerance:g}): {counts}",
            highlight=False,
        )


def run_document(run: RunResult, comparison: Comparison | None, reasons: list[str]) -> dict[str, Any]:
    """The ``--json`` document: the run, the comparison and the gate's verdict."""
    return {
        "run": run.to_dict(),
        "comparison": comparison.to_dict() if comparison else None,
        "gate": {"passed": not reasons, "reasons": reasons},
    }


def _failure_text(case: CaseResult) -> str:
    lines = [f"score {case.score:.3f}"]
    if case.error:
        lines.append(f"error: {case.error}")
    for s in case.scores:
        lines.append(f"{s.scorer}: {s.score:.3f}" + (f" ({s.error})" if s.error else ""))
        if s.details:
            lines.append("  " + json.dumps(s.details, ensure_ascii=False, sort_keys=True)[:2000])
    lines.append("expected: " + json.dumps(case.expected, ensure_ascii=False, sort_keys=True))
    lines.append("actual: " + json.dumps(case.output, ensure_ascii=False, sort_keys=True))
    return "\n".join(lines)


def junit_xml(run: RunResult, comparison: Comparison | None) -> bytes:
    """One testsuite, one testcase per case; a failing or regressed case is a ``<failure>``, and the
    aggregate gate is its own testcase so a CI report shows why the run failed."""
    cases = ET.Element(
        "testsuite",
        name=f"loom-eval.{run.suite}",
        timestamp=run.started_at,
        time=f"{run.duration_ms / 1000:.3f}",
    )
    failures = 0
    for case in run.cases:
        tc = ET.SubElement(
            cases,
            "testcase",
            classname=f"{run.suite}.{run.worker}",
            name=case.case_id,
            time=f"{case.latency_ms / 1000:.3f}",
        )
        verdict = comparison.verdict_of(case.case_id) if comparison else None
        problems = []
        if not case.passed:
            problems.append(f"case failed: score {case.score:.3f} < {run.case_threshold:g}")
        if verdict is Verdict.REGRESSED and comparison is not None:
            before = next(c for c in comparison.changes if c.case_id == case.case_id)
            problems.append(
                f"regressed against baseline {comparison.baseline_name!r}: "
                f"{before.baseline_score:.3f} -> {case.score:.3f}"
            )
        if problems:
            failures += 1
            failure = ET.SubElement(tc, "failure", message="; ".join(problems), type="EvalFailure")
            failure.text = _failure_text(case)
        props = ET.SubElement(tc, "properties")
        for key, value in (
            ("score", f"{case.score:.4f}"),
            ("tokens", str(case.tokens)),
            ("model", case.model or ""),
            ("verdict", verdict.value if verdict else ""),
        ):
            ET.SubElement(props, "property", name=key, value=value)
    agg = ET.SubElement(cases, "testcase", classname=f"{run.suite}.aggregate", name="aggregate-score")
    if not run.passed:
        failures += 1
        ET.SubElement(
            agg,
            "failure",
            type="EvalThreshold",
            message=f"aggregate score {run.score:.3f} is below the threshold {run.threshold:g}",
        )
    cases.set("tests", str(len(run.cases) + 1))
    cases.set("failures", str(failures))
    cases.set("errors", "0")
    root = ET.Element("testsuites", name="loom-eval")
    root.append(cases)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
