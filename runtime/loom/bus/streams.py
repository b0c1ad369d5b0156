"""Loom's streams: their configurations, declaring them, and reading stored messages back."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.js import api as js_api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from loom.api.router_policy import StreamLimits
from loom.bus.connection import BusBase, BusError
from loom.subjects import (
    DEAD_LETTER,
    INCOMING_SUBJECTS,
    STREAM_ADVISORIES,
    STREAM_DEAD_LETTER,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
)

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
ADVISED_STREAMS = (STREAM_TASKS, STREAM_INCOMING, STREAM_GOALS)

DUPLICATE_WINDOW = 120.0
DEAD_LETTER_MAX_AGE = 7 * 24 * 3600.0

#: How long declaring a stream or consumer retries while JetStream answers "unavailable" (a stream
#: electing a leader after a node loss or a replicas change takes a few seconds).
UNAVAILABLE_RETRY = 30.0


@dataclass(frozen=True)
class StoredMessage:
    """A message read back from a stream by sequence."""

    stream: str
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    #: When the stream stored it (UTC), when known.
    stored_at: datetime | None = None


def _parse_time(text: str) -> datetime:
    """An RFC 3339 time from the server (nanoseconds cut to microseconds)."""
    m = re.match(r"^(.*?T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    frac = (m.group(2) or "")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone)


#: The stream config fields a RouterPolicy's ``streams`` sets; only the router changes them on an
#: existing stream (every other role keeps what the stream has, so two configs never fight).
LIMIT_FIELDS = (
    "max_bytes",
    "max_msgs",
    "max_age",
    "discard",
    "max_msgs_per_subject",
    "discard_new_per_subject",
)


def _stream_configs(limits: StreamLimits | None = None, replicas: int = 1) -> list[js_api.StreamConfig]:
    """Every stream Loom uses, with the size, count and age limits of ``limits`` (the defaults if None)
    and ``replicas`` copies of each (on as many JetStream cluster nodes).

    The work queues get ``limits``; router input and goals also cap each subject, that is each
    tenant's submission subject (``....tenant.<t>``; the default tenant's is the bare subject).
    """
    lim = limits or StreamLimits()
    wq = js_api.RetentionPolicy.WORK_QUEUE
    stored: dict[str, Any] = {
        "storage": js_api.StorageType.FILE,
        "num_replicas": replicas,
        "duplicate_window": DUPLICATE_WINDOW,
    }
    queue: dict[str, Any] = {
        **stored,
        "retention": wq,
        "max_bytes": lim.max_bytes,
        "max_msgs": lim.max_messages,
        "max_age": lim.max_age_seconds,
        "discard": js_api.DiscardPolicy(lim.discard),
    }
    per_tenant: dict[str, Any] = {
        "max_msgs_per_subject": lim.max_messages_per_tenant,
        "discard_new_per_subject": lim.discard == "new",
    }
    return [
        js_api.StreamConfig(
            name=STREAM_INCOMING,
            subjects=list(INCOMING_SUBJECTS),
            description="Router input (one shared durable consumer).",
            **queue,
            **per_tenant,
        ),
        js_api.StreamConfig(
            name=STREAM_TASKS,
            subjects=["loom.tasks.*.*"],
            description="Worker input, one durable consumer per type and tier.",
            **queue,
        ),
        js_api.StreamConfig(
            name=STREAM_DEAD_LETTER,
            subjects=[DEAD_LETTER],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=DEAD_LETTER_MAX_AGE,
            max_bytes=lim.dead_letter_max_bytes,
            discard=js_api.DiscardPolicy.OLD,
            **stored,
            description="Dead letters with their reason and original message.",
        ),
        js_api.StreamConfig(
            name=STREAM_GOALS,
            subjects=["loom.goals.>"],
            description="Goals for pipelines and the orchestrator.",
            **queue,
            **per_tenant,
        ),
        js_api.StreamConfig(
            name=STREAM_ADVISORIES,
            subjects=[f"{MAX_DELIVERIES_ADVISORY}.{s}.*" for s in ADVISED_STREAMS],
            retention=wq,
            **stored,
            description="MAX_DELIVERIES advisories, turned into dead letters by the routers.",
        ),
    ]


def _limit_fields(stream: str | None) -> tuple[str, ...]:
    """The fields of ``stream`` a RouterPolicy's ``streams`` sets (the rest are fixed by Loom)."""
    if stream == STREAM_DEAD_LETTER:
        return ("max_bytes",)
    return () if stream == STREAM_ADVISORIES else LIMIT_FIELDS


def keep_limits(config: js_api.StreamConfig, existing: dict[str, Any]) -> js_api.StreamConfig:
    """``config`` with the limit fields the stream already has (see :data:`LIMIT_FIELDS`)."""
    have = js_api.StreamConfig.from_response(dict(existing))
    return dataclasses.replace(config, **{f: getattr(have, f) for f in _limit_fields(config.name)})


def replicas_for(wanted: int | None, existing: dict[str, Any] | None) -> int:
    """The replicas a stream or bucket gets: the setting when given, else what it has (1 when new).

    So a client without the setting (``loom submit`` from a laptop) never scales a cluster's
    streams back down, and changing the setting scales existing ones (a stream update).
    """
    if wanted is not None:
        return wanted
    return int((existing or {}).get("num_replicas") or 1)


def _replicas_error(what: str, replicas: int, exc: APIError) -> BusError:
    return BusError(
        f"cannot declare {what} with {replicas} replicas: {exc.description} "
        f"(LOOM_NATS_REPLICAS must not exceed the number of JetStream servers: 1 on a single server)"
    )


def stream_config_matches(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a stream's stored config already holds every field Loom sets (as the server spells it;
    it leaves out flags that are false)."""
    return all(
        existing.get(key, False if v is False else None) == v for key, v in wanted.items() if key != "name"
    )


class StreamsMixin(BusBase):
    """Declaring Loom's streams and reading their stored messages."""

    async def ensure_streams(self, limits: StreamLimits | None = None) -> None:
        """Declare every stream; an existing stream with a different config is updated.

        ``limits`` (the router passes its RouterPolicy's ``streams``) are applied to new and
        existing streams alike. Without them a new stream gets the default limits and an
        existing one keeps its own, so only the router's policy ever changes them.
        A stream that already has the wanted config is left alone, so an identity
        allowed only to read stream info (a tenant's submitter) connects as well.
        """
        for config in _stream_configs(limits):
            body = await self._api(f"$JS.API.STREAM.INFO.{config.name}", {}, missing_ok=True)
            existing = (body or {}).get("config")
            replicas = replicas_for(self.settings.replicas, existing)
            config = dataclasses.replace(config, num_replicas=replicas)
            if existing and limits is None:
                config = keep_limits(config, existing)
            if existing and stream_config_matches(existing, config.as_dict()):
                continue
            try:
                await self._put_stream(config)
            except APIError as exc:
                if replicas > 1:
                    raise _replicas_error(f"stream {config.name}", replicas, exc) from exc
                raise
            if existing and int(existing.get("num_replicas") or 1) != replicas:
                await self.wait_stream_leader(config.name or "")

    async def _put_stream(self, config: js_api.StreamConfig) -> None:
        """Create ``config``'s stream, or update it when it exists with another configuration."""
        try:
            await self.js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != 10058:  # stream name already in use with a different configuration
                raise
            await self.js.update_stream(config)

    async def wait_stream_leader(self, stream: str, timeout: float = UNAVAILABLE_RETRY) -> None:  # noqa: ASYNC109
        """Until ``stream`` has a leader and every replica is current (after it was scaled, new
        replicas catch up first); BusError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        cluster: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = await self._api(f"$JS.API.STREAM.INFO.{stream}", {}, missing_ok=True)
            cluster = body.get("cluster") or {}
            replicas = cluster.get("replicas") or []
            if not body.get("cluster") or (
                cluster.get("leader") and all(r.get("current") and not r.get("offline") for r in replicas)
            ):
                return
            await asyncio.sleep(0.2)
        raise BusError(f"stream {stream} has no current leader and replicas after {timeout:g}s: {cluster}")

    async def next_stored(self, stream: str, subject: str, from_seq: int) -> StoredMessage | None:
        """The first message on ``subject`` at or after ``from_seq``, with its stored time; None when none."""
        body = await self._api(
            f"$JS.API.STREAM.MSG.GET.{stream}",
            {"seq": max(1, from_seq), "next_by_subj": subject},
            missing_ok=True,
        )
        m = body.get("message")
        if not m:
            return None
        headers: dict[str, str] = {}
        if m.get("hdrs"):
            for line in base64.b64decode(m["hdrs"]).decode(errors="replace").split("\r\n")[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip()] = value.strip()
        return StoredMessage(
            stream,
            int(m["seq"]),
            str(m["subject"]),
            base64.b64decode(m.get("data") or ""),
            headers,
            _parse_time(m["time"]) if m.get("time") else None,
        )

    async def _scan(self, stream: str, subject: str) -> AsyncIterator[tuple[int, bytes]]:
        """Every message of ``stream`` on ``subject`` with its sequence, oldest first (none when the
        stream is missing)."""
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            return
        seq, last = int(info.state.first_seq or 1), int(info.state.last_seq or 0)
        while seq <= last:
            try:
                raw = await self.js.get_msg(stream, seq, subject=subject, next=True)
            except NotFoundError:
                break
            assert raw.seq is not None
            yield raw.seq, raw.data or b""
            seq = raw.seq + 1

    async def stream_messages(self, stream: str) -> int:
        """Messages currently stored in a stream."""
        info = await self.js.stream_info(stream)
        return int(info.state.messages)

    async def get_stream_message(self, stream: str, seq: int) -> StoredMessage | None:
        """A stored message by sequence, or None when it is gone."""
        try:
            raw = await self.js.get_msg(stream, seq)
        except NotFoundError:
            return None
        return StoredMessage(stream, seq, raw.subject or "", raw.data or b"", dict(raw.headers or {}))

    async def delete_stream_message(self, stream: str, seq: int) -> bool:
        """Remove a stored message; False when it was already gone."""
        try:
            return bool(await self.js.delete_msg(stream, seq))
        except NotFoundError:
            return False
        except BadRequestError as exc:
            if exc.err_code == 10057:  # no message found
                return False
            raise
