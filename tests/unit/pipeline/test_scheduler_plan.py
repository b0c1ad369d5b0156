"""Fire times and the missed-fire policy, computed against explicit times (no clock, no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from loom.api.schedule import ScheduleSpec
from loom.scheduler.plan import (
    ON_TIME_SECONDS,
    decide,
    dispatch_id,
    next_fire,
    slot_at_or_before,
    slots_between,
)


def spec(**kw: Any) -> ScheduleSpec:
    base: dict[str, Any] = {"name": "nightly", "goal": {"instruction": "go", "pipeline": "p"}}
    return ScheduleSpec.model_validate(base | kw)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_cron_next_fire_in_utc() -> None:
    s = spec(cron="*/15 * * * *")
    assert next_fire(s, utc(2024, 1, 1, 10, 7)) == utc(2024, 1, 1, 10, 15)
    assert next_fire(s, utc(2024, 1, 1, 10, 15)) == utc(2024, 1, 1, 10, 30)


def test_cron_honours_time_zone_and_dst() -> None:
    s = spec(cron="0 9 * * *", timezone="Europe/Berlin")
    # Winter: 09:00 CET is 08:00 UTC; summer: 09:00 CEST is 07:00 UTC.
    assert next_fire(s, utc(2024, 1, 10, 0, 0)) == utc(2024, 1, 10, 8, 0)
    assert next_fire(s, utc(2024, 7, 10, 0, 0)) == utc(2024, 7, 10, 7, 0)
    # Across the spring-forward night the daily slot stays at 09:00 local.
    fires = slots_between(s, utc(2024, 3, 30, 0, 0), utc(2024, 4, 1, 0, 0))
    assert fires == [utc(2024, 3, 30, 8, 0), utc(2024, 3, 31, 7, 0)]


def test_interval_slots_are_anchored_to_the_epoch() -> None:
    s = spec(interval_seconds=300)
    # Same slots whatever the asking time: replicas agree on dispatch ids.
    assert next_fire(s, utc(2024, 1, 1, 10, 1, 13)) == utc(2024, 1, 1, 10, 5)
    assert next_fire(s, utc(2024, 1, 1, 10, 4, 59)) == utc(2024, 1, 1, 10, 5)
    assert slot_at_or_before(s, utc(2024, 1, 1, 10, 5)) == utc(2024, 1, 1, 10, 5)
    assert slot_at_or_before(s, utc(2024, 1, 1, 10, 9, 59)) == utc(2024, 1, 1, 10, 5)


def test_naive_datetimes_are_rejected() -> None:
    s = spec(interval_seconds=60)
    try:
        next_fire(s, datetime(2024, 1, 1))
    except ValueError as exc:
        assert "timezone-aware" in str(exc)
    else:
        raise AssertionError("naive datetime accepted")


def test_new_schedule_misses_nothing() -> None:
    s = spec(interval_seconds=60)
    d = decide(s, None, utc(2024, 1, 1, 10, 0, 30))
    assert d.fire is None and d.missed_count == 0
    assert d.next_fire == utc(2024, 1, 1, 10, 1)
    exact = decide(s, None, utc(2024, 1, 1, 10, 1))
    assert exact.fire == utc(2024, 1, 1, 10, 1)


def test_on_time_fire_and_nothing_twice() -> None:
    s = spec(cron="0 * * * *")
    last = utc(2024, 1, 1, 9, 0)
    d = decide(s, last, utc(2024, 1, 1, 10, 0, 2))
    assert d.fire == utc(2024, 1, 1, 10, 0) and d.missed_count == 0
    again = decide(s, d.handled_up_to, utc(2024, 1, 1, 10, 0, 3))
    assert again.fire is None and again.missed_count == 0
    assert again.next_fire == utc(2024, 1, 1, 11, 0)


def test_skip_drops_fires_missed_while_down() -> None:
    s = spec(cron="0 * * * *", missed_fire_policy="skip")
    # Down from 09:00 until 12:30: slots 10, 11, 12 are due; 12:00 is 30 min late.
    d = decide(s, utc(2024, 1, 1, 9, 0), utc(2024, 1, 1, 12, 30))
    assert d.fire is None
    assert d.missed_count == 3
    assert d.missed == [utc(2024, 1, 1, h, 0) for h in (10, 11, 12)]
    assert d.handled_up_to == utc(2024, 1, 1, 12, 0)


def test_skip_still_fires_a_slightly_late_slot() -> None:
    s = spec(cron="0 * * * *", missed_fire_policy="skip")
    d = decide(s, utc(2024, 1, 1, 9, 0), utc(2024, 1, 1, 12, 0) + timedelta(seconds=ON_TIME_SECONDS - 1))
    assert d.fire == utc(2024, 1, 1, 12, 0)
    assert d.missed_count == 2


def test_fire_once_makes_up_one_fire() -> None:
    s = spec(cron="0 * * * *", missed_fire_policy="fire_once")
    d = decide(s, utc(2024, 1, 1, 9, 0), utc(2024, 1, 1, 12, 30))
    assert d.fire == utc(2024, 1, 1, 12, 0)
    assert d.missed_count == 2


def test_fire_once_respects_the_starting_deadline() -> None:
    s = spec(cron="0 * * * *", missed_fire_policy="fire_once", starting_deadline_seconds=600)
    late = decide(s, utc(2024, 1, 1, 9, 0), utc(2024, 1, 1, 12, 30))
    assert late.fire is None and late.missed_count == 3
    in_time = decide(s, utc(2024, 1, 1, 9, 0), utc(2024, 1, 1, 12, 9))
    assert in_time.fire == utc(2024, 1, 1, 12, 0)


def test_many_missed_interval_slots_are_counted_exactly() -> None:
    s = spec(interval_seconds=1, missed_fire_policy="fire_once")
    d = decide(s, utc(2024, 1, 1, 0, 0), utc(2024, 1, 2, 0, 0))
    assert d.fire == utc(2024, 1, 2, 0, 0)
    assert d.missed_count == 86_399
    assert len(d.missed) == 100


def test_suspended_schedule_never_fires() -> None:
    s = spec(interval_seconds=60, suspend=True)
    d = decide(s, utc(2024, 1, 1, 0, 0), utc(2024, 1, 1, 0, 5))
    assert d.fire is None and d.missed_count == 0


def test_dispatch_id_is_stable_utc_iso() -> None:
    berlin = datetime(2024, 1, 1, 11, 0, tzinfo=__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert dispatch_id("nightly", berlin) == "nightly/2024-01-01T10:00:00Z"
    assert dispatch_id("nightly", utc(2024, 1, 1, 10, 0)) == "nightly/2024-01-01T10:00:00Z"
