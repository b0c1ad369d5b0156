"""Prompts, plan validation, summaries and the deterministic merge of the goal orchestrator. Pure.

A plan is the model's JSON ``{"subtasks": [...], "decisions": [...]}``. Every
subtask is checked before anything is dispatched: its worker must be in the
catalog and its payload must satisfy that worker's input schema. Problems are
fed back to the model (a bounded number of rounds); what is still invalid after
that is dropped, with the reason recorded in the result.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from loom.api.worker import WorkerSpec
from loom.contracts import errors_for
from loom.llm.jsonextract import NoJSONFound, extract_json
from loom.messages import GoalMessage

PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["subtasks"],
    "properties": {
        "subtasks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["worker_type", "payload"],
                "properties": {
                    "id": {"type": "string"},
                    "worker_type": {"type": "string"},
                    "tier": {"type": "string"},
                    "payload": {"type": "object"},
                    "why": {"type": "string"},
                },
            },
        },
        "decisions": {"type": "array", "items": {"type": "string"}},
    },
}

DECOMPOSE_SYSTEM = (
    "You are the planner of a multi-worker system. Decompose the user's goal into independent subtasks, "
    "each done by exactly one of the workers listed. A subtask's payload must satisfy that worker's input "
    "schema exactly. Use only the workers listed. Answer with JSON only: "
    '{"subtasks": [{"id": "short-id", "worker_type": "...", "payload": {...}, "why": "..."}], '
    '"decisions": ["..."]}'
)
SYNTHESIZE_SYSTEM = (
    "You are the synthesizer of a multi-worker system. Combine the subtask results into the final answer "
    'to the goal. Answer with JSON only: {"answer": "...", "confidence": "low|medium|high"}'
)
_ID = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class Subtask:
    """One unit of dispatched work."""

    id: str
    worker_type: str
    payload: dict[str, Any]
    tier: str | None = None
    why: str = ""
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Subtask:
        return cls(
            id=d["id"],
            worker_type=d["worker_type"],
            payload=d.get("payload") or {},
            tier=d.get("tier"),
            why=d.get("why", ""),
            attempt=int(d.get("attempt", 1)),
        )


@dataclass
class Rejected:
    """A subtask the plan proposed and validation refused."""

    index: int
    worker_type: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "worker_type": self.worker_type, "reason": self.reason}


@dataclass
class PlanCheck:
    """Valid subtasks, the refused ones, and the model's stated decisions."""

    subtasks: list[Subtask] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


def catalog_text(catalog: dict[str, WorkerSpec]) -> str:
    """The workers as the planner sees them: name, description, input schema."""
    parts = []
    for name, spec in sorted(catalog.items()):
        schema = json.dumps(spec.input_schema or {"type": "object"}, sort_keys=True)
        parts.append(
            f"- worker_type: {name}\n  description: {spec.description or '(none)'}\n  input_schema: {schema}"
        )
    return "\n".join(parts)


def decompose_prompt(goal: GoalMessage, catalog: dict[str, WorkerSpec], max_subtasks: int) -> str:
    """The user message asking for a plan."""
    context = json.dumps(goal.context, sort_keys=True, default=str)
    return (
        f"Goal: {goal.instruction}\nContext: {context}\n\nWorkers:\n{catalog_text(catalog)}\n\n"
        f"Use at most {max_subtasks} subtasks."
    )


def feedback_prompt(rejected: list[Rejected]) -> str:
    """What was wrong with the plan, for the next round."""
    lines = [f"- subtask {r.index} ({r.worker_type or 'no worker'}): {r.reason}" for r in rejected]
    return (
        "Some subtasks were invalid and were not dispatched:\n"
        + "\n".join(lines)
        + "\nAnswer with the complete corrected plan (all subtasks, same JSON shape)."
    )


def check_plan(text: str, catalog: dict[str, WorkerSpec], max_subtasks: int) -> PlanCheck:
    """Parse the model's reply and check every subtask against the catalog and input schemas."""
    out = PlanCheck()
    try:
        raw = extract_json(text)
    except NoJSONFound as exc:
        out.rejected.append(Rejected(-1, None, f"the reply holds no JSON plan: {exc}"))
        return out
    if not isinstance(raw, dict) or not isinstance(raw.get("subtasks"), list):
        out.rejected.append(Rejected(-1, None, 'the plan must be an object with a "subtasks" list'))
        return out
    out.decisions = [str(d) for d in raw.get("decisions") or [] if isinstance(d, str | int | float)]
    seen: set[str] = set()
    for i, item in enumerate(raw["subtasks"]):
        if not isinstance(item, dict):
            out.rejected.append(Rejected(i, None, "a subtask must be an object"))
            continue
        wt = item.get("worker_type")
        if not isinstance(wt, str) or wt not in catalog:
            out.rejected.append(
                Rejected(
                    i,
                    wt if isinstance(wt, str) else None,
                    f"unknown worker_type {wt!r} (known: {', '.join(sorted(catalog))})",
                )
            )
            continue
        payload = item.get("payload")
        if not isinstance(payload, dict):
            out.rejected.append(Rejected(i, wt, "payload must be an object"))
            continue
        problems = errors_for(payload, catalog[wt].input_schema)
        if problems:
            out.rejected.append(Rejected(i, wt, "payload breaks the input schema: " + "; ".join(problems)))
            continue
        tier = item.get("tier")
        if tier is not None and tier not in catalog[wt].served_tiers:
            tier = None  # the worker does not serve it; the router picks the worker's default
        if len(out.subtasks) >= max_subtasks:
            out.rejected.append(Rejected(i, wt, f"more than {max_subtasks} subtasks"))
            continue
        sid = _unique(_ID.sub("-", str(item.get("id") or f"{wt}-{i}")).strip("-")[:40] or f"s{i}", seen)
        out.subtasks.append(
            Subtask(id=sid, worker_type=wt, payload=payload, tier=tier, why=str(item.get("why", "")))
        )
    return out


def _unique(base: str, seen: set[str]) -> str:
    sid, n = base, 2
    while sid in seen:
        sid, n = f"{base}-{n}", n + 1
    seen.add(sid)
    return sid


def result_line(subtask_id: str, worker_type: str, status: str, body: Any, limit: int = 400) -> str:
    """One completed subtask as a line of context (outputs cut to ``limit`` characters)."""
    text = json.dumps(body, sort_keys=True, default=str)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"[{subtask_id}] {worker_type} {status}: {text}"


def executive_summary(
    goal: GoalMessage, previous: str, lines: list[str], pending: int, limit: int = 4000
) -> str:
    """The compressed context a checkpoint carries: goal, earlier summary, newer results, what is left."""
    parts = [f"Goal: {goal.instruction}"]
    if previous:
        parts.append(
            previous.split("\n", 1)[1] if previous.startswith("Goal: ") and "\n" in previous else previous
        )
    parts += lines
    parts.append(f"Pending subtasks: {pending}")
    text = "\n".join(p for p in parts if p)
    if len(text) > limit:
        head = f"Goal: {goal.instruction}\n"
        text = head + "..." + text[-(limit - len(head) - 3) :]
    return text


def merge(results: dict[str, Any], failed: dict[str, str], rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """The deterministic synthesis: every output under its subtask id, failures and drops alongside."""
    return {
        "results": dict(sorted(results.items())),
        "failed": dict(sorted(failed.items())),
        "rejected": rejected,
    }


def synthesize_prompt(goal: GoalMessage, summary: str, recent: list[str], failed: dict[str, str]) -> str:
    """The user message asking for the final answer."""
    fails = "\n".join(f"- {k}: {v}" for k, v in sorted(failed.items())) or "(none)"
    return (
        f"Goal: {goal.instruction}\n\nSummary so far:\n{summary or '(none)'}\n\n"
        f"Latest results:\n{chr(10).join(recent) or '(none)'}\n\nFailed subtasks:\n{fails}"
    )
