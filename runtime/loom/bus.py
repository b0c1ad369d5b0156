"""The one module that talks to NATS: streams, durable consumers, publishing and the pull loop.

Tasks and goals live in JetStream work-queue streams with explicit acks, so a
task published while no worker listens, or held by a worker that dies, is not
lost. Results go over core NATS to ``loom.results.<id>``; callers subscribe
before they publish. Dead letters are kept in their own stream for replay.

The pull loop keeps pull requests outstanding for exactly the free slots of a
process (``max_in_flight``), so messages flow as soon as they are stored and a
process never holds more than it can work on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from loom import metrics, tracing
from loom.api.router_policy import StreamLimits
from loom.audit import AuditRecord, AuditWriter, unpack
from loom.dead_letters import decode_original
from loom.messages import DeadLetter, GoalMessage, GoalResult, TaskMessage, TaskResult
from loom.settings import NatsSettings
from loom.subjects import (
    ADVISORY_CONSUMER,
    AUDIT_PREFIX,
    DEAD_LETTER,
    DEFAULT_TENANT,
    INCOMING_SUBJECTS,
    RESULTS_PREFIX,
    ROUTER_CONSUMER,
    STREAM_ADVISORIES,
    STREAM_AUDIT,
    STREAM_DEAD_LETTER,
    STREAM_GOALS,
    STREAM_INCOMING,
    STREAM_TASKS,
    check_publish_subject,
    goal_consumer,
    goal_filters,
    goal_subject,
    incoming_subject,
    result_subject,
    subject_matches,
    task_subject,
    worker_consumer,
)

log = logging.getLogger(__name__)

MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
ADVISED_STREAMS = (STREAM_TASKS, STREAM_INCOMING, STREAM_GOALS)

DUPLICATE_WINDOW = 120.0
DEAD_LETTER_MAX_AGE = 7 * 24 * 3600.0
PUBLISH_TIMEOUT = 10.0
#: One attempt of a publish; a lost acknowledgement is retried (same Nats-Msg-Id) until PUBLISH_TIMEOUT.
_PUBLISH_ATTEMPT = 2.5

#: How long declaring a stream or consumer retries while JetStream answers "unavailable" (a stream
#: electing a leader after a node loss or a replicas change takes a few seconds).
UNAVAILABLE_RETRY = 30.0

_PULL_EXPIRES = 30.0
_PULL_HEARTBEAT = 5.0
_ACK = b"+ACK"
_NAK = b"-NAK"
_TERM = b"+TERM"
_WPI = b"+WPI"


class BusError(Exception):
    """A JetStream operation failed (publish not stored, stream misconfigured, ...)."""


class BusAuthError(BusError):
    """The server refused the connection's credentials (or the server needs some and none were given)."""


class ConnectionState:
    """What the client's callbacks say about the connection; liveness and ``loom_nats_connected`` read it.

    nats-py reconnects by itself after a network loss, but when the server closes the
    connection on a protocol error (``-ERR``, e.g. ``maximum control line exceeded``)
    the client closes for good and never reconnects: ``closed`` then holds why.
    """

    def __init__(self, role: str | None, clock: Callable[[], float] = time.monotonic):
        self.role = role
        self.clock = clock
        self.connected = False
        self.lost_since: float | None = None
        self.closed: str | None = None
        self.last_error = ""

    def up(self) -> None:
        """Connected or reconnected."""
        self.connected = True
        self.lost_since = None
        self._gauge()

    def down(self) -> None:
        """Disconnected; the client tries to reconnect."""
        self.connected = False
        if self.lost_since is None:
            self.lost_since = self.clock()
        self._gauge()

    def closed_for_good(self, why: str) -> None:
        """The client closed without being asked to: it will not reconnect."""
        self.closed = why
        self.down()

    def lost_for(self) -> float:
        """Seconds since the connection was lost (0 while connected)."""
        return 0.0 if self.lost_since is None else self.clock() - self.lost_since

    def _gauge(self) -> None:
        if self.role:
            metrics.NATS_CONNECTED.labels(self.role).set(1 if self.connected else 0)


def nats_liveness(grace: float) -> str | None:
    """Why this process must be restarted, or None: a long-running connection closed for good, or
    lost for more than ``grace`` seconds. Reads every open Bus of the process."""
    for bus in list(Bus.open_buses):
        state = bus.state
        if state.closed is not None:
            return f"NATS connection closed and will not reconnect: {state.closed}"
        if not state.connected and state.lost_for() > grace:
            return f"NATS connection lost {state.lost_for():.0f}s ago (grace {grace:g}s); {state.last_error}"
    return None


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


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter and where it is stored."""

    seq: int
    dead_letter: DeadLetter


class Delivery:
    """One JetStream message handed to a handler. Settle it exactly once: ack, nak or term."""

    __slots__ = ("_meta", "_nc", "_reply", "data", "headers", "settled", "subject")

    def __init__(self, nc: NATS, msg: Msg):
        self._nc = nc
        self._reply = msg.reply
        self.data: bytes = msg.data
        self.subject: str = msg.subject
        self.headers: dict[str, str] | None = msg.headers
        self.settled = False
        self._meta: tuple[int, int] | None = None

    def _parse(self) -> tuple[int, int]:
        if self._meta is None:
            t = self._reply.split(".")
            if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
                self._meta = (int(t[4]), int(t[5]))
            elif len(t) >= 11:  # $JS.ACK.<domain>.<acc>.<stream>.<consumer>.<delivered>.<sseq>...
                self._meta = (int(t[6]), int(t[7]))
            else:
                raise BusError(f"not a JetStream delivery (reply {self._reply!r})")
        return self._meta

    @property
    def num_delivered(self) -> int:
        """How many times this message has been delivered (1 on first delivery)."""
        return self._parse()[0]

    @property
    def stream_seq(self) -> int:
        """Sequence of the message in its stream."""
        return self._parse()[1]

    async def ack(self) -> None:
        """Done: remove from the work queue. Does not wait for the server."""
        if not self.settled:
            self.settled = True
            await self._nc.publish(self._reply, _ACK)

    async def nak(self, delay: float | None = None) -> None:
        """Give it back for redelivery, after ``delay`` seconds if given."""
        if not self.settled:
            self.settled = True
            body = _NAK if not delay else b'-NAK {"delay": %d}' % int(delay * 1e9)
            await self._nc.publish(self._reply, body)

    async def term(self) -> None:
        """Never redeliver (it has been dead-lettered)."""
        if not self.settled:
            self.settled = True
            await self._nc.publish(self._reply, _TERM)

    async def in_progress(self) -> None:
        """Still working on it: reset the ack timer."""
        if not self.settled:
            await self._nc.publish(self._reply, _WPI)


class ResultSubscription:
    """Results arriving on ``loom.results.<key>``; iterate, or ``await get(timeout)``."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._sub: Any = None

    async def _on_msg(self, msg: Msg) -> None:
        self._queue.put_nowait(msg.data)

    async def get(self, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - the documented API
        """The next result body; raises TimeoutError when none arrives in time."""
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    def pending(self) -> int:
        """Results received and not yet taken."""
        return self._queue.qsize()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        return await self._queue.get()

    async def close(self) -> None:
        """Stop receiving."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


def ssl_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """A client TLS context from CA / client certificate files, or None for plain TCP."""
    if not (settings.tls_ca or settings.tls_cert or settings.url.startswith("tls://")):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca)
    if settings.tls_cert:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


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
    file = js_api.StorageType.FILE
    discard = js_api.DiscardPolicy(lim.discard)
    queue: dict[str, Any] = {
        "retention": wq,
        "storage": file,
        "num_replicas": replicas,
        "duplicate_window": DUPLICATE_WINDOW,
        "max_bytes": lim.max_bytes,
        "max_msgs": lim.max_messages,
        "max_age": lim.max_age_seconds,
        "discard": discard,
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
            storage=file,
            num_replicas=replicas,
            max_age=DEAD_LETTER_MAX_AGE,
            max_bytes=lim.dead_letter_max_bytes,
            discard=js_api.DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW,
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
            storage=file,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW,
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


class Bus:
    """A NATS connection with Loom's streams, consumers and message helpers."""

    #: Buses of long-running roles, read by the liveness probe (:func:`nats_liveness`).
    open_buses: set[Bus] = set()

    def __init__(self, nc: NATS, settings: NatsSettings, state: ConnectionState | None = None):
        self.nc = nc
        self.state = state or ConnectionState(None)
        self.js: JetStreamContext = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self.settings = settings
        #: Bumped on every reconnect so pull loops know their pull requests are gone.
        self.epoch = 0
        self.closing = False
        self._audit: AuditWriter | None = None

    # -- connection -------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        settings: NatsSettings,
        *,
        ensure_streams: bool = True,
        connect_timeout: float | None = None,
        role: str | None = None,
    ) -> Bus:
        """Connect (reconnecting forever with backoff) and, by default, declare the streams.

        Long-running roles wait for NATS as long as it takes and pass ``role``: their
        connection state then drives ``loom_nats_connected{role}`` and the liveness probe.
        One-shot commands pass ``connect_timeout`` so a refused certificate or bad
        credentials end them with an error instead of a silent wait.
        """
        holder: list[Bus] = []
        state = ConnectionState(role)
        refused = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            state.last_error = f"last error: {exc}"
            log.warning("nats error: %s", exc)
            if not holder and "authorization violation" in str(exc).lower():
                refused.set()  # retrying the same credentials cannot help a one-shot command

        async def on_disconnect() -> None:
            if holder and not holder[0].closing:
                state.down()
                log.warning("disconnected from NATS; reconnecting")

        async def on_reconnect() -> None:
            if holder:
                holder[0].epoch += 1
            state.up()
            log.warning("reconnected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

        async def on_closed() -> None:
            if holder and not holder[0].closing:
                why = str(nc.last_error or "closed by the server")
                state.closed_for_good(why)
                log.error("NATS connection closed and will not reconnect (%s)", why)

        opts: dict[str, Any] = {
            "servers": [u.strip() for u in settings.url.split(",") if u.strip()],
            "name": settings.name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
            "closed_cb": on_closed,
            "pending_size": 8 * 1024 * 1024,
        }
        if settings.creds_file:
            opts["user_credentials"] = settings.creds_file
        if settings.user:
            opts["user"] = settings.user
            opts["password"] = settings.password or ""
        if settings.token:
            opts["token"] = settings.token
        if settings.inbox_prefix:
            opts["inbox_prefix"] = settings.inbox_prefix
        tls = ssl_context(settings)
        if tls is not None:
            opts["tls"] = tls
        connecting = asyncio.ensure_future(nats.connect(**opts))
        if connect_timeout is None:
            nc = await connecting
        else:
            waiting = asyncio.ensure_future(refused.wait())
            await asyncio.wait(
                {connecting, waiting}, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            waiting.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await connecting
                if refused.is_set():
                    who = (
                        f"user {settings.user!r}"
                        if settings.user
                        else "a credentials file"
                        if settings.creds_file
                        else "a token"
                        if settings.token
                        else "no credentials given"
                    )
                    raise BusAuthError(
                        f"NATS at {settings.url} refused the connection: Authorization Violation ({who})"
                    )
                raise BusError(
                    f"could not connect to NATS at {settings.url} within {connect_timeout:g}s "
                    "(the logged NATS errors say why)"
                )
            nc = connecting.result()
        bus = cls(nc, settings, state)
        holder.append(bus)
        state.up()
        if role:
            cls.open_buses.add(bus)
        if ensure_streams:
            await bus.ensure_streams()
        return bus

    @property
    def is_connected(self) -> bool:
        """True while the connection is up."""
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close."""
        Bus.open_buses.discard(self)
        if self._audit is not None and not self.nc.is_closed:
            await self._audit.close()
        self.closing = True
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception as exc:  # a drain that cannot finish still has to close the socket
            log.warning("drain failed (%s); closing", exc)
            await self.nc.close()

    # -- streams and consumers -----------------------------------------------------------------------

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
                try:
                    await self.js.add_stream(config)
                except BadRequestError as exc:
                    if exc.err_code != 10058:  # stream name already in use with a different configuration
                        raise
                    await self.js.update_stream(config)
            except APIError as exc:
                if replicas > 1:
                    raise _replicas_error(f"stream {config.name}", replicas, exc) from exc
                raise
            if existing and int(existing.get("num_replicas") or 1) != replicas:
                await self.wait_stream_leader(config.name or "")

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
        return await self._ensure_consumer(
            STREAM_TASKS,
            js_api.ConsumerConfig(
                name=name,
                durable_name=name,
                filter_subject=task_subject(worker_type, tier),
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                max_ack_pending=max_ack_pending,
                deliver_policy=js_api.DeliverPolicy.ALL,
            ),
        )

    async def ensure_goal_consumer(
        self, pipeline: str | None, *, ack_wait: float, max_deliver: int, max_ack_pending: int
    ) -> str:
        """The durable pull consumer of one pipeline (``loom.goals.<name>``) or the orchestrator."""
        name = goal_consumer(pipeline)
        return await self._ensure_consumer(
            STREAM_GOALS,
            js_api.ConsumerConfig(
                name=name,
                durable_name=name,
                filter_subjects=goal_filters(pipeline),
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                max_ack_pending=max_ack_pending,
                deliver_policy=js_api.DeliverPolicy.ALL,
            ),
        )

    async def ensure_router_consumer(self, *, ack_wait: float, max_deliver: int, max_ack_pending: int) -> str:
        """The routers' one shared durable on all router input (every tenant's): each task is routed once."""
        return await self._ensure_consumer(
            STREAM_INCOMING,
            js_api.ConsumerConfig(
                name=ROUTER_CONSUMER,
                durable_name=ROUTER_CONSUMER,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                max_ack_pending=max_ack_pending,
                deliver_policy=js_api.DeliverPolicy.ALL,
            ),
        )

    async def ensure_advisory_consumer(self) -> str:
        """The routers' shared durable on the captured MAX_DELIVERIES advisories."""
        return await self._ensure_consumer(
            STREAM_ADVISORIES,
            js_api.ConsumerConfig(
                name=ADVISORY_CONSUMER,
                durable_name=ADVISORY_CONSUMER,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_deliver=-1,
                max_ack_pending=64,
                deliver_policy=js_api.DeliverPolicy.ALL,
            ),
        )

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
        return {name: (subs[0] if subs else "") for name, subs in (await self._all_filters(stream)).items()}

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
        filters = [f for subs in (await self._all_filters(stream)).values() for f in (subs or [">"])]
        return {
            subj: int(n)
            for subj, n in stored.items()
            if n and not any(subject_matches(f, subj) for f in filters)
        }

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

    async def _api(self, subject: str, req: dict[str, Any], *, missing_ok: bool = False) -> dict[str, Any]:
        """One JetStream API request; BusError on an error reply (``{}`` for a 404 when ``missing_ok``)."""
        try:
            resp = await self.nc.request(subject, json.dumps(req).encode(), timeout=PUBLISH_TIMEOUT)
        except nats.errors.TimeoutError:
            raise BusError(
                f"{subject}: no answer within {PUBLISH_TIMEOUT:g}s (this identity may not use it?) "
                f"{self.state.last_error}".rstrip()
            ) from None
        body: dict[str, Any] = json.loads(resp.data)
        err = body.get("error")
        if err:
            if missing_ok and err.get("code") == 404:
                return {}
            raise BusError(f"{subject}: {err.get('description', err)}")
        return body

    async def stream_messages(self, stream: str) -> int:
        """Messages currently stored in a stream."""
        info = await self.js.stream_info(stream)
        return int(info.state.messages)

    # -- publishing -----------------------------------------------------------------------------------

    async def js_publish(
        self, subject: str, data: bytes, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Publish into a stream and wait until it is stored; returns the stream sequence."""
        if msg_id:
            headers = {**(headers or {}), "Nats-Msg-Id": msg_id}
        return int((await self._store(subject, data, headers))["seq"])

    async def js_publish_once(self, subject: str, data: bytes, *, msg_id: str) -> bool:
        """Publish under ``Nats-Msg-Id``; False when the server dropped it as a duplicate (of another
        publisher's message, or of this one's first attempt when its acknowledgement was lost and it
        was re-sent: either way the message is stored once)."""
        body = await self._store(subject, data, {"Nats-Msg-Id": msg_id})
        return not body.get("duplicate", False)

    async def _store(self, subject: str, data: bytes, headers: dict[str, str] | None) -> dict[str, Any]:
        """Publish and wait for the stream's acknowledgement (raises BusError when not stored).

        Every publish carries a ``Nats-Msg-Id`` (a random one unless given), so an attempt that was
        stored but whose acknowledgement was lost can be sent again without a duplicate: while a
        stream elects a new leader (a JetStream server lost) or the connection moves to another
        server, attempts are repeated for up to :data:`PUBLISH_TIMEOUT` seconds.
        """
        check_publish_subject(subject)
        headers = tracing.inject(headers)
        if not headers or "Nats-Msg-Id" not in headers:
            headers = {**(headers or {}), "Nats-Msg-Id": uuid.uuid4().hex}
        deadline = time.monotonic() + PUBLISH_TIMEOUT
        pause = 0.1
        while True:
            attempt = min(_PUBLISH_ATTEMPT, max(0.1, deadline - time.monotonic()))
            try:
                resp = await self.nc.request(subject, data, timeout=attempt, headers=headers)
            except nats.errors.NoRespondersError:
                why = "no stream stores it (streams not declared, or electing a leader?)"
            except nats.errors.TimeoutError:
                why = "not acknowledged (this identity may not publish there?)"
            else:
                body: dict[str, Any] = json.loads(resp.data)
                err = body.get("error")
                if not err:
                    return body
                if err.get("code") != 503:  # not "JetStream unavailable": retrying cannot help
                    raise BusError(f"publish to {subject!r} failed: {err.get('description', err)}")
                why = f"JetStream unavailable: {err.get('description', err)}"
            if time.monotonic() + pause >= deadline:
                raise BusError(
                    f"publish to {subject!r} not stored within {PUBLISH_TIMEOUT:g}s: {why} "
                    f"{self.state.last_error}".rstrip()
                )
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)

    async def publish_task(
        self, task: TaskMessage, *, subject: str | None = None, msg_id: str | None = None
    ) -> None:
        """Submit a task (to the router, on its tenant's subject, by default), stored before this returns."""
        await self.js_publish(subject or incoming_subject(task.tenant), task.to_bytes(), msg_id=msg_id)

    async def publish_goal(self, goal: GoalMessage, *, msg_id: str | None = None) -> None:
        """Submit a goal to its pipeline or the orchestrator, on its tenant's subject."""
        await self.js_publish(goal_subject(goal.pipeline, goal.tenant), goal.to_bytes(), msg_id=msg_id)

    async def publish_result(self, result: TaskResult | GoalResult) -> None:
        """Send a result to its tenant's result subject (core NATS: callers subscribe before publishing)."""
        key = result.result_key if isinstance(result, TaskResult) else result.goal_id
        if result.trace_id is None and (trace_id := tracing.current_trace_id()):
            result = result.model_copy(update={"trace_id": trace_id})
        subject = check_publish_subject(result_subject(key, result.tenant))
        # The body names the trace; the headers carry its context only where spans are exported
        # (nothing reads it otherwise, and headers cost every reader of loom.results.> a parse).
        headers = tracing.inject(None) if tracing.enabled() else None
        await self.nc.publish(subject, result.to_bytes(), headers=headers)

    async def publish_raw(self, subject: str, data: bytes) -> None:
        """Core NATS publish (no storage); InvalidSubject, before sending, for a subject NATS would refuse."""
        await self.nc.publish(check_publish_subject(subject), data)

    async def publish_dead_letter(self, dl: DeadLetter) -> None:
        """Store a dead letter; its id is the Nats-Msg-Id, so the same failure is stored once."""
        if dl.trace_id is None and (trace_id := tracing.current_trace_id()):
            dl = dl.model_copy(update={"trace_id": trace_id})
        await self.js_publish(
            DEAD_LETTER,
            dl.to_bytes(),
            msg_id=dl.dead_letter_id,
            headers={"Loom-Reason": dl.reason.value, "Loom-Dead-Letter-Id": dl.dead_letter_id},
        )

    async def subscribe_results(self, key: str, tenant: str = DEFAULT_TENANT) -> ResultSubscription:
        """Subscribe to the results of ``key`` for ``tenant`` (do this BEFORE publishing the task or goal)."""
        rs = ResultSubscription()
        rs._sub = await self.nc.subscribe(
            result_subject(key, tenant), cb=rs._on_msg, pending_msgs_limit=1_000_000
        )
        await self.nc.flush()
        return rs

    async def subscribe_all_results(self, cb: Callable[[bytes], None]) -> Any:
        """Call ``cb(body)`` for every result on ``loom.results.>`` (the router's release signal)."""

        async def on_msg(msg: Msg) -> None:
            cb(msg.data)

        sub = await self.nc.subscribe(f"{RESULTS_PREFIX}.>", cb=on_msg, pending_msgs_limit=1_000_000)
        await self.nc.flush()
        return sub

    # -- stored messages and dead letters ---------------------------------------------------------------

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

    async def dead_letters(self) -> list[StoredDeadLetter]:
        """Every stored dead letter, oldest first."""
        out: list[StoredDeadLetter] = []
        try:
            info = await self.js.stream_info(STREAM_DEAD_LETTER)
        except NotFoundError:
            return out
        seq = int(info.state.first_seq or 1)
        last = int(info.state.last_seq or 0)
        while seq <= last:
            try:
                raw = await self.js.get_msg(STREAM_DEAD_LETTER, seq, subject=DEAD_LETTER, next=True)
            except NotFoundError:
                break
            assert raw.seq is not None
            try:
                out.append(StoredDeadLetter(raw.seq, DeadLetter.from_bytes(raw.data or b"")))
            except ValueError as exc:
                log.warning("dead letter #%d is unreadable: %s", raw.seq, exc)
            seq = raw.seq + 1
        return out

    async def find_dead_letter(self, dead_letter_id: str) -> StoredDeadLetter | None:
        """A dead letter by id (a unique prefix is enough)."""
        matches = [
            d for d in await self.dead_letters() if d.dead_letter.dead_letter_id.startswith(dead_letter_id)
        ]
        if len(matches) > 1 and not any(d.dead_letter.dead_letter_id == dead_letter_id for d in matches):
            raise BusError(f"dead letter id prefix {dead_letter_id!r} is ambiguous ({len(matches)} match)")
        exact = [d for d in matches if d.dead_letter.dead_letter_id == dead_letter_id]
        return exact[0] if exact else (matches[0] if matches else None)

    async def replay_dead_letter(
        self, stored: StoredDeadLetter, *, keep: bool = False, body: bytes | None = None
    ) -> None:
        """Publish the original message (or ``body``, its corrected version) again to its original
        subject, then drop the dead letter."""
        dl = stored.dead_letter
        if body is None and not dl.replayable:
            raise BusError(
                f"dead letter {dl.dead_letter_id} cannot be replayed: "
                f"{dl.reason.value}, its body was not kept"
            )
        await self.js_publish(dl.subject, decode_original(dl.original) if body is None else body)
        if not keep:
            await self.delete_stream_message(STREAM_DEAD_LETTER, stored.seq)

    # -- audit trail ----------------------------------------------------------------------------------

    @property
    def audit(self) -> AuditWriter:
        """This connection's audit writer (records go out in the background, see :mod:`loom.audit`)."""
        if self._audit is None:
            self._audit = AuditWriter(self)
        return self._audit

    async def ensure_audit_stream(self, max_age: float, set_age: bool) -> None:
        """Declare the audit stream (limits retention, file storage) if missing; with ``set_age`` an
        existing one gets ``max_age`` as its retention too."""
        body = await self._api(f"$JS.API.STREAM.INFO.{STREAM_AUDIT}", {}, missing_ok=True)
        existing = body.get("config")
        if existing and not set_age:
            return
        config = js_api.StreamConfig(
            name=STREAM_AUDIT,
            subjects=[f"{AUDIT_PREFIX}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            num_replicas=replicas_for(self.settings.replicas, existing),
            max_age=max_age,
            discard=js_api.DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW,
            description="Audit trail: one record per task and goal outcome.",
        )
        if existing and stream_config_matches(existing, config.as_dict()):
            return
        try:
            await self.js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != 10058:
                raise
            await self.js.update_stream(config)

    async def audit_records(self, tenant: str | None = None) -> list[AuditRecord]:
        """Every stored audit record (of one tenant when given), oldest first."""
        out: list[AuditRecord] = []
        subject = f"{AUDIT_PREFIX}.{tenant}" if tenant else f"{AUDIT_PREFIX}.>"
        try:
            info = await self.js.stream_info(STREAM_AUDIT)
        except NotFoundError:
            return out
        seq, last = int(info.state.first_seq or 1), int(info.state.last_seq or 0)
        while seq <= last:
            try:
                raw = await self.js.get_msg(STREAM_AUDIT, seq, subject=subject, next=True)
            except NotFoundError:
                break
            assert raw.seq is not None
            try:
                out.extend(unpack(raw.data or b""))
            except ValueError as exc:
                log.warning("audit message #%d is unreadable: %s", raw.seq, exc)
            seq = raw.seq + 1
        return out

    # -- key-value ------------------------------------------------------------------------------------

    async def key_value(self, bucket: str, *, ttl: float | None = None) -> KeyValue:
        """A JetStream Key-Value bucket, created (file storage, the setting's replicas) if missing; the
        first creator's ttl wins. An existing bucket with other replicas than the setting is scaled."""
        try:
            kv = await self.js.key_value(bucket)
        except BucketNotFoundError:
            pass
        else:
            await self._scale_bucket(bucket)
            return kv
        replicas = replicas_for(self.settings.replicas, None)
        try:
            return await self.js.create_key_value(
                js_api.KeyValueConfig(
                    bucket=bucket, ttl=ttl, storage=js_api.StorageType.FILE, replicas=replicas
                )
            )
        except APIError as exc:
            if exc.err_code != 10058:  # another process created it meanwhile, with its own settings
                if replicas > 1:
                    raise _replicas_error(f"Key-Value bucket {bucket}", replicas, exc) from exc
                raise
            return await self.js.key_value(bucket)

    async def existing_key_value(self, bucket: str) -> KeyValue | None:
        """A Key-Value bucket if it exists, None otherwise (readers never create one)."""
        try:
            return await self.js.key_value(bucket)
        except BucketNotFoundError:
            return None

    async def _scale_bucket(self, bucket: str) -> None:
        """Give a bucket's stream the replicas of the setting (nothing when unset or already so)."""
        if self.settings.replicas is None:
            return
        stream = f"KV_{bucket}"
        info = await self.js.stream_info(stream)
        if int(info.config.num_replicas or 1) == self.settings.replicas:
            return
        try:
            await self.js.update_stream(dataclasses.replace(info.config, num_replicas=self.settings.replicas))
        except APIError as exc:
            raise _replicas_error(f"Key-Value bucket {bucket}", self.settings.replicas, exc) from exc
        await self.wait_stream_leader(stream)

    # -- consuming ------------------------------------------------------------------------------------

    async def consume(
        self,
        stream: str,
        durable: str,
        handler: Callable[[Delivery], Awaitable[None]],
        *,
        max_in_flight: int,
        batch: int,
        stop: asyncio.Event,
        drain_grace: float = 30.0,
        on_bound: Callable[[], None] | None = None,
    ) -> None:
        """Pull from a durable consumer; run ``handler`` on each message, at most ``max_in_flight`` at once.

        Returns after ``stop`` is set: no more pulls; messages still arriving are
        nak'ed; running handlers get ``drain_grace`` seconds, then are cancelled and
        their messages nak'ed (redelivered at once to another replica).
        """
        loop = _PullLoop(self, stream, durable, handler, max_in_flight, batch)
        await loop.run(stop, drain_grace, on_bound)


class _PullLoop:
    """Keeps pull requests outstanding for the free slots; accounting by the server's status replies."""

    def __init__(
        self,
        bus: Bus,
        stream: str,
        durable: str,
        handler: Callable[[Delivery], Awaitable[None]],
        max_in_flight: int,
        batch: int,
    ):
        if max_in_flight < 1 or batch < 1:
            raise ValueError("max_in_flight and batch must be >= 1")
        self.bus = bus
        self.nc = bus.nc
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.batch = batch
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.where = f"{stream}/{durable}"
        self.requested = 0
        self.in_flight = 0
        self.stopping = False
        self.tasks: dict[asyncio.Task[None], Delivery] = {}
        self.wake = asyncio.Event()
        self.last_activity = time.monotonic()
        self.pause_until = 0.0
        self.epoch = bus.epoch
        self.threshold = max(1, min(batch, max_in_flight) // 2)

    async def run(self, stop: asyncio.Event, drain_grace: float, on_bound: Callable[[], None] | None) -> None:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=self._on_msg, pending_msgs_limit=1_000_000)
        self.inbox = inbox
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            await self._pull()
            if on_bound:
                on_bound()
            while not stop.is_set():
                wake_wait = asyncio.ensure_future(self.wake.wait())
                await asyncio.wait(
                    {wake_wait, stop_wait}, timeout=_PULL_HEARTBEAT, return_when="FIRST_COMPLETED"
                )
                wake_wait.cancel()
                self.wake.clear()
                if stop.is_set():
                    break
                self._check_liveness()
                await self._pull()
        finally:
            stop_wait.cancel()
            self.stopping = True
            with contextlib.suppress(Exception):
                await sub.drain()  # late arrivals still reach _on_msg, which naks them
            await self._drain(drain_grace)

    def _check_liveness(self) -> None:
        now = time.monotonic()
        if self.bus.epoch != self.epoch:
            self.epoch = self.bus.epoch
            self.requested = 0  # pull requests do not survive a reconnect
        elif self.requested and now - self.last_activity > 3 * _PULL_HEARTBEAT:
            log.warning("%s: no heartbeat from the server; re-issuing pull requests", self.where)
            self.requested = 0
            self.last_activity = now

    async def _pull(self) -> None:
        if not self.nc.is_connected or time.monotonic() < self.pause_until:
            return
        free = self.max_in_flight - self.in_flight - self.requested
        if free <= 0 or (self.requested and free < self.threshold):
            return
        n = min(free, self.batch)
        if not self.requested:
            self.last_activity = time.monotonic()
        self.requested += n
        body = b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}' % (
            n,
            int(_PULL_EXPIRES * 1e9),
            int(_PULL_HEARTBEAT * 1e9),
        )
        try:
            await self.nc.publish(self.api, body, reply=self.inbox)
        except Exception as exc:
            self.requested -= n
            log.warning("%s: pull request failed: %s", self.where, exc)

    async def _on_msg(self, msg: Msg) -> None:
        self.last_activity = time.monotonic()
        hdrs = msg.headers
        if hdrs and not msg.data and "Status" in hdrs:
            self._on_status(hdrs)
            return
        if self.requested > 0:
            self.requested -= 1
        d = Delivery(self.nc, msg)
        if self.stopping:
            await d.nak()
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(d))
        self.tasks[task] = d

    def _on_status(self, hdrs: dict[str, str]) -> None:
        status = hdrs.get("Status", "")
        if status == "100":
            return
        pending = hdrs.get("Nats-Pending-Messages")
        if pending is not None:
            self.requested = max(0, self.requested - int(pending))
        elif status in ("404", "408", "409"):
            self.requested = 0
        if status == "409":
            desc = hdrs.get("Description", "")
            if "Consumer Deleted" in desc or "push based" in desc:
                log.error("%s: %s; pausing pulls", self.where, desc)
                self.pause_until = time.monotonic() + 2.0
            elif "Exceeded" in desc:
                log.warning("%s: %s", self.where, desc)
        self.wake.set()

    async def _run(self, d: Delivery) -> None:
        try:
            await self.handler(d)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await d.nak()
            raise
        except Exception:
            log.exception("%s: handler failed; message will be redelivered", self.where)
            with contextlib.suppress(Exception):
                await d.nak(delay=1.0)
        finally:
            self.in_flight -= 1
            self.tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if not self.stopping:
                self.wake.set()

    async def _drain(self, grace: float) -> None:
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("%s: %d tasks released unfinished after %.0fs", self.where, len(pending), grace)
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=5)


# -- key-value helpers (pipeline state, checkpoints, schedules) -------------------------------------


_T = TypeVar("_T")
#: What a JetStream request answers while the stream it needs elects a leader (a server was lost).
_UNAVAILABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
)


async def while_unavailable(op: Callable[[], Awaitable[_T]], what: str) -> _T:
    """``op()``, repeated while JetStream is unavailable, up to :data:`PUBLISH_TIMEOUT` seconds; for
    operations that may safely run twice (a read, a put of the same value, a purge)."""
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    pause = 0.1
    while True:
        try:
            return await op()
        except _UNAVAILABLE as exc:
            if time.monotonic() + pause >= deadline:
                raise BusError(f"{what}: JetStream unavailable for {PUBLISH_TIMEOUT:g}s ({exc!r})") from exc
        await asyncio.sleep(pause)
        pause = min(1.0, pause * 2)


async def kv_get(kv: KeyValue, key: str) -> bytes | None:
    """The value under ``key``, or None when it is absent or deleted."""
    from nats.js.errors import KeyDeletedError, KeyNotFoundError

    try:
        entry = await while_unavailable(lambda: kv.get(key), f"reading {key!r}")
    except (KeyNotFoundError, KeyDeletedError):
        return None
    return entry.value


async def kv_put(kv: KeyValue, key: str, value: bytes) -> None:
    """Store ``value`` under ``key``, again while the bucket elects a leader (the same value twice is
    one more revision, nothing else)."""
    await while_unavailable(lambda: kv.put(key, value), f"writing {key!r}")


async def kv_delete(kv: KeyValue, key: str) -> None:
    """Remove ``key`` with its history (no error when absent)."""
    await while_unavailable(lambda: kv.purge(key), f"removing {key!r}")


async def kv_read(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """The value under ``key`` and its revision; (None, 0) when absent, (None, revision) when deleted.

    The revision is what :func:`kv_swap` compares against."""
    from nats.js.errors import KeyDeletedError, KeyNotFoundError

    try:
        entry = await kv.get(key)
    except KeyDeletedError as exc:
        return None, int(exc.entry.revision) if exc.entry is not None and exc.entry.revision else 0
    except KeyNotFoundError:
        return None, 0
    return entry.value, int(entry.revision or 0)


async def kv_swap(kv: KeyValue, key: str, value: bytes, revision: int) -> bool:
    """Write ``value`` only if ``key`` is still at ``revision`` (0: still absent); False when another
    writer came first (compare-and-set on the bucket's per-key sequence)."""
    from nats.js.errors import KeyWrongLastSequenceError

    try:
        await kv.update(key, value, last=revision)
    except KeyWrongLastSequenceError:
        return False
    return True
