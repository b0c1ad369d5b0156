"""Schedule → ConfigMap (``schedule.yaml``) + Deployment ``<name>-scheduler`` running ``loom scheduler``.

Why a scheduler Deployment per Schedule rather than the operator firing schedules itself:
the operator stays a control plane only (no NATS publish rights, no data-plane credentials),
fires keep happening while the operator is down or upgraded, the runtime's scheduler is the
same code local mode runs, and each fire carries ``Nats-Msg-Id: <schedule>/<fire time>`` so
JetStream's duplicate window makes extra replicas or overlapping rollouts harmless. A
suspended Schedule keeps its ConfigMap and scales its Deployment to zero.

The operator only *computes* ``lastScheduleTime``/``nextScheduleTime`` for status
(``fire_times``, pure, with the scheduler's own slot rule) so ``kubectl get schedules`` shows them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loom.api import ScheduleSpec
from loom.api.common import ResourceRequirements
from loom.scheduler.plan import next_fire, slot_at_or_before
from loom_operator.render.common import Owner, config_hash, config_map, deployment, manifest_text
from loom_operator.settings import Settings

CONFIG_KEY = "schedule.yaml"
#: A scheduler sleeps until the next fire and publishes one message: it needs little.
SCHEDULER_RESOURCES = ResourceRequirements(
    requests={"cpu": "20m", "memory": "64Mi"}, limits={"memory": "256Mi"}
)


def render_schedule(owner: Owner, spec: ScheduleSpec, settings: Settings) -> list[dict[str, Any]]:
    """Every child of a Schedule."""
    cm = config_map(owner, CONFIG_KEY, manifest_text("Schedule", owner, spec.to_manifest_dict()))
    return [
        cm,
        deployment(
            owner,
            name=f"{owner.name}-scheduler",
            args=["scheduler", "--config", f"/etc/loom/{CONFIG_KEY}"],
            config_key=CONFIG_KEY,
            hash_=config_hash(cm["data"]),
            resources=SCHEDULER_RESOURCES,
            settings=settings,
            replicas=0 if spec.suspend else 1,
        ),
    ]


def describe(spec: ScheduleSpec) -> str:
    """The Schedule column: the cron expression (with zone when not UTC) or ``every <n>s``."""
    if spec.cron:
        return spec.cron if spec.timezone == "UTC" else f"{spec.cron} ({spec.timezone})"
    return f"every {spec.interval_seconds}s"


def fire_times(spec: ScheduleSpec, since: datetime, now: datetime) -> tuple[datetime | None, datetime | None]:
    """(last fire due in (since, now], next fire after now) in UTC; None where there is none.

    The slots are the scheduler's own (:mod:`loom.scheduler.plan`: cron in the schedule's
    zone, intervals counted from the Unix epoch), so status shows the fires that really
    happen; ``since`` (the creation) only hides slots from before the schedule existed.
    Suspended schedules have no next fire.
    """
    last = slot_at_or_before(spec, now)
    if last is not None and last <= since:
        last = None
    nxt = None if spec.suspend else next_fire(spec, now)
    return last, nxt
