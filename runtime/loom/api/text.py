"""Bounds on free text in specs, with messages that say where large content belongs.

A custom resource lives in etcd (about 1.5 MiB per object) and client-side
``kubectl apply`` copies it into a 256 KiB annotation, so prompts and other free
text are bounded. The prompt's bound is a CEL rule rather than ``maxLength``: the API
server's ``maxLength`` message cannot be worded, and this one says what to do instead.
The same rule and message are checked by pydantic, so local mode agrees with the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

#: Longest systemPrompt (characters): large enough for any prompt, small enough for etcd
#: and a client-side apply (even at several bytes per character).
PROMPT_MAX_CHARS = 65_536
#: Longest one-line description or condition.
DESCRIPTION_MAX_CHARS = 4_096
CONDITION_MAX_CHARS = 1_024
#: Where large reference material belongs instead of a prompt.
KNOWLEDGE_ADVICE = (
    "put large reference material in knowledgeSources or knowledgeSilos files "
    "(shipped in the worker's image, spec.image) instead of the prompt"
)


@dataclass(frozen=True)
class CelRule:
    """Annotation that adds one ``x-kubernetes-validations`` entry to a type's JSON Schema."""

    rule: str
    message: str

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out.setdefault("x-kubernetes-validations", []).append({"rule": self.rule, "message": self.message})
        return out


def too_long_message(field: str, limit: int, advice: str) -> str:
    return f"{field} must be at most {limit} characters: {advice}"


def bounded_text(field: str, limit: int, advice: str) -> Any:
    """A ``str`` type bounded to ``limit`` characters, whose error (pydantic and CEL) gives ``advice``."""
    message = too_long_message(field, limit, advice)

    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(message)
        return value

    return Annotated[str, AfterValidator(check), CelRule(f"size(self) <= {limit}", message)]


PromptText = bounded_text("systemPrompt", PROMPT_MAX_CHARS, KNOWLEDGE_ADVICE)
