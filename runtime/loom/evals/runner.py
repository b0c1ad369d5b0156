"""One run of a suite: every case through a target, then scored; the run's results and aggregate.

The results are plain data (``to_dict``/``from_dict``) so a store, a report, the Workshop or an
EvalSuite's status can hold them without this module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loom.evals.judge import judge
from loom.evals.scorers import Score, failed_score, score_deterministic, weighted
from loom.evals.suite import EvalCase, EvalSuite, JudgeScorer
from loom.evals.targets import CaseOutput, Target
from loom.llm.base import Provider


@dataclass
class CaseResult:
    """One case: its input, expected and actual output, how it was made, and its scores."""

    case_id: str
    input: dict[str, Any]
    expected: dict[str, Any] | None
    output: dict[str, Any] | None
    scores: list[Score]
    score: float
    passed: bool
    error: str | None = None
    error_code: str | None = None
    raw_replies: list[str] | None = None
    retries: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judge_tokens: int = 0
    latency_ms: float = 0.0
    model: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "scores"}
        doc["scores"] = [s.to_dict() for s in self.scores]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CaseResult:
        body = dict(doc)
        body["scores"] = [Score.from_dict(s) for s in body.get("scores", [])]
        return cls(**body)


@dataclass
class RunResult:
    """A whole run: which suite, worker, tier and way, each case, and the thresholds it was held to."""

    run_id: str
    suite: str
    worker: str
    tier: str | None
    mode: str
    started_at: str
    threshold: float
    case_threshold: float
    cases: list[CaseResult] = field(default_factory=list)
    duration_ms: float = 0.0

    @property
    def score(self) -> float:
        """The aggregate: the mean of the case scores."""
        return sum(c.score for c in self.cases) / len(self.cases) if self.cases else 0.0

    @property
    def passed(self) -> bool:
        return self.score >= self.threshold

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.cases)

    @property
    def judge_tokens(self) -> int:
        return sum(c.judge_tokens for c in self.cases)

    @property
    def latency_ms(self) -> float:
        """Mean latency of one case."""
        return sum(c.latency_ms for c in self.cases) / len(self.cases) if self.cases else 0.0

    def case(self, case_id: str) -> CaseResult | None:
        return next((c for c in self.cases if c.case_id == case_id), None)

    def to_dict(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "cases"}
        doc["cases"] = [c.to_dict() for c in self.cases]
        doc["summary"] = {
            "score": self.score,
            "passed": self.passed,
            "cases": len(self.cases),
            "cases_passed": sum(c.passed for c in self.cases),
            "tokens": self.tokens,
            "judge_tokens": self.judge_tokens,
            "mean_latency_ms": self.latency_ms,
        }
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RunResult:
        body = {k: v for k, v in doc.items() if k != "summary"}
        body["cases"] = [CaseResult.from_dict(c) for c in body.get("cases", [])]
        return cls(**body)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def score_case(
    suite: EvalSuite,
    case: EvalCase,
    out: CaseOutput,
    *,
    worker_schema: dict[str, Any] | None,
    judges: Mapping[str | None, Provider],
) -> CaseResult:
    """Score one case's output with every scorer that applies to it."""
    scores: list[Score] = []
    judge_tokens = 0
    for scorer in suite.scorers_for(case):
        if out.output is None:
            scores.append(failed_score(scorer, f"no output: {out.error or 'the worker returned none'}"))
        elif isinstance(scorer, JudgeScorer):
            provider = judges.get(scorer.tier)
            if provider is None:
                raise KeyError(f"no judge provider for tier {scorer.tier!r}")
            score, usage = await judge(scorer, provider, case.input, case.expected, out.output)
            judge_tokens += usage.prompt_tokens + usage.completion_tokens
            scores.append(score)
        else:
            scores.append(score_deterministic(scorer, out.output, case.expected, worker_schema))
    total = weighted(scores)
    return CaseResult(
        case_id=case.id,
        input=case.input,
        expected=case.expected,
        output=out.output,
        scores=scores,
        score=total,
        passed=out.output is not None and total >= suite.pass_score,
        error=out.error,
        error_code=out.error_code,
        raw_replies=out.raw_replies,
        retries=out.retries,
        prompt_tokens=out.tokens.prompt_tokens,
        completion_tokens=out.tokens.completion_tokens,
        judge_tokens=judge_tokens,
        latency_ms=out.latency_ms,
        model=out.model,
    )


async def run_suite(
    suite: EvalSuite,
    target: Target,
    *,
    tier: str | None,
    mode: str,
    worker_schema: dict[str, Any] | None,
    judges: Mapping[str | None, Provider] | None = None,
    threshold: float | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
) -> RunResult:
    """Run every case (``suite.concurrency`` at once) and score it. ``judges`` maps a judge tier
    (None: the suite's tier) to its provider; ``threshold`` overrides the suite's."""
    limit = asyncio.Semaphore(suite.concurrency)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def one(case: EvalCase) -> CaseResult:
        async with limit:
            out = await target.run(case.id, case.input)
            result = await score_case(suite, case, out, worker_schema=worker_schema, judges=judges or {})
        if on_case is not None:
            on_case(result)
        return result

    run = RunResult(
        run_id=uuid.uuid4().hex[:12],
        suite=suite.name,
        worker=suite.worker,
        tier=tier,
        mode=mode,
        started_at=now_iso(),
        threshold=suite.threshold if threshold is None else threshold,
        case_threshold=suite.pass_score,
    )
    run.cases = list(await asyncio.gather(*(one(c) for c in suite.cases)))
    run.duration_ms = (loop.time() - t0) * 1000
    return run
