"""Dead letters in the page (pure): the original shown for editing, and an edit checked before replay.

A corrected task or goal must still be a valid message of its kind, so a replay never sends
something the router or pipeline would dead-letter again for being malformed.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from loom.dead_letters import decode_original
from loom.messages import DeadLetter, GoalMessage, TaskMessage


class ReplayError(ValueError):
    """The edited body cannot be replayed; the message says why."""


def editable(dl: DeadLetter) -> str:
    """The original body as text to edit: indented JSON when it is JSON, else as received."""
    raw = decode_original(dl.original).decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except ValueError:
        return raw


def corrected_body(dl: DeadLetter, edited: str) -> bytes | None:
    """The body to replay: None when the edit changes nothing (the kept original bytes go out)."""
    if edited.replace("\r\n", "\n").strip() == editable(dl).strip():
        return None
    try:
        doc = json.loads(edited)
    except ValueError as exc:
        raise ReplayError(f"the edited message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReplayError("the edited message must be a JSON object")
    model: type[TaskMessage] | type[GoalMessage] | None = (
        TaskMessage
        if dl.task_id or "worker_type" in doc
        else GoalMessage
        if dl.goal_id or "goal_id" in doc
        else None
    )
    if model is None:
        raise ReplayError("the edited message is neither a task (worker_type) nor a goal (goal_id)")
    try:
        model.model_validate(doc)
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()]
        raise ReplayError(f"not a valid {model.__name__}: " + "; ".join(lines)) from None
    return json.dumps(doc, ensure_ascii=False).encode()
