"""The built-in KEDA-style scaling decision, pure: observed lag and state in, desired replicas out.

Semantics match the ScaledObject the operator renders when KEDA is installed:
  * the tier is *active* when lag > ``activationLag``; an active tier wants
    ``ceil(lag / targetLag)`` replicas, at least one;
  * an inactive tier wants ``minReplicas`` (0 allows scale to zero);
  * the result is clamped to [minReplicas, maxReplicas];
  * scaling up is immediate; scaling down (to zero included) waits until the current
    size has not been needed for ``cooldownSeconds`` — KEDA's cooldownPeriod plus the
    HPA's scale-down stabilisation window;
  * a size above ``maxReplicas`` is corrected at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loom.api import Autoscaling


@dataclass(frozen=True)
class Decision:
    """What to do with one tier, and the state to remember for the next decision."""

    desired: int
    wanted: int
    last_needed: float
    reason: str

    @property
    def changes(self) -> bool:
        return self.reason in ("scale-up", "scale-down", "clamp")


def wanted_replicas(lag: int, spec: Autoscaling) -> int:
    """Replicas the lag alone calls for, within bounds (no cooldown)."""
    active = lag > spec.activation_lag
    want = max(1, math.ceil(lag / spec.target_lag)) if active else 0
    return min(max(want, spec.min_replicas), spec.max_replicas)


def decide(lag: int, current: int, last_needed: float | None, spec: Autoscaling, now: float) -> Decision:
    """Desired replicas for a tier with ``current`` replicas and ``lag`` pending + unacked tasks.

    ``last_needed`` is the last time (same clock as ``now``) the current size was needed;
    None when unknown (e.g. after an operator restart), which starts a fresh cooldown.
    """
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    want = wanted_replicas(lag, spec)
    if current > spec.max_replicas:
        return Decision(want, want, now, "clamp")
    if want > current:
        return Decision(want, want, now, "scale-up")
    if want == current:
        return Decision(current, want, now, "steady")
    since = now if last_needed is None else last_needed
    if now - since >= spec.cooldown_seconds:
        return Decision(want, want, now, "scale-down")
    return Decision(current, want, since, "cooldown")
