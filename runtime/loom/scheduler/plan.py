"""When a schedule fires, and what to do about fires missed while no scheduler ran. Pure.

Fire times are a function of the schedule alone, never of when a process
started: cron slots come from croniter in the schedule's time zone, interval
slots are multiples of the interval counted from the Unix epoch. Every replica
therefore computes the same slots, and the dispatch id ``<schedule>/<slot>``
lets JetStream's duplicate window keep one dispatch per slot.

On each pass the scheduler asks :func:`decide` what is due between the last
recorded fire and now. Only the newest due slot can fire; older ones are
missed. Whether the newest fires depends on how late it is:

- ``skip``: only if it is late by at most ``starting_deadline_seconds`` (or
  :data:`ON_TIME_SECONDS` when unset) — fires missed while down are dropped;
- ``fire_once``: if it is late by at most ``starting_deadline_seconds`` (no
  limit when unset) — one make-up fire on start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from loom.api.schedule import ScheduleSpec

#: How late a slot may fire under the ``skip`` policy when no starting deadline is set.
ON_TIME_SECONDS = 60.0
#: At most this many missed slots are listed (the count stays exact).
MAX_LISTED_MISSES = 100


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value


def next_fire(spec: ScheduleSpec, after: datetime) -> datetime:
    """The first slot strictly after ``after`` (timezone-aware, in UTC)."""
    after = _aware(after)
    if spec.interval_seconds is not None:
        step = spec.interval_seconds
        return datetime.fromtimestamp((int(after.timestamp() // step) + 1) * step, UTC)
    assert spec.cron is not None
    local = after.astimezone(ZoneInfo(spec.timezone))
    nxt: datetime = croniter(spec.cron, local).get_next(datetime)
    return nxt.astimezone(UTC)


def slot_at_or_before(spec: ScheduleSpec, at: datetime) -> datetime | None:
    """The newest slot at or before ``at`` (None when a cron has no earlier slot)."""
    at = _aware(at)
    if spec.interval_seconds is not None:
        step = spec.interval_seconds
        return datetime.fromtimestamp(int(at.timestamp() // step) * step, UTC)
    assert spec.cron is not None
    local = (at + timedelta(microseconds=1)).astimezone(ZoneInfo(spec.timezone))
    try:
        prev: datetime = croniter(spec.cron, local).get_prev(datetime)
    except CroniterBadDateError:
        return None
    return prev.astimezone(UTC)


def slots_between(
    spec: ScheduleSpec, start: datetime, end: datetime, limit: int | None = None
) -> list[datetime]:
    """Slots in ``(start, end]``, oldest first (at most ``limit`` of them)."""
    out: list[datetime] = []
    t = next_fire(spec, start)
    while t <= end and (limit is None or len(out) < limit):
        out.append(t)
        t = next_fire(spec, t)
    return out


def count_slots_between(spec: ScheduleSpec, start: datetime, end: datetime) -> int:
    """How many slots lie in ``(start, end]`` (exact for intervals, counted for cron)."""
    if end <= start:
        return 0
    if spec.interval_seconds is not None:
        step = spec.interval_seconds
        return int(end.timestamp() // step) - int(start.timestamp() // step)
    return len(slots_between(spec, start, end))


@dataclass(frozen=True)
class Decision:
    """What one pass does for one schedule."""

    fire: datetime | None
    missed: list[datetime] = field(default_factory=list)
    missed_count: int = 0
    next_fire: datetime | None = None
    #: The fire time to record as handled (the newest due slot, fired or not).
    handled_up_to: datetime | None = None


def lateness_allowed(spec: ScheduleSpec) -> float | None:
    """How late the newest due slot may still fire (None: no limit)."""
    if spec.starting_deadline_seconds is not None:
        return float(spec.starting_deadline_seconds)
    return ON_TIME_SECONDS if spec.missed_fire_policy == "skip" else None


def decide(spec: ScheduleSpec, last_fire: datetime | None, now: datetime) -> Decision:
    """What is due for ``spec`` at ``now``, given the last slot handled (None: a new schedule).

    A new schedule has missed nothing: its first slot is the first one after ``now``
    unless a slot falls exactly on ``now``.
    """
    now = _aware(now)
    upcoming = next_fire(spec, now)
    if spec.suspend:
        return Decision(fire=None, next_fire=upcoming, handled_up_to=last_fire)
    newest = slot_at_or_before(spec, now)
    if last_fire is None:
        return Decision(fire=newest if newest == now else None, next_fire=upcoming, handled_up_to=newest)
    if newest is None or newest <= last_fire:
        return Decision(fire=None, next_fire=upcoming, handled_up_to=last_fire)
    due_count = count_slots_between(spec, last_fire, newest)
    older = due_count - 1
    listed = slots_between(spec, last_fire, newest, limit=min(older, MAX_LISTED_MISSES)) if older else []
    allowed = lateness_allowed(spec)
    late = (now - newest).total_seconds()
    if allowed is None or late <= allowed:
        return Decision(
            fire=newest, missed=listed, missed_count=older, next_fire=upcoming, handled_up_to=newest
        )
    if len(listed) < MAX_LISTED_MISSES:
        listed = [*listed, newest]
    return Decision(
        fire=None, missed=listed, missed_count=due_count, next_fire=upcoming, handled_up_to=newest
    )


def dispatch_id(schedule: str, fire: datetime) -> str:
    """``<schedule>/<fire time ISO, UTC>``: the ``Nats-Msg-Id`` of one slot's dispatch."""
    return f"{schedule}/{fire.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"
