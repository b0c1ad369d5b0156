"""A new eval suite defined in the page (pure): the suite file's document from the form, validated
by the suite loader ``loom eval`` uses, so the file written runs unchanged from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from loom.evals.suite import EvalSuite, SuiteError, parse_suite
from loom.workshop.edits import NAME_RE

SCORER_TYPES = ("fields", "exact", "schema")


@dataclass(frozen=True)
class SuiteForm:
    """What the new-suite form holds (texts as typed)."""

    name: str
    worker: str
    threshold: str
    scorers: tuple[str, ...]
    judge_rubric: str
    judge_tier: str
    cases: str


def suite_document(form: SuiteForm) -> tuple[dict[str, Any], EvalSuite]:
    """The suite file's document and the suite it loads as; SuiteError lists every problem."""
    problems: list[str] = []
    if not NAME_RE.match(form.name):
        problems.append(f"name: {form.name!r} must be lowercase letters, digits, - and _")
    try:
        threshold = float(form.threshold or "0.5")
    except ValueError:
        problems.append(f"threshold: {form.threshold!r} is not a number")
        threshold = 0.5
    try:
        cases = yaml.safe_load(form.cases) if form.cases.strip() else None
    except yaml.YAMLError as exc:
        problems.append(f"cases: invalid YAML: {exc}")
        cases = None
    if not isinstance(cases, list) or not cases:
        problems.append("cases: a YAML list of cases (id, input, expected and/or checks) is required")
    unknown = [s for s in form.scorers if s not in SCORER_TYPES]
    if unknown:
        problems.append(f"scorers: unknown {', '.join(unknown)}")
    if problems:
        raise SuiteError(problems)
    scorers: list[dict[str, Any]] = [{"type": s} for s in form.scorers]
    if form.judge_rubric.strip():
        judge: dict[str, Any] = {"type": "judge", "rubric": form.judge_rubric.strip()}
        if form.judge_tier.strip():
            judge["tier"] = form.judge_tier.strip()
        scorers.append(judge)
    if not scorers:
        raise SuiteError(["scorers: choose at least one scorer (or write a judge rubric)"])
    doc = {
        "name": form.name,
        "worker": form.worker,
        "threshold": threshold,
        "scorers": scorers,
        "cases": cases,
    }
    return doc, parse_suite(doc, f"{form.name}.yaml")


def suite_text(doc: dict[str, Any]) -> str:
    """The suite file's text."""
    header = f"# Eval suite for the Worker {doc['worker']}: loom eval <this file> <manifests>\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
