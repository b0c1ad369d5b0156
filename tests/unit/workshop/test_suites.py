"""A suite defined in the page: the document written, checked by the loader `loom eval` uses."""

from __future__ import annotations

import pytest
import yaml

from loom.evals.suite import SuiteError, parse_suite
from loom.workshop.suites import SuiteForm, suite_document, suite_text

CASES = "- id: one\n  input: {text: An invoice}\n  expected: {category: invoice}\n"


def form(**changes: object) -> SuiteForm:
    base: dict[str, object] = dict(
        name="smoke",
        worker="classifier",
        threshold="0.8",
        scorers=("fields", "schema"),
        judge_rubric="",
        judge_tier="",
        cases=CASES,
    )
    return SuiteForm(**{**base, **changes})  # type: ignore[arg-type]


def test_the_written_file_loads_as_the_same_suite() -> None:
    doc, suite = suite_document(form(judge_rubric="Is it right?", judge_tier="judge"))
    assert [s["type"] for s in doc["scorers"]] == ["fields", "schema", "judge"]
    assert doc["scorers"][2] == {"type": "judge", "rubric": "Is it right?", "tier": "judge"}
    again = parse_suite(yaml.safe_load(suite_text(doc)), "smoke.yaml")
    assert again == suite and suite.threshold == 0.8 and [c.id for c in suite.cases] == ["one"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "Bad Name"}, "name: 'Bad Name' must be lowercase"),
        ({"threshold": "high"}, "threshold: 'high' is not a number"),
        ({"cases": ""}, "cases: a YAML list of cases"),
        ({"cases": "- id: [unclosed"}, "cases: invalid YAML"),
        ({"scorers": ()}, "choose at least one scorer"),
        ({"scorers": ("bogus",)}, "scorers: unknown bogus"),
        ({"cases": "- id: one\n  input: {text: x}\n"}, "expected"),
        ({"threshold": "2"}, "threshold"),
    ],
)
def test_problems_are_named(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(SuiteError) as err:
        suite_document(form(**changes))
    assert any(expected in p for p in err.value.problems), err.value.problems
