"""Reading an eval suite file: the models live in :mod:`loom.api.eval_suite` (one model for the
file ``loom eval`` reads and the EvalSuite custom resource); this module loads and validates.

A suite file is either the plain suite (``worker:``, ``cases:`` …) or an EvalSuite manifest
(``apiVersion``/``kind``/``metadata``/``spec``), so the file applied to a cluster runs unchanged
with ``loom eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from loom.api.common import GROUP_VERSION
from loom.api.eval_suite import (
    POINTER_PATTERN,
    ContainsScorer,
    EvalCase,
    EvalSuiteSpec,
    ExactScorer,
    FieldsScorer,
    FieldWeight,
    JudgeScorer,
    NumericScorer,
    Pointer,
    RegexScorer,
    SchemaScorer,
    Scorer,
    Weight,
)
from loom.api.loader import format_validation_error

#: The suite model under the name the eval library uses.
EvalSuite = EvalSuiteSpec

__all__ = [
    "POINTER_PATTERN",
    "ContainsScorer",
    "EvalCase",
    "EvalSuite",
    "ExactScorer",
    "FieldWeight",
    "FieldsScorer",
    "JudgeScorer",
    "NumericScorer",
    "Pointer",
    "RegexScorer",
    "SchemaScorer",
    "Scorer",
    "SuiteError",
    "Weight",
    "load_suite",
    "parse_suite",
]


class SuiteError(Exception):
    """The suite file cannot be used; ``problems`` names each one with its place in the file."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _manifest_body(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """The suite inside an EvalSuite manifest, named by ``metadata.name`` unless it names itself."""
    if doc.get("apiVersion") != GROUP_VERSION:
        raise SuiteError([f"{source}: apiVersion must be {GROUP_VERSION}, got {doc.get('apiVersion')!r}"])
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise SuiteError([f"{source}: spec: expected a mapping, got {type(spec).__name__}"])
    body = dict(spec)
    meta = doc.get("metadata") or {}
    if not body.get("name") and isinstance(meta, dict) and meta.get("name"):
        body["name"] = meta["name"]
    return body


def parse_suite(doc: Any, source: str) -> EvalSuite:
    """Validate a loaded YAML document as a suite; SuiteError lists every problem."""
    if not isinstance(doc, dict):
        raise SuiteError([f"{source}: expected a mapping, got {type(doc).__name__}"])
    body = dict(doc)
    if body.get("kind") not in (None, "EvalSuite"):
        raise SuiteError([f"{source}: kind must be EvalSuite, got {body.get('kind')!r}"])
    prefix = "EvalSuite"
    if "apiVersion" in body or "spec" in body:
        body, prefix = _manifest_body(body, source), "spec"
    body.pop("kind", None)
    try:
        suite = EvalSuite.model_validate(body)
    except ValidationError as exc:
        lines = format_validation_error(exc, prefix, EvalSuite)
        raise SuiteError([f"{source}: {line}" for line in lines]) from None
    if not suite.name:
        suite = suite.model_copy(update={"name": Path(source).stem})
    return suite


def load_suite(path: str | Path) -> EvalSuite:
    """Read and validate a suite file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SuiteError([f"{p}: invalid YAML: {exc}"]) from None
    if len(docs) != 1:
        raise SuiteError([f"{p}: expected one YAML document (an eval suite), found {len(docs)}"])
    return parse_suite(docs[0], str(p))
