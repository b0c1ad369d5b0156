"""kstatus conditions, pure.

Kopf (and any JSON merge patch) replaces a list wholesale, so callers always build
and write the *full* conditions list. ``lastTransitionTime`` only moves when a
condition's status flips, which is what ``kubectl wait`` and kstatus expect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Phase:
    """What the reconciler concluded: one of ready, progressing or stalled, with a reason and message."""

    state: Literal["ready", "progressing", "stalled"]
    reason: str
    message: str

    @classmethod
    def ready(cls, message: str = "all children are available") -> Phase:
        return cls("ready", "Available", message)

    @classmethod
    def progressing(cls, reason: str, message: str) -> Phase:
        return cls("progressing", reason, message)

    @classmethod
    def stalled(cls, reason: str, message: str) -> Phase:
        return cls("stalled", reason, message)


def rfc3339(moment: datetime) -> str:
    """UTC, second precision, ``Z`` suffix: the form Kubernetes uses for times."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    ctype: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    moved = previous is None or previous.get("status") != status
    cond: dict[str, Any] = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if moved else previous.get("lastTransitionTime", now),  # type: ignore[union-attr]
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def build_conditions(
    phase: Phase,
    generation: int | None,
    previous: Iterable[Mapping[str, Any]] | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The full kstatus conditions list for ``phase``, keeping transition times of unchanged conditions.

    kstatus semantics: Ready=True only when done; Reconciling=True while converging;
    Stalled=True when the operator cannot make progress without a spec change.
    Conditions of other types already present (set by someone else) are kept.
    """
    prev = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    stamp = rfc3339(now)
    ok_reason, ok_msg = phase.reason, phase.message
    if phase.state == "ready":
        wanted = [
            (READY, "True", ok_reason, ok_msg),
            (RECONCILING, "False", "Reconciled", "up to date"),
            (STALLED, "False", "Reconciled", "up to date"),
        ]
    elif phase.state == "progressing":
        wanted = [
            (READY, "False", ok_reason, ok_msg),
            (RECONCILING, "True", ok_reason, ok_msg),
            (STALLED, "False", "Progressing", "making progress"),
        ]
    else:
        wanted = [
            (READY, "False", ok_reason, ok_msg),
            (RECONCILING, "False", ok_reason, "stalled: fix the spec"),
            (STALLED, "True", ok_reason, ok_msg),
        ]
    out = [
        _condition(t, s, r, m, generation, prev.get(t), stamp)  # type: ignore[arg-type]
        for t, s, r, m in wanted
    ]
    out += [dict(c) for t, c in prev.items() if t not in CONDITION_TYPES]
    return out


def condition(conditions: Iterable[Mapping[str, Any]] | None, ctype: str) -> Mapping[str, Any] | None:
    """The condition of a type, or None."""
    for c in conditions or ():
        if c.get("type") == ctype:
            return c
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, ctype: str) -> bool:
    c = condition(conditions, ctype)
    return c is not None and c.get("status") == "True"


def same_ignoring_times(a: Iterable[Mapping[str, Any]] | None, b: Iterable[Mapping[str, Any]] | None) -> bool:
    """Equal apart from ``lastTransitionTime``: used to skip status writes that change nothing."""

    def strip(cs: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
        return sorted(
            ({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or ()),
            key=lambda c: str(c.get("type")),
        )

    return strip(a) == strip(b)
