"""lastScheduleTime / nextScheduleTime for Schedule status, computed with croniter (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from loom.api.schedule import ScheduleSpec
from loom_operator.render.schedule import describe, fire_times

CREATED = datetime(2025, 3, 1, 9, 0, 30, tzinfo=UTC)


def spec(**kw: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "s", "goal": {"instruction": "x"}, **kw})


def test_cron_last_and_next() -> None:
    s = spec(cron="*/15 * * * *")
    last, nxt = fire_times(s, CREATED, datetime(2025, 3, 1, 9, 40, tzinfo=UTC))
    assert last == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    assert nxt == datetime(2025, 3, 1, 9, 45, tzinfo=UTC)
    # Nothing was due yet right after creation.
    last, nxt = fire_times(s, CREATED, datetime(2025, 3, 1, 9, 5, tzinfo=UTC))
    assert last is None and nxt == datetime(2025, 3, 1, 9, 15, tzinfo=UTC)


def test_cron_in_a_time_zone() -> None:
    s = spec(cron="0 9 * * *", timezone="Europe/Berlin")
    _, nxt = fire_times(s, CREATED, datetime(2025, 3, 1, 9, 0, 45, tzinfo=UTC))
    assert nxt == datetime(2025, 3, 2, 8, 0, tzinfo=UTC)  # 09:00 CET
    assert describe(s) == "0 9 * * * (Europe/Berlin)"


def test_interval_counts_from_creation() -> None:
    s = spec(intervalSeconds=60)
    last, nxt = fire_times(s, CREATED, datetime(2025, 3, 1, 9, 3, 0, tzinfo=UTC))
    assert last == datetime(2025, 3, 1, 9, 2, 30, tzinfo=UTC)
    assert nxt == datetime(2025, 3, 1, 9, 3, 30, tzinfo=UTC)
    assert describe(s) == "every 60s"


def test_suspended_schedule_has_no_next_fire() -> None:
    _, nxt = fire_times(spec(cron="@hourly", suspend=True), CREATED, datetime(2025, 3, 2, tzinfo=UTC))
    assert nxt is None
