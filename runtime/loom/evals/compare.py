"""A run against a golden baseline, case by case (pure).

A case **regressed** when it passed in the baseline and fails now, or when its score dropped by
more than the tolerance (``baseline - now > tolerance``). It **improved** when it failed and
passes now, or its score rose by more than the tolerance. Anything else is **unchanged**. A case
only in the run is **new**, one only in the baseline **removed**; neither counts as a regression
(the suite changed, not the worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from loom.api.eval_suite import EvalBaseline
from loom.evals.runner import CaseResult, RunResult
from loom.evals.suite import EvalSuite


class Verdict(StrEnum):
    IMPROVED = "improved"
    REGRESSED = "regressed"
    UNCHANGED = "unchanged"
    NEW = "new"
    REMOVED = "removed"


@dataclass(frozen=True)
class CaseChange:
    """One case compared with the baseline."""

    case_id: str
    verdict: Verdict
    baseline_score: float | None
    score: float | None
    baseline_passed: bool | None
    passed: bool | None

    @property
    def delta(self) -> float | None:
        if self.score is None or self.baseline_score is None:
            return None
        return self.score - self.baseline_score

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "verdict": self.verdict.value,
            "baseline_score": self.baseline_score,
            "score": self.score,
            "delta": self.delta,
            "baseline_passed": self.baseline_passed,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Comparison:
    """Every case's change, and the baseline's run."""

    baseline_name: str
    baseline_run_id: str
    baseline_score: float
    tolerance: float
    changes: tuple[CaseChange, ...]

    def of(self, verdict: Verdict) -> list[CaseChange]:
        return [c for c in self.changes if c.verdict is verdict]

    @property
    def regressed(self) -> list[CaseChange]:
        return self.of(Verdict.REGRESSED)

    def verdict_of(self, case_id: str) -> Verdict | None:
        return next((c.verdict for c in self.changes if c.case_id == case_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline_name,
            "baseline_run_id": self.baseline_run_id,
            "baseline_score": self.baseline_score,
            "tolerance": self.tolerance,
            "counts": {v.value: len(self.of(v)) for v in Verdict},
            "cases": [c.to_dict() for c in self.changes],
        }


#: Scores are sums of float shares: a drop of exactly the tolerance must not count as more.
_EPSILON = 1e-9


def case_verdict(before: CaseResult, after: CaseResult, tolerance: float) -> Verdict:
    """The verdict for a case present in both runs (see the module doc)."""
    limit = tolerance + _EPSILON
    if (before.passed and not after.passed) or before.score - after.score > limit:
        return Verdict.REGRESSED
    if (after.passed and not before.passed) or after.score - before.score > limit:
        return Verdict.IMPROVED
    return Verdict.UNCHANGED


def compare_runs(run: RunResult, baseline: RunResult, *, name: str, tolerance: float) -> Comparison:
    """Each case of ``run`` (in its order), then the baseline's cases the run no longer has."""
    changes: list[CaseChange] = []
    for case in run.cases:
        before = baseline.case(case.case_id)
        changes.append(
            CaseChange(
                case.case_id,
                Verdict.NEW if before is None else case_verdict(before, case, tolerance),
                None if before is None else before.score,
                case.score,
                None if before is None else before.passed,
                case.passed,
            )
        )
    for before in baseline.cases:
        if run.case(before.case_id) is None:
            changes.append(
                CaseChange(before.case_id, Verdict.REMOVED, before.score, None, before.passed, None)
            )
    return Comparison(name, baseline.run_id, baseline.score, tolerance, tuple(changes))


def inline_baseline(suite: EvalSuite) -> RunResult | None:
    """The suite's own ``baseline`` as a run to compare with; a case passed in it when its score
    reaches the suite's case threshold (the rule the run itself is held to)."""
    if suite.baseline is None:
        return None
    cases = [
        CaseResult(
            case_id=case_id,
            input={},
            expected=None,
            output=None,
            scores=[],
            score=score,
            passed=score >= suite.pass_score,
        )
        for case_id, score in suite.baseline.scores.items()
    ]
    return RunResult(
        run_id=suite.baseline.run_id or suite.baseline.name,
        suite=suite.name,
        worker=suite.worker,
        tier=suite.tier,
        mode="baseline",
        started_at="",
        threshold=suite.threshold,
        case_threshold=suite.pass_score,
        cases=cases,
    )


def baseline_of(run: RunResult, name: str) -> EvalBaseline:
    """A saved run as the ``baseline`` of a suite file (what ``loom eval --export-baseline`` prints)."""
    scores = {c.case_id: round(c.score, 4) for c in run.cases}
    return EvalBaseline(name=name, run_id=run.run_id, scores=scores)

