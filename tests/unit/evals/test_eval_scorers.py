"""The deterministic eval scorers and the judge's pure parts (prompt, verdict parsing)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loom.evals.judge import VERDICT_SCHEMA, VerdictError, judge_request, parse_verdict
from loom.evals.scorers import (
    PointerError,
    contains,
    exact,
    fields,
    json_equal,
    numeric,
    regex,
    resolve_pointer,
    schema,
    score_deterministic,
    weighted,
)
from loom.evals.suite import (
    ContainsScorer,
    ExactScorer,
    FieldsScorer,
    JudgeScorer,
    NumericScorer,
    RegexScorer,
    SchemaScorer,
)

OUT = {"category": "invoice", "total": 1250.0, "items": [{"sku": "a/b"}, {"sku": "c~d"}], "flag": True}


def test_pointer_follows_rfc6901() -> None:
    doc = {"a/b": 1, "m~n": 2, "list": [10, 20], "": 3}
    assert resolve_pointer(doc, "") is doc
    assert resolve_pointer(doc, "/a~1b") == 1
    assert resolve_pointer(doc, "/m~0n") == 2
    assert resolve_pointer(doc, "/list/1") == 20
    assert resolve_pointer(doc, "/") == 3
    for bad in ("/list/2", "/list/01", "/list/x", "/nope", "/a~1b/deeper"):
        with pytest.raises(PointerError):
            resolve_pointer(doc, bad)


def test_json_equality_is_by_json_value() -> None:
    assert json_equal({"a": 1, "b": [1.0]}, {"b": [1], "a": 1.0})
    assert not json_equal(True, 1)
    assert not json_equal({"a": 1}, {"a": 1, "b": None})
    assert not json_equal([1, 2], [2, 1])
    assert not json_equal("1", 1)


def test_exact() -> None:
    s = ExactScorer(type="exact")
    assert exact(s, {"a": [1, 2]}, {"a": [1, 2]}).score == 1.0
    assert exact(s, {"a": [1, 2]}, {"a": [1, 2], "b": 0}).score == 0.0


def test_fields_weighted_with_details() -> None:
    s = FieldsScorer(
        type="fields",
        fields=[{"path": "/category", "weight": 3}, {"path": "/items/0/sku"}, {"path": "/missing"}],
    )
    expected = {"category": "invoice", "items": [{"sku": "WRONG"}], "missing": 1}
    result = fields(s, OUT, expected)
    assert result.score == pytest.approx(3 / 5)
    per = result.details["fields"]
    assert per["/category"]["match"] and not per["/items/0/sku"]["match"]
    assert per["/items/0/sku"] == {
        "match": False,
        "weight": 1.0,
        "expected": "WRONG",
        "actual": "a/b",
        "missing": False,
    }
    assert per["/missing"]["missing"] is True


def test_fields_default_to_every_top_level_expected_key() -> None:
    s = FieldsScorer(type="fields")
    result = fields(s, {"a/b": 1, "c": 2}, {"a/b": 1, "c": 3})
    assert result.score == 0.5
    assert set(result.details["fields"]) == {"/a~1b", "/c"}


def test_fields_with_a_path_the_expected_output_lacks_is_an_error_not_a_pass() -> None:
    s = FieldsScorer(type="fields", fields=[{"path": "/x"}])
    result = fields(s, {"x": 1}, {"y": 1})
    assert result.score == 0.0 and result.error == "expected has no /x"


def test_schema_uses_the_workers_schema_unless_given_one() -> None:
    worker = {"type": "object", "required": ["category"], "properties": {"category": {"enum": ["invoice"]}}}
    assert schema(SchemaScorer(type="schema"), {"category": "invoice"}, worker).score == 1.0
    bad = schema(SchemaScorer(type="schema"), {"category": "memo"}, worker)
    assert bad.score == 0.0 and "category: 'memo' is not one of ['invoice']" in bad.details["errors"]
    own = SchemaScorer.model_validate({"type": "schema", "schema": {"type": "object", "required": ["z"]}})
    assert schema(own, {"category": "invoice"}, worker).score == 0.0
    assert schema(SchemaScorer(type="schema"), {}, None).error is not None


def test_numeric_tolerance_absolute_and_relative() -> None:
    s = NumericScorer(type="numeric", path="/total", tolerance=1)
    assert numeric(s, OUT, {"total": 1251}).score == 1.0
    assert numeric(s, OUT, {"total": 1251.5}).score == 0.0
    rel = NumericScorer(type="numeric", path="/total", relative=0.01)
    assert numeric(rel, OUT, {"total": 1262}).score == 1.0
    assert numeric(rel, OUT, {"total": 1263}).score == 0.0
    given_value = NumericScorer(type="numeric", path="/total", value=1250)
    assert numeric(given_value, OUT, None).score == 1.0
    assert numeric(s, {"total": "1250"}, {"total": 1250}).details["not_a_number"] is True
    assert numeric(s, {"total": True}, {"total": 1}).score == 0.0
    assert numeric(s, {}, {"total": 1}).details["missing"] is True
    assert numeric(s, OUT, {"total": "x"}).error is not None


def test_contains_all_any_and_case() -> None:
    s = ContainsScorer(type="contains", path="/category", values=["INV", "voice", "zzz"])
    assert contains(s, OUT).score == pytest.approx(2 / 3)
    assert contains(s.model_copy(update={"mode": "any"}), OUT).score == 1.0
    assert contains(s.model_copy(update={"case_sensitive": True}), OUT).score == pytest.approx(1 / 3)
    whole = ContainsScorer(type="contains", values=['"sku": "c~d"'])
    assert contains(whole, OUT).score == 1.0  # non-strings are searched as JSON text
    missing = contains(ContainsScorer(type="contains", path="/nope", values=["a"]), OUT)
    assert missing.score == 0.0 and missing.error


def test_regex() -> None:
    assert regex(RegexScorer(type="regex", path="/category", pattern=r"^inv"), OUT).score == 1.0
    r = regex(RegexScorer(type="regex", path="/category", pattern=r"^voice"), OUT)
    assert r.score == 0.0 and r.details["match"] is None


def test_dispatch_and_weighted_mean() -> None:
    scores = [
        score_deterministic(ExactScorer(type="exact", weight=1), OUT, OUT, None),
        score_deterministic(RegexScorer(type="regex", pattern="nomatch", weight=3), OUT, None, None),
    ]
    assert weighted(scores) == pytest.approx(0.25)
    with pytest.raises(TypeError):
        score_deterministic(JudgeScorer(type="judge", rubric="r"), OUT, None, None)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_a_document_always_matches_itself(doc: dict[str, Any]) -> None:
    assert exact(ExactScorer(type="exact"), doc, doc).score == 1.0
    if doc:
        assert fields(FieldsScorer(type="fields"), doc, doc).score == 1.0


def test_verdict_parsing() -> None:
    assert parse_verdict('{"reasoning": "good", "score": 0.5}') == (0.5, "good")
    assert parse_verdict('Sure!\n```json\n{"score": 1, "reasoning": "ok"}\n```') == (1.0, "ok")
    for bad, why in (
        ("no json here", "no JSON verdict"),
        ("[1]", "must be a JSON object"),
        ('{"reasoning": "x", "score": 1.5}', "between 0 and 1"),
        ('{"reasoning": "x", "score": true}', "must be a number"),
        ('{"score": 0.2}', "no reasoning"),
    ):
        with pytest.raises(VerdictError, match=why):
            parse_verdict(bad)


def test_judge_request_carries_rubric_input_reference_and_output() -> None:
    req = judge_request(
        JudgeScorer(type="judge", rubric="Is the summary faithful?"),
        {"text": "t"},
        {"s": "ref"},
        {"s": "out"},
    )
    text = req.messages[0].content
    assert "Is the summary faithful?" in text and '"ref"' in text and '"out"' in text and '"t"' in text
    assert req.response_schema == VERDICT_SCHEMA
    no_ref = judge_request(JudgeScorer(type="judge", rubric="r"), {}, None, {})
    assert "reference answer" not in no_ref.messages[0].content
