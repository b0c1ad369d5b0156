"""The LLM judge: a model on a configured tier scores an output against a rubric and says why.

The prompt and the parsing of the verdict are pure functions; :func:`judge` is the one call out.
The verdict is asked for as JSON ``{"reasoning": ..., "score": 0..1}`` (also sent as the response
schema, so providers that decode to a schema cannot answer otherwise). A verdict that is not such
an object, or a score outside [0, 1], scores 0 with the reason kept: a judge that cannot be read
is never taken as a pass.
"""

from __future__ import annotations

import json
from typing import Any

from loom.evals.scorers import Score, failed_score
from loom.evals.suite import JudgeScorer
from loom.llm.base import ChatRequest, Message, Provider, token_usage
from loom.llm.errors import ProviderError
from loom.llm.jsonextract import NoJSONFound, extract_json
from loom.messages import TokenUsage

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["reasoning", "score"],
    "additionalProperties": False,
    "properties": {
        "reasoning": {"type": "string", "maxLength": 2000},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

JUDGE_SYSTEM = (
    "You are a strict evaluator of another model's output. Judge the output only by the rubric. "
    "Think briefly, then answer with one JSON object: "
    '{"reasoning": "<why, in a few sentences>", "score": <a number from 0 (fails the rubric) to 1 '
    "(fully meets it)>}. Answer with the JSON object only."
)


class VerdictError(ValueError):
    """The judge's reply is not a readable verdict."""


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def judge_request(scorer: JudgeScorer, case_input: Any, expected: Any, output: Any) -> ChatRequest:
    """The conversation that asks the judge for a verdict."""
    parts = [f"Rubric:\n{scorer.rubric.strip()}", f"Input given to the model:\n{_pretty(case_input)}"]
    if expected is not None:
        parts.append(f"A reference answer (for comparison):\n{_pretty(expected)}")
    parts.append(f"The model's output to judge:\n{_pretty(output)}")
    return ChatRequest(
        messages=[Message(role="user", content="\n\n".join(parts))],
        system=JUDGE_SYSTEM,
        response_schema=VERDICT_SCHEMA,
        max_tokens=scorer.max_output_tokens,
    )


def parse_verdict(text: str) -> tuple[float, str]:
    """(score, reasoning) from the judge's reply; VerdictError says what is wrong with it."""
    try:
        doc = extract_json(text)
    except NoJSONFound as exc:
        raise VerdictError(f"no JSON verdict in the judge's reply: {exc}") from None
    if not isinstance(doc, dict):
        raise VerdictError(f"the verdict must be a JSON object, got {type(doc).__name__}")
    score = doc.get("score")
    reasoning = doc.get("reasoning")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise VerdictError(f"the verdict's score must be a number, got {score!r}")
    if not 0 <= score <= 1:
        raise VerdictError(f"the verdict's score must be between 0 and 1, got {score!r}")
    if not isinstance(reasoning, str):
        raise VerdictError("the verdict has no reasoning (a string)")
    return float(score), reasoning


async def judge(
    scorer: JudgeScorer, provider: Provider, case_input: Any, expected: Any, output: Any
) -> tuple[Score, TokenUsage]:
    """Ask the judge; the score keeps its reasoning (or why there is none) and the model's raw reply."""
    try:
        response = await provider.complete(judge_request(scorer, case_input, expected, output))
    except ProviderError as exc:
        return failed_score(scorer, f"judge call failed: {exc}"), TokenUsage()
    usage = token_usage(response.usage)
    details: dict[str, Any] = {"model": response.model, "raw": response.text}
    try:
        score, reasoning = parse_verdict(response.text)
    except VerdictError as exc:
        return Score(scorer.label, scorer.type, scorer.weight, 0.0, details, str(exc)), usage
    details["reasoning"] = reasoning
    return Score(scorer.label, scorer.type, scorer.weight, score, details), usage
