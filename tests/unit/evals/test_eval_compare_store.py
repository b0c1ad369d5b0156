"""Baseline comparison (improved / regressed / unchanged), the SQLite run store, and the reports."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from loom.evals.compare import Verdict, case_verdict, compare_runs
from loom.evals.report import gate, junit_xml, print_table, run_document
from loom.evals.runner import CaseResult, RunResult
from loom.evals.scorers import Score
from loom.evals.store import SqliteRunStore, StoreError, default_store_path


def case(case_id: str, score: float, passed: bool | None = None, **kw: object) -> CaseResult:
    return CaseResult(
        case_id=case_id,
        input={"text": case_id},
        expected={"category": "invoice"},
        output={"category": "invoice" if score else "other"},
        scores=[Score("fields", "fields", 1.0, score, {"fields": {}})],
        score=score,
        passed=score >= 0.5 if passed is None else passed,
        **kw,  # type: ignore[arg-type]
    )


def run(run_id: str, *cases: CaseResult, threshold: float = 0.5) -> RunResult:
    return RunResult(
        run_id=run_id,
        suite="s",
        worker="w",
        tier="local",
        mode="engine",
        started_at="2026-01-01T00:00:00+00:00",
        threshold=threshold,
        case_threshold=0.5,
        cases=list(cases),
    )


@pytest.mark.parametrize(
    ("before", "after", "verdict"),
    [
        ((1.0, True), (1.0, True), Verdict.UNCHANGED),
        ((0.9, True), (0.86, True), Verdict.UNCHANGED),  # a drop within the tolerance
        ((0.9, True), (0.85, True), Verdict.UNCHANGED),  # exactly the tolerance still is
        ((0.9, True), (0.84, True), Verdict.REGRESSED),  # more than the tolerance
        ((0.52, True), (0.49, False), Verdict.REGRESSED),  # pass -> fail, even within the tolerance
        ((0.49, False), (0.52, True), Verdict.IMPROVED),  # fail -> pass
        ((0.6, True), (0.7, True), Verdict.IMPROVED),
        ((0.1, False), (0.0, False), Verdict.REGRESSED),
    ],
)
def test_case_verdict(before: tuple[float, bool], after: tuple[float, bool], verdict: Verdict) -> None:
    assert case_verdict(case("c", *before), case("c", *after), 0.05) is verdict


def test_compare_runs_new_and_removed_cases() -> None:
    baseline = run("b1", case("a", 1.0), case("b", 1.0), case("gone", 1.0))
    now = run("r2", case("a", 1.0), case("b", 0.0), case("added", 0.0))
    cmp = compare_runs(now, baseline, name="golden", tolerance=0.0)
    assert [(c.case_id, c.verdict) for c in cmp.changes] == [
        ("a", Verdict.UNCHANGED),
        ("b", Verdict.REGRESSED),
        ("added", Verdict.NEW),
        ("gone", Verdict.REMOVED),
    ]
    assert [c.case_id for c in cmp.regressed] == ["b"]
    assert cmp.to_dict()["counts"] == {"improved": 0, "regressed": 1, "unchanged": 1, "new": 1, "removed": 1}
    assert gate(now, cmp) == [
        "aggregate score 0.333 is below the threshold 0.5",
        "1 case(s) regressed against baseline 'golden': b",
    ]
    assert gate(baseline, None) == []


def test_sqlite_store_round_trip_and_baselines(tmp_path: Path) -> None:
    assert default_store_path(tmp_path / "suite.yaml") == tmp_path / "suite.runs.sqlite"
    store = SqliteRunStore(tmp_path / "runs.sqlite")
    first = run("r1", case("a", 1.0, raw_replies=['{"category": "invoice"}'], retries=0, model="m"))
    store.save_run(first)
    assert store.run("r1") == first
    with pytest.raises(StoreError, match="no baseline saved yet"):
        store.baseline("s", "golden")
    store.save_baseline("s", "golden", "r1")
    second = run("r2", case("a", 0.0))
    store.save_run(second)
    assert store.baseline("s", "golden") == first
    assert [r.run_id for r in store.runs("s")] == ["r2", "r1"]
    store.save_baseline("s", "golden", "r2")  # a baseline name moves to a newer run
    assert store.baseline("s", "golden").run_id == "r2"
    assert store.baselines("s") == {"golden": "r2"}
    with pytest.raises(StoreError, match="baselines: golden"):
        store.baseline("s", "other")
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.save_baseline("s", "x", "nope")
    # another process opening the same file sees the same data
    assert SqliteRunStore(tmp_path / "runs.sqlite").baseline("s", "golden").cases[0].score == 0.0


def test_store_that_cannot_be_opened_says_where(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the run store"):
        SqliteRunStore(tmp_path / "no-such-dir" / "runs.sqlite").runs("s")


def test_junit_lists_failed_and_regressed_cases_and_the_aggregate() -> None:
    baseline = run("b1", case("a", 1.0), case("b", 1.0), case("c", 0.0))
    now = run("r2", case("a", 1.0), case("b", 0.0, error="boom"), case("c", 0.0), threshold=0.9)
    cmp = compare_runs(now, baseline, name="golden", tolerance=0.0)
    root = ET.fromstring(junit_xml(now, cmp))
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "4" and suite.get("failures") == "3"
    failures = {tc.get("name"): tc.find("failure") for tc in suite.iter("testcase")}
    assert failures["a"] is None
    b = failures["b"]
    assert b is not None and "regressed against baseline 'golden': 1.000 -> 0.000" in (b.get("message") or "")
    assert "error: boom" in (b.text or "")
    assert failures["c"] is not None and "regressed" not in (failures["c"].get("message") or "")
    agg = failures["aggregate-score"]
    assert agg is not None and "below the threshold 0.9" in (agg.get("message") or "")


def test_table_and_json_report() -> None:
    judged = case("a", 0.5)
    judged.scores.append(Score("judge", "judge", 1.0, 0.5, {"reasoning": "half right"}))
    now = run("r1", judged)
    out = io.StringIO()
    print_table(now, None, out)
    text = out.getvalue()
    assert "a" in text and "0.500" in text and "PASS" in text and "half right" in text
    doc = run_document(now, None, gate(now, None))
    assert json.loads(json.dumps(doc))["run"]["summary"]["score"] == 0.5
    assert doc["gate"] == {"passed": True, "reasons": []}
    assert RunResult.from_dict(doc["run"]) == now


def test_gate_names_the_errors_of_cases_that_produced_nothing() -> None:
    """A failed gate says why its cases failed (what a CI log or an EvalSuite's status shows)."""
    errors = [case(f"c{i}", 0.0, error=f"no result within 60 s (try {i})") for i in range(5)]
    now = run("r", case("ok", 1.0), *errors, threshold=0.9)
    assert gate(now, None) == [
        "aggregate score 0.167 is below the threshold 0.9",
        "case c0: no result within 60 s (try 0)",
        "case c1: no result within 60 s (try 1)",
        "case c2: no result within 60 s (try 2)",
        "2 more case(s) ended in an error",
    ]
    # a passing run lists no case errors, even when a case had one
    assert gate(run("p", case("ok", 1.0), case("bad", 0.0, error="boom"), threshold=0.5), None) == []
