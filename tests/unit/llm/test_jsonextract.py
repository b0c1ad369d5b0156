from __future__ import annotations

import pytest

from loom.llm.jsonextract import NoJSONFound, extract_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("  [1, 2]\n", [1, 2]),
        ('```json\n{"a": {"b": [1]}}\n```', {"a": {"b": [1]}}),
        ('Here you go:\n```\n{"x": "y"}\n```\nThanks', {"x": "y"}),
        ('Sure! The answer is {"n": 3, "s": "a } b"} as requested.', {"n": 3, "s": "a } b"}),
        ('noise { not json } then {"ok": true}', {"ok": True}),
    ],
)
def test_extracts_bare_fenced_and_embedded(text: str, expected: object) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no json here", '{"a": 1', "```json\n{broken\n```"])
def test_no_json_is_a_clear_error(text: str) -> None:
    with pytest.raises(NoJSONFound):
        extract_json(text)
