"""Loom's durable pull consumers: declaring them, their lag, and which subjects none covers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from loom.bus.connection import BusBase, BusError
from loom.bus.streams import UNAVAILABLE_RETRY
from loom.subjects import (
    ADVISORY_CONSUMER,
    ROUTER_CONSUMER,
    STREAM_ADVISORIES,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
    goal_consumer,
    goal_filters,
    subject_matches,
    task_subject,
    worker_consumer,
)


@dataclass(frozen=True)
class ConsumerLag:
    """Queue depth of one durable consumer: what autoscaling and the lag gauge read."""

    num_pending: int
    num_ack_pending: int
    num_redelivered: int = 0

    @property
    def total(self) -> int:
        """Pending plus unacknowledged: the real backlog."""
        return self.num_pending + self.num_ack_pending


class ConsumersMixin(BusBase):
    """Durable consumers of Loom's streams."""

    async def _ensure_consumer(self, stream: str, config: js_api.ConsumerConfig) -> str:
        """Create or update a durable consumer (creation is idempotent for the same config); retried
        while JetStream is unavailable (a stream electing its leader)."""
        deadline = time.monotonic() + UNAVAILABLE_RETRY
        while True:
            try:
                await self._add_consumer(stream, config)
            except ServiceUnavailableError as exc:
                if time.monotonic() >= deadline:
                    raise BusError(
                        f"cannot create consumer {config.durable_name} on {stream}: {exc.description}"
                    ) from exc
                await asyncio.sleep(0.5)
            else:
                assert config.durable_name
                return config.durable_name

    async def _add_consumer(self, stream: str, config: js_api.ConsumerConfig) -> None:
        try:
            await self.js.add_consumer(stream, config)
        except BadRequestError as exc:
            if exc.err_code not in (10148, 10013, 10105):
                raise
            # An existing consumer whose config differs: update what may be updated.
            req = {"stream_name": stream, "config": config.as_dict(), "action": "update"}
            resp = await self.nc.request(
                f"$JS.API.CONSUMER.CREATE.{stream}.{config.durable_name}", json.dumps(req).encode(), timeout=5
            )
            body = json.loads(resp.data)
            if "error" in body:
                raise BusError(
                    f"cannot update consumer {config.durable_name} on {stream}: {body['error']}"
                ) from exc

    async def ensure_worker_consumer(
        self, worker_type: str, tier: str, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str:
        """The durable pull consumer shared by all replicas of (worker type, tier)."""
        name = worker_consumer(worker_type, tier)
        config = _durable(
            name, ack_wait, max_deliver, max_ack_pending, filter_subject=task_subject(worker_type, tier)
        )
        return await self._ensure_consumer(STREAM_TASKS, config)

    async def ensure_goal_consumer(
        self, pipeline: str | None, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str:
        """The durable pull consumer of one pipeline (``loom.goals.<name>``) or the orchestrator."""
        config = _durable(
            goal_consumer(pipeline),
            ack_wait,
            max_deliver,
            max_ack_pending,
            filter_subjects=goal_filters(pipeline),
        )
        return await self._ensure_consumer(STREAM_GOALS, config)

    async def ensure_router_consumer(self, *, ack_wait: float, max_deliver: int, max_ack_pending: int) -> str:
        """The routers' one shared durable on all router input (every tenant's): each task is routed once."""
        config = _durable(ROUTER_CONSUMER, ack_wait, max_deliver, max_ack_pending)
        return await self._ensure_consumer(STREAM_INCOMING, config)

    async def ensure_advisory_consumer(self) -> str:
        """The routers' shared durable on the captured MAX_DELIVERIES advisories."""
        config = _durable(ADVISORY_CONSUMER, ack_wait=30.0, max_deliver=-1, max_ack_pending=64)
        return await self._ensure_consumer(STREAM_ADVISORIES, config)

    async def consumer_info(self, stream: str, durable: str) -> ConsumerLag:
        """Pending and unacknowledged counts of a durable consumer."""
        info = await self.js.consumer_info(stream, durable)
        return ConsumerLag(
            num_pending=int(info.num_pending or 0),
            num_ack_pending=int(info.num_ack_pending or 0),
            num_redelivered=int(info.num_redelivered or 0),
        )

    async def consumer_filters(self, stream: str) -> dict[str, str]:
        """Durable consumer name -> (first) filter subject, for every consumer of ``stream``."""
        return first_filters(await self._all_filters(stream))

    async def _all_filters(self, stream: str) -> dict[str, list[str]]:
        """Durable consumer name -> every filter subject (empty: the whole stream)."""
        try:
            infos = await self.js.consumers_info(stream)
        except NotFoundError:
            return {}
        out: dict[str, list[str]] = {}
        for i in infos:
            one = [i.config.filter_subject] if i.config.filter_subject else []
            out[str(i.name)] = [str(f) for f in (i.config.filter_subjects or one)]
        return out

    async def subjects_without_consumer(self, stream: str, pattern: str) -> dict[str, int]:
        """Subjects of ``stream`` matching ``pattern`` that hold messages no consumer's filter covers,
        with how many each holds: work that waits for a consumer nobody has created."""
        body = await self._api(f"$JS.API.STREAM.INFO.{stream}", {"subjects_filter": pattern})
        stored: dict[str, int] = (body.get("state") or {}).get("subjects") or {}
        return uncovered(stored, await self._all_filters(stream))


def _durable(
    name: str,
    ack_wait: float,
    max_deliver: int,
    max_ack_pending: int,
    filter_subject: str | None = None,
    filter_subjects: list[str] | None = None,
) -> js_api.ConsumerConfig:
    """A durable pull consumer with explicit acks from the stream's first message (every Loom consumer)."""
    return js_api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=filter_subject,
        filter_subjects=filter_subjects,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )


def first_filters(filters: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Consumer name -> its first filter subject ("" for one on the whole stream)."""
    return {name: (subs[0] if subs else "") for name, subs in filters.items()}


def uncovered(stored: Mapping[str, int], filters: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Of the per-subject message counts ``stored``, those no consumer's filters cover (a consumer
    without filters covers the whole stream)."""
    every = [f for subs in filters.values() for f in (subs or [">"])]
    return {
        subj: int(n) for subj, n in stored.items() if n and not any(subject_matches(f, subj) for f in every)
    }
