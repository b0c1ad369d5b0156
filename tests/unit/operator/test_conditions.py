"""kstatus conditions: always the full list, transition times move only on status flips."""

from __future__ import annotations

from datetime import UTC, datetime

from loom_operator.conditions import Phase, build_conditions, condition, is_true, rfc3339, same_ignoring_times

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2025, 1, 1, 12, 5, 0, tzinfo=UTC)


def test_ready_progressing_and_stalled_map_to_kstatus() -> None:
    ready = build_conditions(Phase.ready(), 3, None, T0)
    assert [(c["type"], c["status"]) for c in ready] == [
        ("Ready", "True"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
    ]
    assert all(
        c["observedGeneration"] == 3 and c["lastTransitionTime"] == "2025-01-01T12:00:00Z" for c in ready
    )
    prog = build_conditions(Phase.progressing("RollingOut", "1/2 available"), 4, ready, T1)
    assert is_true(prog, "Reconciling") and not is_true(prog, "Ready")
    assert condition(prog, "Reconciling")["message"] == "1/2 available"  # type: ignore[index]
    stalled = build_conditions(Phase.stalled("UnknownTier", "tier 'x' is not defined"), 5, prog, T1)
    assert is_true(stalled, "Stalled") and not is_true(stalled, "Reconciling")
    assert condition(stalled, "Stalled")["reason"] == "UnknownTier"  # type: ignore[index]


def test_transition_time_kept_when_status_unchanged() -> None:
    first = build_conditions(Phase.ready(), 1, None, T0)
    again = build_conditions(Phase.ready(), 2, first, T1)
    assert condition(again, "Ready")["lastTransitionTime"] == rfc3339(T0)  # type: ignore[index]
    flipped = build_conditions(Phase.progressing("RollingOut", "x"), 3, again, T1)
    assert condition(flipped, "Ready")["lastTransitionTime"] == rfc3339(T1)  # type: ignore[index]
    assert condition(flipped, "Stalled")["lastTransitionTime"] == rfc3339(T0)  # type: ignore[index]


def test_foreign_conditions_are_kept_in_the_full_list() -> None:
    prev = [{"type": "Custom", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "t"}]
    out = build_conditions(Phase.ready(), 1, prev, T0)
    assert [c["type"] for c in out] == ["Ready", "Reconciling", "Stalled", "Custom"]


def test_same_ignoring_times() -> None:
    a = build_conditions(Phase.ready(), 1, None, T0)
    b = build_conditions(Phase.ready(), 1, None, T1)
    assert same_ignoring_times(a, b)
    assert not same_ignoring_times(a, build_conditions(Phase.ready(), 2, None, T0))
