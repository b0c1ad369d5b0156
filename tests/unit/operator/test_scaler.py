"""The built-in scaler's pure decision: activation, target lag, cooldown, scale to zero, bounds."""

from __future__ import annotations

from loom.api import Autoscaling
from loom_operator.scaler import decide, wanted_replicas

SPEC = Autoscaling(min_replicas=0, max_replicas=5, target_lag=10, activation_lag=3, cooldown_seconds=60)


def test_wanted_replicas_follows_target_lag_within_bounds() -> None:
    assert wanted_replicas(0, SPEC) == 0
    assert wanted_replicas(3, SPEC) == 0  # not above activation
    assert wanted_replicas(4, SPEC) == 1
    assert wanted_replicas(25, SPEC) == 3
    assert wanted_replicas(10_000, SPEC) == 5
    assert wanted_replicas(0, Autoscaling(min_replicas=2, max_replicas=4)) == 2


def test_scale_up_is_immediate() -> None:
    d = decide(lag=42, current=1, last_needed=100.0, spec=SPEC, now=101.0)
    assert (d.desired, d.reason, d.last_needed) == (5, "scale-up", 101.0)
    d = decide(lag=5, current=0, last_needed=None, spec=SPEC, now=0.0)
    assert (d.desired, d.reason) == (1, "scale-up")


def test_scale_down_waits_for_cooldown_then_goes_to_zero() -> None:
    d = decide(lag=30, current=3, last_needed=None, spec=SPEC, now=0.0)
    assert (d.desired, d.reason) == (3, "steady")
    d = decide(lag=0, current=3, last_needed=d.last_needed, spec=SPEC, now=30.0)
    assert (d.desired, d.wanted, d.reason, d.last_needed) == (3, 0, "cooldown", 0.0)
    d = decide(lag=0, current=3, last_needed=d.last_needed, spec=SPEC, now=59.0)
    assert d.desired == 3
    d = decide(lag=0, current=3, last_needed=d.last_needed, spec=SPEC, now=60.0)
    assert (d.desired, d.reason) == (0, "scale-down")


def test_renewed_need_restarts_the_cooldown() -> None:
    d = decide(lag=0, current=2, last_needed=0.0, spec=SPEC, now=50.0)
    assert d.reason == "cooldown"
    d = decide(lag=20, current=2, last_needed=d.last_needed, spec=SPEC, now=55.0)
    assert (d.reason, d.last_needed) == ("steady", 55.0)
    d = decide(lag=0, current=2, last_needed=d.last_needed, spec=SPEC, now=100.0)
    assert d.desired == 2  # only 45 s since the size was last needed


def test_unknown_history_starts_a_fresh_cooldown() -> None:
    d = decide(lag=0, current=2, last_needed=None, spec=SPEC, now=1000.0)
    assert (d.desired, d.reason, d.last_needed) == (2, "cooldown", 1000.0)


def test_bounds_are_enforced_at_once() -> None:
    d = decide(lag=0, current=9, last_needed=0.0, spec=SPEC, now=1.0)
    assert (d.desired, d.reason) == (0, "clamp")
    floor = Autoscaling(min_replicas=2, max_replicas=4, cooldown_seconds=0)
    d = decide(lag=0, current=0, last_needed=None, spec=floor, now=0.0)
    assert (d.desired, d.reason) == (2, "scale-up")
    d = decide(lag=0, current=4, last_needed=0.0, spec=floor, now=0.0)
    assert (d.desired, d.reason) == (2, "scale-down")  # zero cooldown


def test_negative_lag_is_rejected() -> None:
    import pytest

    with pytest.raises(ValueError):
        decide(lag=-1, current=0, last_needed=None, spec=SPEC, now=0.0)
