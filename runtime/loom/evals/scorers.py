"""Deterministic scorers: pure functions from (scorer, output, expected) to a score in [0, 1].

Each returns a :class:`Score` that keeps what a reader needs to see why (per-field matches, schema
errors, the values found). The model judge lives in :mod:`loom.evals.judge`; it is the only
scorer that calls out.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from loom.contracts import errors_for
from loom.evals.suite import (
    ContainsScorer,
    ExactScorer,
    FieldsScorer,
    NumericScorer,
    RegexScorer,
    SchemaScorer,
)

_MISSING = object()


class PointerError(LookupError):
    """A JSON pointer names nothing in the document."""


@dataclass
class Score:
    """One scorer's verdict on one case."""

    scorer: str
    type: str
    weight: float
    score: float
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Score:
        return cls(**doc)


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer; PointerError when a step is missing."""
    if pointer == "":
        return doc
    node = doc
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            if token not in node:
                raise PointerError(f"{pointer}: no key {token!r}")
            node = node[token]
        elif isinstance(node, list):
            if not token.isdigit() or (len(token) > 1 and token.startswith("0")) or int(token) >= len(node):
                raise PointerError(f"{pointer}: no item {token!r} in a list of {len(node)}")
            node = node[int(token)]
        else:
            raise PointerError(f"{pointer}: {type(node).__name__} has no member {token!r}")
    return node


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: 1 == 1.0, but True != 1 and key order never matters."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _get(doc: Any, pointer: str) -> Any:
    try:
        return resolve_pointer(doc, pointer)
    except PointerError:
        return _MISSING


def _text_at(output: Any, pointer: str) -> str:
    """The text at ``pointer``: a string as is, anything else as compact JSON."""
    value = resolve_pointer(output, pointer)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def exact(s: ExactScorer, output: Any, expected: Any) -> Score:
    ok = json_equal(output, expected)
    return Score(s.label, s.type, s.weight, 1.0 if ok else 0.0, {"equal": ok})


def fields(s: FieldsScorer, output: Any, expected: Any) -> Score:
    """Weighted share of fields equal to the expected ones (a field missing from the output is a miss)."""
    wanted = [(f.path, f.weight) for f in s.fields] or [
        ("/" + k.replace("~", "~0").replace("/", "~1"), 1.0) for k in (expected or {})
    ]
    if not wanted:
        return failed_score(s, "no fields to compare: the expected output is empty")
    per_field: dict[str, Any] = {}
    got = 0.0
    total = 0.0
    for path, weight in wanted:
        want = _get(expected, path)
        if want is _MISSING:
            return Score(s.label, s.type, s.weight, 0.0, {"fields": per_field}, f"expected has no {path}")
        have = _get(output, path)
        match = have is not _MISSING and json_equal(have, want)
        per_field[path] = {
            "match": match,
            "weight": weight,
            "expected": want,
            "actual": None if have is _MISSING else have,
            "missing": have is _MISSING,
        }
        total += weight
        got += weight if match else 0.0
    return Score(s.label, s.type, s.weight, got / total, {"fields": per_field})


def schema(s: SchemaScorer, output: Any, worker_schema: dict[str, Any] | None) -> Score:
    """Validity against the scorer's schema, else the worker's output schema."""
    chosen = s.schema_ if s.schema_ is not None else worker_schema
    if not chosen:
        return failed_score(s, "no schema: the worker has no output schema")
    try:
        errs = errors_for(output, chosen)
    except Exception as exc:  # jsonschema's SchemaError: the suite's schema is broken, say so
        return failed_score(s, f"invalid schema: {exc}")
    return Score(s.label, s.type, s.weight, 0.0 if errs else 1.0, {"errors": errs})


def numeric(s: NumericScorer, output: Any, expected: Any) -> Score:
    """1 when |actual - expected| <= tolerance + relative * |expected|."""
    want = s.value if s.value is not None else _get(expected, s.path)
    have = _get(output, s.path)
    details: dict[str, Any] = {"path": s.path, "expected": None if want is _MISSING else want}
    if want is _MISSING or not _is_number(want):
        return Score(s.label, s.type, s.weight, 0.0, details, f"expected value at {s.path} is not a number")
    if have is _MISSING:
        return Score(s.label, s.type, s.weight, 0.0, details | {"missing": True})
    details["actual"] = have
    if not _is_number(have):
        return Score(s.label, s.type, s.weight, 0.0, details | {"not_a_number": True})
    allowed = s.tolerance + s.relative * abs(float(want))
    diff = abs(float(have) - float(want))
    details |= {"difference": diff, "allowed": allowed}
    return Score(s.label, s.type, s.weight, 1.0 if diff <= allowed else 0.0, details)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def contains(s: ContainsScorer, output: Any) -> Score:
    """Share of the values found (mode all), or 1 when any is found (mode any)."""
    try:
        text = _text_at(output, s.path)
    except PointerError as exc:
        return Score(s.label, s.type, s.weight, 0.0, {"missing": True, "path": s.path}, str(exc))
    hay = text if s.case_sensitive else text.casefold()
    found = {v: (v if s.case_sensitive else v.casefold()) in hay for v in s.values}
    hits = sum(found.values())
    score = (1.0 if hits else 0.0) if s.mode == "any" else hits / len(s.values)
    return Score(s.label, s.type, s.weight, score, {"path": s.path, "found": found})


def regex(s: RegexScorer, output: Any) -> Score:
    """1 when ``re.search(pattern, text)`` matches."""
    try:
        text = _text_at(output, s.path)
    except PointerError as exc:
        return Score(s.label, s.type, s.weight, 0.0, {"missing": True, "path": s.path}, str(exc))
    m = re.search(s.pattern, text)
    return Score(
        s.label, s.type, s.weight, 1.0 if m else 0.0, {"path": s.path, "match": m.group(0) if m else None}
    )


def score_deterministic(
    scorer: Any, output: Any, expected: Any, worker_schema: dict[str, Any] | None
) -> Score:
    """Dispatch a non-judge scorer."""
    if isinstance(scorer, ExactScorer):
        return exact(scorer, output, expected)
    if isinstance(scorer, FieldsScorer):
        return fields(scorer, output, expected)
    if isinstance(scorer, SchemaScorer):
        return schema(scorer, output, worker_schema)
    if isinstance(scorer, NumericScorer):
        return numeric(scorer, output, expected)
    if isinstance(scorer, ContainsScorer):
        return contains(scorer, output)
    if isinstance(scorer, RegexScorer):
        return regex(scorer, output)
    raise TypeError(f"{type(scorer).__name__} is not a deterministic scorer")


def failed_score(scorer: Any, error: str) -> Score:
    """A zero for a scorer that could not run (no output, nothing to compare, no usable schema)."""
    return Score(scorer.label, scorer.type, scorer.weight, 0.0, {}, error)


def weighted(scores: list[Score]) -> float:
    """The case score: the weighted mean of its scorers."""
    total = sum(s.weight for s in scores)
    return sum(s.score * s.weight for s in scores) / total if total else 0.0
