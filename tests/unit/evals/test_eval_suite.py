"""The eval suite file: both key spellings, defaults, and clear errors for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loom.evals.suite import FieldsScorer, JudgeScorer, SuiteError, load_suite, parse_suite

ROOT = Path(__file__).resolve().parents[3]


def _problems(doc: object) -> str:
    with pytest.raises(SuiteError) as info:
        parse_suite(doc, "suite.yaml")
    return "\n".join(info.value.problems)


def test_camel_and_snake_case_and_defaults() -> None:
    base = {
        "worker": "doc-classifier",
        "scorers": [{"type": "fields", "fields": [{"path": "/category"}]}],
        "cases": [{"id": "a", "input": {"text": "x"}, "expected": {"category": "invoice"}}],
    }
    camel = parse_suite({**base, "caseThreshold": 0.9, "regressionTolerance": 0.1}, "dir/my-suite.yaml")
    snake = parse_suite({**base, "case_threshold": 0.9, "regression_tolerance": 0.1}, "dir/my-suite.yaml")
    assert camel == snake
    assert camel.name == "my-suite"  # from the file name when not given
    assert camel.pass_score == 0.9 and camel.threshold == 0.8
    assert parse_suite(base, "s.yaml").pass_score == 0.8  # a case passes at the suite's threshold
    assert isinstance(camel.scorers[0], FieldsScorer)


def test_every_problem_is_named() -> None:
    text = _problems(
        {
            "worker": "Bad Worker",
            "threshold": 2,
            "scorers": [{"type": "similarity"}, {"type": "regex", "pattern": "("}, {"type": "contains"}],
            "cases": [],
            "cases_extra": 1,
        }
    )
    assert "suite.yaml: EvalSuite.worker: String should match pattern" in text
    assert "EvalSuite.threshold: Input should be less than or equal to 1" in text
    assert "'similarity'" in text and "does not match any of the expected tags" in text
    assert "not a valid regular expression" in text
    assert "values: Field required" in text
    assert "EvalSuite.cases: List should have at least 1 item" in text
    assert "unknown key 'cases_extra'" in text


def test_cross_case_rules() -> None:
    text = _problems(
        {
            "worker": "w",
            "scorers": [{"type": "exact"}],
            "cases": [
                {"id": "a", "input": {}},
                {"id": "a", "input": {}, "expected": {}},
            ],
        }
    )
    assert "cases[1].id: duplicate case id 'a'" in text
    assert "cases[0] (a): scorer 'exact' compares with the expected output, but the case has no " in text
    no_scorer = _problems({"worker": "w", "cases": [{"id": "a", "input": {}}]})
    assert "cases[0] (a): no scorer applies" in no_scorer
    # a numeric check with its own value needs no expected output; checks belong to their case only
    ok = parse_suite(
        {
            "worker": "w",
            "cases": [
                {"id": "a", "input": {}, "checks": [{"type": "numeric", "path": "/n", "value": 3}]},
                {"id": "b", "input": {}, "checks": [{"type": "judge", "rubric": "r", "tier": "frontier"}]},
            ],
        },
        "s.yaml",
    )
    assert len(ok.scorers_for(ok.cases[0])) == 1 and ok.judge_tiers == {"frontier"}
    assert isinstance(ok.scorers_for(ok.cases[1])[0], JudgeScorer)


def test_bad_pointer_and_kind() -> None:
    assert "String should match pattern" in _problems(
        {
            "worker": "w",
            "scorers": [{"type": "regex", "path": "no-slash", "pattern": "x"}],
            "cases": [{"id": "a", "input": {}}],
        }
    )
    assert "kind must be EvalSuite" in _problems({"kind": "Worker", "worker": "w"})
    assert "expected a mapping" in _problems([1])


def test_load_suite_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="cannot read"):
        load_suite(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("worker: [unclosed")
    with pytest.raises(SuiteError, match="invalid YAML"):
        load_suite(tmp_path / "bad.yaml")
    (tmp_path / "two.yaml").write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(SuiteError, match="expected one YAML document"):
        load_suite(tmp_path / "two.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "evals").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_are_valid(path: Path) -> None:
    suite = load_suite(path)
    doc = yaml.safe_load(path.read_text())
    # A plain suite names itself; an EvalSuite manifest is named by metadata.name.
    assert suite.name == (doc["metadata"]["name"] if "apiVersion" in doc else doc["name"])


def test_an_eval_suite_manifest_is_a_suite_file() -> None:
    spec = {"worker": "w", "scorers": [{"type": "schema"}], "cases": [{"id": "a", "input": {}}]}
    doc = {"apiVersion": "loom.dev/v1alpha1", "kind": "EvalSuite", "metadata": {"name": "gate"}, "spec": spec}
    assert parse_suite(doc, "gate.yaml").name == "gate"
    assert parse_suite({**doc, "spec": {**spec, "name": "own"}}, "gate.yaml").name == "own"
    with pytest.raises(SuiteError, match=r"apiVersion must be loom\.dev/v1alpha1"):
        parse_suite({**doc, "apiVersion": "v1"}, "gate.yaml")
    with pytest.raises(SuiteError, match=r"spec\.threshold"):
        parse_suite({**doc, "spec": {**spec, "threshold": 3}}, "gate.yaml")


def test_a_plain_suite_file_is_read_as_an_eval_suite_by_the_loader() -> None:
    """`loom validate` and `loom up` take the plain suite files of config/evals for what they are."""
    from loom.api import load_paths

    resources = load_paths([ROOT / "config" / "evals"])
    assert {(r.kind, r.name) for r in resources} == {
        ("EvalSuite", "doc-classifier"),
        ("EvalSuite", "doc-extractor"),
    }
    samples = load_paths([ROOT / "config" / "samples"])
    assert ("EvalSuite", "doc-extractor-gate") in {(r.kind, r.name) for r in samples}
