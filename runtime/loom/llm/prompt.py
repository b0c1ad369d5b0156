"""System prompt assembly: the worker's prompt, knowledge, few-shot examples and the schema directive.

Everything here is a pure function of its inputs, so the same worker spec and
knowledge always yield the same prompt (and tests can compare them exactly).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reference:
    """A named block of reference text (a knowledge source file or one file of a silo)."""

    title: str
    text: str


@dataclass(frozen=True)
class Example:
    """One few-shot example."""

    input: Any
    output: Any


@dataclass(frozen=True)
class SiloText:
    """The files of a folder silo, as (relative path, text)."""

    name: str
    writable: bool
    files: tuple[tuple[str, str], ...]


SILO_UPDATES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["silo", "action", "filename"],
        "properties": {
            "silo": {"type": "string"},
            "action": {"enum": ["add", "modify", "delete"]},
            "filename": {"type": "string"},
            "content": {"type": "string"},
        },
    },
}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def schema_directive(schema: dict[str, Any] | None) -> str:
    """The instruction that makes the reply a JSON object matching ``schema``."""
    if schema is None:
        return "Respond with ONLY a JSON object, no prose and no Markdown fences."
    return (
        "Respond with ONLY a JSON object, no prose and no Markdown fences. "
        "It must validate against this JSON Schema:\n"
        + json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True)
    )


def silo_directive(writable: Sequence[str]) -> str:
    """How the model may change read-write silos."""
    names = ", ".join(sorted(writable))
    return (
        "You may change the knowledge folders " + names + ' by adding a top-level "silo_updates" '
        'array to your JSON reply; each item is {"silo": NAME, "action": "add"|"modify"|"delete", '
        '"filename": RELATIVE_PATH, "content": TEXT (add and modify only)}. It is removed from your '
        "output before validation."
    )


def build_system_prompt(
    base: str,
    *,
    references: Sequence[Reference] = (),
    examples: Sequence[Example] = (),
    silos: Sequence[SiloText] = (),
    output_schema: dict[str, Any] | None = None,
    tools: bool = False,
) -> str:
    """The full system prompt, sections in a fixed order: references, silos, prompt, examples, contract."""
    parts: list[str] = []
    for ref in references:
        parts.append(f"## Reference: {ref.title}\n\n{ref.text.strip()}")
    for silo in silos:
        body = "\n\n".join(f"### {path}\n\n{text.strip()}" for path, text in silo.files) or "(empty)"
        parts.append(f"## Knowledge: {silo.name}\n\n{body}")
    parts.append(base.strip())
    if examples:
        shots = [
            f"Example {i}:\nInput: {_show(ex.input)}\nOutput: {_show(ex.output)}"
            for i, ex in enumerate(examples, 1)
        ]
        parts.append("## Examples\n\n" + "\n\n".join(shots))
    writable = [s.name for s in silos if s.writable]
    if writable:
        parts.append(silo_directive(writable))
    if tools:
        parts.append("Call the provided tools when they help; when done, give the final answer.")
    parts.append(schema_directive(output_schema))
    return "\n\n".join(parts)


def user_message(payload: dict[str, Any]) -> str:
    """The task payload as the user turn."""
    return json.dumps(payload, ensure_ascii=False, sort_keys=True)


def feedback_message(problems: Sequence[str]) -> str:
    """The user turn that sends validation errors back to the model."""
    lines = "\n".join(f"- {p}" for p in problems)
    return "Your reply was rejected:\n" + lines + "\nReply again with ONLY the corrected JSON object."


def estimate_tokens(*texts: str) -> int:
    """A provider-independent token estimate (about four characters per token)."""
    return (sum(len(t) for t in texts) + 3) // 4
