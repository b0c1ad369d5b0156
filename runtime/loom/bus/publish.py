"""Publishing: into streams (stored before the call returns), results over core NATS, dead letters,
and subscribing to results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
from nats.aio.msg import Msg

from loom import tracing
from loom.bus.connection import BusBase, BusError
from loom.messages import DeadLetter, GoalMessage, GoalResult, TaskMessage, TaskResult
from loom.subjects import (
    DEAD_LETTER,
    DEFAULT_TENANT,
    RESULTS_PREFIX,
    check_publish_subject,
    goal_subject,
    incoming_subject,
    result_subject,
)

#: One attempt of a publish; a lost acknowledgement is retried (same Nats-Msg-Id) until the Bus's timeout.
_PUBLISH_ATTEMPT = 2.5

#: JetStream's "stream store failed" (with status 503): the stream refused the message, e.g. over
#: its message, byte or per-subject limit.
_STORE_REFUSED = 10077


def publish_error_is_transient(error: dict[str, Any]) -> bool:
    """Whether the same publish may succeed later: JetStream unavailable (503, e.g. while a stream
    elects a leader), but not a stream refusing the message over a limit (also 503, err_code 10077),
    which would only delay the refusal by the whole publish timeout."""
    return error.get("code") == 503 and error.get("err_code") != _STORE_REFUSED


class ResultSubscription:
    """Results arriving on ``loom.results.<key>``; iterate, or ``await get(timeout)``."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._sub: Any = None

    async def _on_msg(self, msg: Msg) -> None:
        self.deliver(msg.data)

    def deliver(self, data: bytes) -> None:
        """A result arrived."""
        self._queue.put_nowait(data)

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


class Sender(ABC):
    """What Loom sends, built on two primitives a backend provides: a stored publish into a stream
    and a core (fire-and-forget) publish. Subjects and tenants come from :mod:`loom.subjects`."""

    @abstractmethod
    async def js_publish(
        self, subject: str, data: bytes, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Publish into a stream and wait until it is stored; returns the stream sequence."""

    @abstractmethod
    async def _core_publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        """Send to the current subscribers of ``subject`` (nothing is stored)."""

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
        await self._core_publish(subject, result.to_bytes(), headers)

    async def publish_raw(self, subject: str, data: bytes) -> None:
        """Core NATS publish (no storage); InvalidSubject, before sending, for a subject NATS would refuse."""
        await self._core_publish(check_publish_subject(subject), data, None)

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


class PublishMixin(Sender, BusBase):
    """Publishing tasks, goals, results and dead letters; subscribing to results."""

    async def js_publish(
        self, subject: str, data: bytes, *, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Publish into a stream and wait until it is stored; returns the stream sequence."""
        if msg_id:
            headers = {**(headers or {}), "Nats-Msg-Id": msg_id}
        return int((await self._store(subject, data, headers))["seq"])

    async def _core_publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        await self.nc.publish(subject, data, headers=headers)

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
        server, attempts are repeated for up to the Bus's ``timeout`` (NatsSettings.publish_timeout).
        """
        check_publish_subject(subject)
        headers = tracing.inject(headers)
        if not headers or "Nats-Msg-Id" not in headers:
            headers = {**(headers or {}), "Nats-Msg-Id": uuid.uuid4().hex}
        deadline = time.monotonic() + self.timeout
        pause = 0.1
        while True:
            attempt = min(_PUBLISH_ATTEMPT, max(0.1, deadline - time.monotonic()))
            try:
                resp = await self._request(subject, data, attempt, headers)
            except nats.errors.NoRespondersError:
                why = "no stream stores it (streams not declared, or electing a leader?)"
            except TimeoutError:
                why = "not acknowledged"
            else:
                body: dict[str, Any] = json.loads(resp.data)
                err = body.get("error")
                if not err:
                    return body
                if not publish_error_is_transient(err):  # retrying cannot help
                    raise BusError(f"publish to {subject!r} failed: {err.get('description', err)}")
                why = f"JetStream unavailable: {err.get('description', err)}"
            if time.monotonic() + pause >= deadline:
                raise BusError(
                    f"publish to {subject!r} not stored within {self.timeout:g}s: {why} "
                    f"{self.state.last_error}".rstrip()
                )
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)

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
