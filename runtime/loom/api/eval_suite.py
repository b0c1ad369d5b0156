"""The EvalSuite: which worker and tier, its cases, its scorers and the pass threshold.

One model for the suite file ``loom eval`` reads and for the EvalSuite custom resource the
operator runs as a Job (the cluster-only fields say so). Keys are accepted in snake_case and
camelCase like every Loom spec. A suite-level scorer applies to every case; a case's ``checks``
add scorers for that case only. Scorers that compare with the expected output need every case
they apply to to have one: the suite is refused otherwise, so a missing expectation is never
scored as a silent zero.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import Field, field_validator, model_validator

from loom.api.common import ResourceRequirements, SpecModel, TierName, WorkerType

#: A JSON Pointer (RFC 6901): empty for the whole document, else ``/a/0/b``.
POINTER_PATTERN = r"^(/([^~/]|~[01])*)*$"
Pointer = Annotated[str, Field(pattern=POINTER_PATTERN)]
Weight = Annotated[float, Field(gt=0, le=1000)]
#: Bounds that keep a suite inside one custom resource and its CEL rules inside their cost budget.
MAX_CASES = 1000
MAX_SCORERS = 32


class _Scorer(SpecModel):
    weight: Weight = Field(default=1.0, description="Share of this scorer in the case score.")
    name: str | None = Field(default=None, max_length=80, description="Label in reports (default: type).")

    def needs_expected(self) -> bool:
        """Whether the scorer compares with the case's expected output."""
        return False

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "type"))  # noqa: B009 - every subclass has its literal type


class ExactScorer(_Scorer):
    """1 when the output equals the expected output (as JSON values), else 0."""

    type: Literal["exact"]

    def needs_expected(self) -> bool:
        return True


class FieldWeight(SpecModel):
    """One field compared by JSON pointer, with its share of the scorer's score."""

    path: Pointer
    weight: Weight = 1.0


class FieldsScorer(_Scorer):
    """Per-field match: the weighted share of fields whose value equals the expected one."""

    type: Literal["fields"]
    fields: list[FieldWeight] = Field(
        default_factory=list,
        description="Fields to compare; empty means every top-level key of the case's expected output.",
    )

    def needs_expected(self) -> bool:
        return True


class SchemaScorer(_Scorer):
    """1 when the output is valid against a JSON Schema (default: the worker's output schema)."""

    type: Literal["schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class NumericScorer(_Scorer):
    """1 when the number at ``path`` is within the tolerance of the expected (or given) value."""

    type: Literal["numeric"]
    path: Pointer
    value: float | None = Field(default=None, description="Expected number (default: expected at path).")
    tolerance: float = Field(default=0.0, ge=0, description="Absolute tolerance.")
    relative: float = Field(default=0.0, ge=0, description="Tolerance as a share of the expected value.")

    def needs_expected(self) -> bool:
        return self.value is None


class ContainsScorer(_Scorer):
    """The share of ``values`` found in the text at ``path`` (mode all), or 1 if any is (mode any)."""

    type: Literal["contains"]
    path: Pointer = ""
    values: list[str] = Field(min_length=1)
    mode: Literal["all", "any"] = "all"
    case_sensitive: bool = False


class RegexScorer(_Scorer):
    """1 when the pattern is found in the text at ``path``, else 0."""

    type: Literal["regex"]
    path: Pointer = ""
    pattern: str = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class JudgeScorer(_Scorer):
    """A model scores the output against a rubric (0 to 1) and says why."""

    type: Literal["judge"]
    rubric: str = Field(min_length=1, max_length=20000)
    tier: TierName | None = Field(default=None, description="Tier of the judge (default: the suite's tier).")
    max_output_tokens: int = Field(default=400, ge=16, le=16000)


Scorer: TypeAlias = Annotated[
    ExactScorer | FieldsScorer | SchemaScorer | NumericScorer | ContainsScorer | RegexScorer | JudgeScorer,
    Field(discriminator="type"),
]


class EvalCase(SpecModel):
    """One input, and what a good output is."""

    id: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    input: dict[str, Any]
    expected: dict[str, Any] | None = None
    checks: list[Scorer] = Field(
        default_factory=list, max_length=MAX_SCORERS, description="Scorers for this case only."
    )
    description: str = ""


class EvalBaseline(SpecModel):
    """A golden baseline kept with the suite (in Git, for a GitOps gate): each case's score in the
    run it was taken from. ``loom eval --export-baseline NAME`` prints one from a saved baseline."""

    name: str = Field(min_length=1, max_length=120, description="Name the comparison reports.")
    run_id: str = Field(default="", max_length=64, description="The run it was taken from.")
    scores: dict[str, float] = Field(
        min_length=1, max_length=MAX_CASES, description="Case id to that run's score (0-1)."
    )

    @model_validator(mode="after")
    def _scores_in_range(self) -> EvalBaseline:
        bad = sorted(case for case, score in self.scores.items() if not 0.0 <= score <= 1.0)
        if bad:
            raise ValueError(f"scores must be within 0 and 1 (cases: {', '.join(bad[:10])})")
        return self


class EvalSuiteSpec(SpecModel):
    """An eval suite: a worker on a tier, cases, scorers and thresholds (and, on a cluster, its Job)."""

    name: str = Field(
        default="", max_length=120, description="Suite name (runs and baselines); defaults to metadata.name."
    )
    worker: WorkerType = Field(description="Worker type (a Worker in the given paths, or of the namespace).")
    tier: TierName | None = Field(default=None, description="Tier to run on (default: the worker's).")
    threshold: float = Field(default=0.8, ge=0, le=1, description="Aggregate score the suite must reach.")
    case_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Score a case must reach to pass (default: threshold)."
    )
    regression_tolerance: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Score drop against the baseline that still counts as unchanged.",
    )
    scorers: list[Scorer] = Field(
        default_factory=list, max_length=MAX_SCORERS, description="Scorers applied to every case."
    )
    cases: list[EvalCase] = Field(min_length=1, max_length=MAX_CASES, description="The cases.")
    baseline: EvalBaseline | None = Field(
        default=None,
        description="A golden baseline to compare every run with (a case that regressed against it "
        "fails the run); on a cluster, the EvalSuite's gate.",
    )
    concurrency: int = Field(default=1, ge=1, le=64, description="Cases in flight at once.")
    tenant: str = Field(
        default="default",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Tenant the tasks run as when sent through the router (loom eval --nats-url, "
        "and on a cluster, where the Job connects as this tenant's submitter).",
    )
    case_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Seconds to wait for each case's result through the router.",
    )
    resources: ResourceRequirements = Field(
        default_factory=lambda: ResourceRequirements(
            requests={"cpu": "50m", "memory": "128Mi"}, limits={"memory": "512Mi"}
        ),
        description="On a cluster: the eval Job's container resources.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvalSuiteSpec:
        problems: list[str] = []
        seen: set[str] = set()
        for i, case in enumerate(self.cases):
            if case.id in seen:
                problems.append(f"cases[{i}].id: duplicate case id {case.id!r}")
            seen.add(case.id)
            if not self.scorers and not case.checks:
                problems.append(f"cases[{i}] ({case.id}): no scorer applies (add scorers or checks)")
            if case.expected is None:
                for s in [*self.scorers, *case.checks]:
                    if s.needs_expected():
                        problems.append(
                            f"cases[{i}] ({case.id}): scorer {s.label!r} compares with the expected "
                            "output, but the case has no expected"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def pass_score(self) -> float:
        """The score a case needs to pass."""
        return self.threshold if self.case_threshold is None else self.case_threshold

    def scorers_for(self, case: EvalCase) -> list[Any]:
        """The scorers of one case: the suite's, then its own checks."""
        return [*self.scorers, *case.checks]

    @property
    def judge_tiers(self) -> set[str]:
        """Tiers that judge scorers name (a judge without a tier uses the suite's)."""
        return {
            s.tier
            for c in self.cases
            for s in self.scorers_for(c)
            if isinstance(s, JudgeScorer) and s.tier is not None
        }

    def judges_on(self, tier: str) -> set[str]:
        """The tiers the judges call when the suite runs on ``tier`` (a judge without its own tier
        uses it): what a run must reach, and nothing more."""
        return {s.tier or tier for c in self.cases for s in self.scorers_for(c) if isinstance(s, JudgeScorer)}
