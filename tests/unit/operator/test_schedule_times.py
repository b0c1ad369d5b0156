"""lastScheduleTime / nextScheduleTime for Schedule status, computed with croniter (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loom.api.schedule import ScheduleSpec
from loom.scheduler.plan import decide
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


def test_interval_slots_are_the_schedulers_epoch_multiples_not_counted_from_creation() -> None:
    """Created at 09:00:30 with a 60 s interval: the scheduler fires at whole minutes, and so does status."""
    s = spec(intervalSeconds=60)
    last, nxt = fire_times(s, CREATED, datetime(2025, 3, 1, 9, 3, 0, tzinfo=UTC))
    assert last == datetime(2025, 3, 1, 9, 3, 0, tzinfo=UTC)
    assert nxt == datetime(2025, 3, 1, 9, 4, 0, tzinfo=UTC)
    assert describe(s) == "every 60s"
    # Right after creation, the slot before it is not reported as a fire.
    last, nxt = fire_times(s, CREATED, datetime(2025, 3, 1, 9, 0, 45, tzinfo=UTC))
    assert last is None and nxt == datetime(2025, 3, 1, 9, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "kw",
    [
        {"intervalSeconds": 60},
        {"intervalSeconds": 7},
        {"cron": "*/15 * * * *"},
        {"cron": "0 9 * * *", "timezone": "Asia/Kolkata"},
    ],
)
def test_status_times_are_the_fires_the_scheduler_makes(kw: dict[str, object]) -> None:
    """Status and the scheduler agree: the next fire status shows is the one decide() fires."""
    s = spec(**kw)
    now = datetime(2025, 3, 1, 9, 40, 10, tzinfo=UTC)
    last, nxt = fire_times(s, CREATED, now)
    assert nxt is not None
    fired = decide(s, last_fire=last or CREATED, now=nxt).fire
    assert fired == nxt
    assert decide(s, last_fire=last or CREATED, now=nxt - timedelta(microseconds=1)).fire is None


def test_suspended_schedule_has_no_next_fire() -> None:
    _, nxt = fire_times(spec(cron="@hourly", suspend=True), CREATED, datetime(2025, 3, 2, tzinfo=UTC))
    assert nxt is None
