"""A test form from a worker's input schema (pure), and the payload from the submitted form.

Top-level fields of simple types get their own widget (text, number, checkbox, a select for an
enum); nested objects and arrays get a JSON box each. A schema that is not an object with
properties gets no form: the page offers the raw-JSON box only, which is always available.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FIELD_PREFIX = "f."


@dataclass(frozen=True)
class FormField:
    """One input of the generated form."""

    name: str
    widget: str  # text | number | integer | checkbox | select | json
    required: bool = False
    options: tuple[str, ...] = ()
    description: str = ""

    @property
    def input_name(self) -> str:
        """The form field's name (prefixed, so it never clashes with the page's own fields)."""
        return FIELD_PREFIX + self.name


def _widget(sub: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    if isinstance(sub.get("enum"), list) and all(isinstance(v, str) for v in sub["enum"]):
        return "select", tuple(sub["enum"])
    kind = sub.get("type")
    if isinstance(kind, list):  # ["string", "null"] and the like: the first non-null type
        kind = next((k for k in kind if k != "null"), None)
    return {"string": "text", "number": "number", "integer": "integer", "boolean": "checkbox"}.get(
        str(kind), "json"
    ), ()


def form_fields(schema: Mapping[str, Any] | None) -> list[FormField] | None:
    """The form of an input schema, or None when only raw JSON fits it."""
    if not schema or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        return None
    required = set(schema.get("required") or [])
    fields = []
    for name, sub in schema["properties"].items():
        sub = sub if isinstance(sub, dict) else {}
        widget, options = _widget(sub)
        fields.append(FormField(name, widget, name in required, options, str(sub.get("description", ""))))
    return fields


def payload_from_form(fields: list[FormField], form: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The task payload from submitted values, and every value that could not be read.

    An empty optional field is left out; an empty required one is sent as given so the input
    contract names it, exactly as the worker would.
    """
    payload: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields:
        raw = form.get(f.input_name)
        if f.widget == "checkbox":
            payload[f.name] = raw is not None
            continue
        if raw is None or (raw == "" and not f.required):
            continue
        try:
            payload[f.name] = _value(f.widget, raw)
        except ValueError as exc:
            problems.append(f"{f.name}: {exc}")
    return payload, problems


def _value(widget: str, raw: str) -> Any:
    if widget == "integer":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if widget == "number":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if widget == "json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return raw


def payload_from_json(raw: str) -> tuple[dict[str, Any], list[str]]:
    """The payload typed as raw JSON (must be an object)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return {}, [f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    if not isinstance(value, dict):
        return {}, [f"the payload must be a JSON object, not {type(value).__name__}"]
    return value, []
