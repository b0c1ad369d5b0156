"""The test form generated from an input schema, and the payload read back from it."""

from __future__ import annotations

from loom.workshop.forms import form_fields, payload_from_form, payload_from_json

SCHEMA = {
    "type": "object",
    "required": ["text", "kind"],
    "properties": {
        "text": {"type": "string", "description": "the document"},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "pages": {"type": "integer"},
        "ratio": {"type": ["number", "null"]},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_each_field_gets_the_widget_of_its_type() -> None:
    fields = form_fields(SCHEMA)
    assert fields is not None
    got = {f.name: (f.widget, f.required) for f in fields}
    assert got == {
        "text": ("text", True),
        "kind": ("select", True),
        "pages": ("integer", False),
        "ratio": ("number", False),
        "urgent": ("checkbox", False),
        "tags": ("json", False),
    }
    assert next(f for f in fields if f.name == "kind").options == ("a", "b")
    assert next(f for f in fields if f.name == "text").description == "the document"


def test_schemas_without_properties_get_raw_json_only() -> None:
    assert form_fields(None) is None
    assert form_fields({"type": "object"}) is None
    assert form_fields({"type": "string"}) is None


def test_values_are_typed_and_empty_optionals_left_out() -> None:
    fields = form_fields(SCHEMA) or []
    form = {"f.text": "hi", "f.kind": "b", "f.pages": "3", "f.ratio": "", "f.urgent": "on", "f.tags": '["x"]'}
    assert payload_from_form(fields, form) == (
        {"text": "hi", "kind": "b", "pages": 3, "urgent": True, "tags": ["x"]},
        [],
    )
    payload, _ = payload_from_form(fields, {"f.text": "", "f.kind": "a"})
    assert payload == {
        "text": "",
        "kind": "a",
        "urgent": False,
    }  # required-but-empty is sent for the contract


def test_unreadable_values_are_named() -> None:
    fields = form_fields(SCHEMA) or []
    _, problems = payload_from_form(
        fields, {"f.text": "x", "f.kind": "a", "f.pages": "2.5", "f.ratio": "many", "f.tags": "[oops"}
    )
    assert problems == [
        "pages: '2.5' is not an integer",
        "ratio: 'many' is not a number",
        "tags: invalid JSON: Expecting value at line 1 column 2",
    ]


def test_raw_json_must_be_an_object() -> None:
    assert payload_from_json('{"a": 1}') == ({"a": 1}, [])
    assert payload_from_json("[1]") == ({}, ["the payload must be a JSON object, not list"])
    assert payload_from_json("{")[1][0].startswith("invalid JSON:")
