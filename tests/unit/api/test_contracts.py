"""JSON Schema contracts: full Draft 2020-12, readable error lists, cached validators."""

from __future__ import annotations

import pytest

from loom.contracts import Contract, InputContractError, OutputContractError, errors_for, validator_for
from loom.errors import InvalidInput, InvalidOutput

SCHEMA = {
    "type": "object",
    "required": ["people", "count"],
    "properties": {
        "people": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}},
            },
        },
        "count": {"type": "integer", "minimum": 0},
        "kind": {"enum": ["a", "b"]},
        "email": {"type": "string", "format": "email"},
    },
    "additionalProperties": False,
}


def test_nested_enums_bounds_and_extra_keys_all_reported() -> None:
    errs = errors_for({"people": [{"name": ""}, {}], "count": -2, "kind": "c", "extra": 1}, SCHEMA)
    assert "(root): Additional properties are not allowed ('extra' was unexpected)" in errs
    assert "count: -2 is less than the minimum of 0" in errs
    assert "kind: 'c' is not one of ['a', 'b']" in errs
    assert "people/0/name: '' should be non-empty" in errs
    assert "people/1: 'name' is a required property" in errs
    assert len(errs) == 5


def test_valid_instance_and_no_schema() -> None:
    assert errors_for({"people": [], "count": 0}, SCHEMA) == []
    assert errors_for({"anything": 1}, None) == []
    assert not Contract(None).active


def test_contract_errors_are_typed_task_errors() -> None:
    c = Contract(SCHEMA)
    with pytest.raises(InputContractError) as e_in:
        c.check_input({"count": "x"})
    assert isinstance(e_in.value, InvalidInput) and not e_in.value.retryable
    assert e_in.value.errors == [
        "(root): 'people' is a required property",
        "count: 'x' is not of type 'integer'",
    ]
    with pytest.raises(OutputContractError) as e_out:
        c.check_output({"people": [], "count": 1, "email": "not-an-email"})
    assert isinstance(e_out.value, InvalidOutput) and "email: 'not-an-email' is not a 'email'" in str(
        e_out.value
    )


def test_validators_are_cached_per_schema_content() -> None:
    a = validator_for({"type": "object", "properties": {"x": {"type": "string"}}})
    b = validator_for({"properties": {"x": {"type": "string"}}, "type": "object"})
    assert a is b


def test_draft_2020_12_features() -> None:
    schema = {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "integer"}],
        "items": False,
        "$defs": {"pos": {"type": "integer", "exclusiveMinimum": 0}},
        "contains": {"$ref": "#/$defs/pos"},
    }
    assert errors_for(["a", 1], schema) == []
    assert errors_for(["a", "b", 3], schema) != []
