"""JSON Schema (Draft 2020-12) contracts of worker input and output, with readable error lists.

Validators are compiled once per distinct schema and cached. Errors name the
path inside the instance (``items/0/name: 'x' is not of type 'integer'``) so a
failed result tells the caller exactly what was wrong.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from loom.errors import InvalidInput, InvalidOutput

MAX_ERRORS = 20


class InputContractError(InvalidInput):
    """The payload breaks the input schema; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("payload does not match input_schema: " + "; ".join(errors))


class OutputContractError(InvalidOutput):
    """The output breaks the output schema; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("output does not match output_schema: " + "; ".join(errors))


@lru_cache(maxsize=256)
def _compiled(schema_json: str) -> Draft202012Validator:
    schema = json.loads(schema_json)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    """The compiled validator of a schema (cached by content); raises SchemaError on a bad schema."""
    return _compiled(json.dumps(schema, sort_keys=True, separators=(",", ":")))


def _format(err: Any) -> str:
    path = "/".join(str(p) for p in err.absolute_path)
    return f"{path or '(root)'}: {err.message}"


def errors_for(instance: Any, schema: dict[str, Any] | None) -> list[str]:
    """Every way ``instance`` breaks ``schema`` (empty when valid or when there is no schema)."""
    return Contract(schema).errors(instance)


class Contract:
    """A compiled schema bound once at start-up; ``check`` is the per-task call."""

    __slots__ = ("_validator",)

    def __init__(self, schema: dict[str, Any] | None):
        self._validator = validator_for(schema) if schema else None

    @property
    def active(self) -> bool:
        """True when there is a schema to enforce."""
        return self._validator is not None

    def errors(self, instance: Any) -> list[str]:
        """Every problem, or an empty list."""
        v = self._validator
        if v is None or v.is_valid(instance):
            return []
        errs = sorted(v.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
        return [_format(e) for e in errs[:MAX_ERRORS]]

    def check_input(self, payload: Any) -> None:
        """Raise :class:`InputContractError` when the payload breaks the schema."""
        if self._validator is not None and (errs := self.errors(payload)):
            raise InputContractError(errs)

    def check_output(self, output: Any) -> None:
        """Raise :class:`OutputContractError` when the output breaks the schema."""
        if self._validator is not None and (errs := self.errors(output)):
            raise OutputContractError(errs)


__all__ = [
    "Contract",
    "InputContractError",
    "OutputContractError",
    "SchemaError",
    "errors_for",
    "validator_for",
]
