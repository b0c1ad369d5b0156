"""Taking a goal off the bus, for the roles that run goals (pipelines and the goal orchestrator).

A goal message that cannot be read becomes a ``malformed`` dead letter at once
(no retry can fix it). A goal being worked on is acknowledged only when it has
finished, so while it runs a heartbeat keeps JetStream from handing it to
another replica; a lost heartbeat only risks a redelivery, which the stored
goal state makes harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loom import metrics
from loom.audit import dead_letter_record
from loom.dead_letters import dead_letter_of
from loom.messages import DeadLetterReason, GoalMessage, GoalResult, TaskStatus, describe_validation_error
from loom.quotas import MAX_PAYLOAD_ENV, max_payload_bytes, payload_problem
from loom.subjects import STREAM_GOALS, tenant_of_subject

if TYPE_CHECKING:
    from loom.bus import Delivery, RoleBus

log = logging.getLogger(__name__)


async def read_goal(bus: RoleBus, d: Delivery, role: str, max_bytes: int | None = None) -> GoalMessage | None:
    """The goal in ``d``; None when it is not one or is over ``max_bytes`` (default
    :func:`~loom.quotas.max_payload_bytes`), then it is dead-lettered and settled."""
    too_large = payload_problem(
        len(d.data), max_payload_bytes() if max_bytes is None else max_bytes, "goal", MAX_PAYLOAD_ENV
    )
    if too_large is not None:
        await _too_large(bus, d, role, too_large)
        return None
    try:
        goal: GoalMessage = GoalMessage.from_bytes(d.data)
    except ValidationError as exc:
        reason = f"not a goal the {role} can run: {describe_validation_error(exc)}"
        malformed = dead_letter_of(d, DeadLetterReason.MALFORMED, reason, stream=STREAM_GOALS, role=role)
        await bus.publish_dead_letter(malformed)
        await d.term()
        bus.audit.emit(lambda: dead_letter_record(malformed))
        return None
    # The tenant is the one the subject (tied to an identity by NATS permissions) names.
    return goal.model_copy(update={"tenant": tenant_of_subject(d.subject)})


async def _too_large(bus: RoleBus, d: Delivery, role: str, detail: str) -> None:
    """Dead-letter an oversized goal without its body; its caller gets a failed GoalResult."""
    goal: GoalMessage | None = None
    with contextlib.suppress(ValidationError):
        goal = GoalMessage.from_bytes(d.data).model_copy(update={"tenant": tenant_of_subject(d.subject)})
    reason = DeadLetterReason.TOO_LARGE
    dl = dead_letter_of(d, reason, detail, stream=STREAM_GOALS, role=role, goal=goal)
    await bus.publish_dead_letter(dl.model_copy(update={"original": ""}))
    bus.audit.emit(lambda: dead_letter_record(dl))
    if goal is not None:
        await bus.publish_result(
            GoalResult(
                goal_id=goal.goal_id,
                status=TaskStatus.FAILED,
                error=f"{reason.value}: {detail}",
                pipeline=goal.pipeline,
                tenant=goal.tenant,
                request_id=goal.request_id,
            )
        )
    await d.term()
    metrics.DEAD_LETTERS.labels(reason.value, role).inc()


@contextlib.asynccontextmanager
async def heartbeat(beat: Callable[[], Awaitable[Any]] | None, every: float) -> AsyncIterator[None]:
    """Call ``beat()`` every ``every`` seconds while the block runs (nothing when ``beat`` is None)."""
    task = asyncio.create_task(_beat(beat, every)) if beat is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _beat(beat: Callable[[], Awaitable[Any]], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await beat()
        except Exception as exc:
            log.warning("goal heartbeat failed: %s", exc)
