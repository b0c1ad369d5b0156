"""Pure helpers for dead letters: stable ids, keeping the original bytes, and getting them back."""

from __future__ import annotations

import base64
import hashlib
from typing import Protocol

from loom.messages import DeadLetter, DeadLetterReason, GoalMessage, TaskMessage
from loom.subjects import named_tenant

_B64 = "b64:"


def encode_original(data: bytes) -> str:
    """The original body as text: UTF-8 when it is, else base64 prefixed ``b64:``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _B64 + base64.b64encode(data).decode("ascii")
    return _B64 + base64.b64encode(data).decode("ascii") if text.startswith(_B64) else text


def decode_original(original: str) -> bytes:
    """Inverse of :func:`encode_original`."""
    if original.startswith(_B64):
        return base64.b64decode(original[len(_B64) :])
    return original.encode("utf-8")


def dead_letter_id(source: str, data: bytes) -> str:
    """A stable id from where the message came from (e.g. ``LOOM_TASKS:42``) and its body.

    The same failure seen twice (a redelivery) gets the same id, which is also the
    ``Nats-Msg-Id`` of the dead letter, so JetStream stores it once.
    """
    h = hashlib.sha256(source.encode())
    h.update(b"\0")
    h.update(data)
    return h.hexdigest()[:24]


def build_dead_letter(
    reason: DeadLetterReason,
    detail: str,
    *,
    subject: str,
    data: bytes,
    origin: str,
    role: str,
    task: TaskMessage | None = None,
    tier: str | None = None,
    deliveries: int | None = None,
    goal: GoalMessage | None = None,
) -> DeadLetter:
    """A dead letter for ``data`` received on ``subject``; ``origin`` names the stored message.

    ``task`` or ``goal`` is the parsed message when it could be parsed (it fills the ids and tenant).
    """
    return DeadLetter(
        dead_letter_id=dead_letter_id(origin, data),
        reason=reason,
        detail=detail,
        subject=subject,
        original=encode_original(data),
        task_id=task.task_id if task else None,
        worker_type=task.worker_type if task else None,
        model_tier=tier or (task.model_tier if task else None),
        goal_id=goal.goal_id if goal else None,
        # Unparsed: the tenant the subject names (NATS permissions tie it to an identity).
        tenant=task.tenant if task else (goal.tenant if goal else named_tenant(subject)),
        deliveries=deliveries,
        source=role,
    )


class Received(Protocol):
    """What is known of a message taken from a stream (a ``loom.bus.Delivery``)."""

    subject: str
    data: bytes

    @property
    def stream_seq(self) -> int: ...

    @property
    def num_delivered(self) -> int: ...


def dead_letter_of(
    received: Received,
    reason: DeadLetterReason,
    detail: str,
    *,
    stream: str,
    role: str,
    task: TaskMessage | None = None,
    tier: str | None = None,
    goal: GoalMessage | None = None,
) -> DeadLetter:
    """The dead letter of a message received from ``stream`` (its sequence names the origin)."""
    return build_dead_letter(
        reason,
        detail,
        subject=received.subject,
        data=received.data,
        origin=f"{stream}:{received.stream_seq}",
        role=role,
        task=task,
        tier=tier,
        deliveries=received.num_delivered,
        goal=goal,
    )
