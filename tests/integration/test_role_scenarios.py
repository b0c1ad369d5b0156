"""Role scenarios, one test body on two backends: the in-memory bus and a real nats-server.

The roles (router, worker, pipeline, orchestrator checkpoints) run in-process on whatever bus the
backend connects; the memory backend needs no server (only the ``nats`` parameters are
``integration``), so these scenarios also run in milliseconds where no nats-server exists.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.support.processes import consumer_empty, poll
from tests.support.role_backends import Backend, ScenarioBus, backend

from loom.api.pipeline import PipelineSpec
from loom.api.router_policy import RouterConfig, RouterPolicySpec, TierDefinition, WorkerRoute
from loom.api.worker import WorkerSpec
from loom.backends import BackendError, ProcessingBackend
from loom.bus import Delivery, kv_delete, kv_read, kv_swap
from loom.checkpoint import Checkpoint, KVCheckpointStore
from loom.contrib.noop import EchoBackend
from loom.messages import DeadLetterReason, GoalMessage, GoalResult, TaskMessage, TaskResult, TaskStatus
from loom.metrics import REGISTRY
from loom.pipeline.service import PipelineService
from loom.router.service import RouterOptions, RouterService
from loom.subjects import STREAM_INCOMING, STREAM_TASKS, incoming_subject, task_subject, worker_consumer
from loom.worker.processor import ProcessorEngine
from loom.worker.runtime import WorkerOptions, WorkerRuntime

__all__ = ["backend"]


def echo_spec(**extra: Any) -> WorkerSpec:
    return WorkerSpec.model_validate(
        {
            "name": "echo",
            "worker_kind": "processor",
            "processing_backend": "loom.contrib.noop.EchoBackend",
            "default_model_tier": "local",
            "max_in_flight": 8,
            "max_deliver": 3,
            "retry_backoff_seconds": [0.05],
            **extra,
        }
    )


class Counting(ProcessingBackend):
    """EchoBackend that counts its calls; with ``fail_first`` the first call per task fails (retryable)."""

    def __init__(self, fail_first: bool = False):
        self.fail_first = fail_first
        self.calls: list[dict[str, Any]] = []
        self.echo = EchoBackend()

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(payload)
        if self.fail_first and sum(1 for c in self.calls if c == payload) == 1:
            raise BackendError("the backend is briefly unavailable", retryable=True)
        return await self.echo.process(payload, config)


async def start_worker(backend: Backend, engine_backend: ProcessingBackend, **extra: Any) -> None:
    spec = echo_spec(**extra)
    runtime = WorkerRuntime(
        await backend.bus(),
        spec,
        TierDefinition(name="local"),
        ProcessorEngine(spec, engine_backend),
        WorkerOptions(drain_grace=1.0, lag_interval=60),
    )
    await backend.start(runtime.run, lambda: runtime.ready)


async def start_router(
    backend: Backend,
    policy: dict[str, Any] | None = None,
    options: RouterOptions | None = None,
    **workers: WorkerRoute,
) -> None:
    """The real router on its own connection (``workers``: its catalog; none: any worker type)."""
    config = RouterConfig(policy=RouterPolicySpec.model_validate(policy or {}), workers=workers or None)
    options = options or RouterOptions(drain_grace=1.0, lag_interval=60)
    router = RouterService(await backend.bus(), config, options)
    await backend.start(router.run, lambda: router.ready)


async def task_result(bus: ScenarioBus, key: str, payload: dict[str, Any]) -> TaskResult:
    sub = await bus.subscribe_results(key)
    try:
        task = TaskMessage(parent_task_id=key, worker_type="echo", payload=payload)
        await bus.publish_task(task, subject=task_subject("echo", "local"))
        return TaskResult.from_bytes(await sub.get(timeout=15))
    finally:
        await sub.close()


async def goal_result(bus: ScenarioBus, goal: GoalMessage) -> GoalResult:
    """The GoalResult of ``goal`` (stage results share its subject and are skipped)."""
    sub = await bus.subscribe_results(goal.goal_id)
    try:
        await bus.publish_goal(goal)
        async with asyncio.timeout(20):
            while True:
                data = await sub.get()
                with contextlib.suppress(ValueError):
                    return GoalResult.from_bytes(data)
    finally:
        await sub.close()


async def test_a_worker_completes_a_task_and_the_result_reaches_the_subscriber(backend: Backend) -> None:
    await start_worker(backend, EchoBackend())
    client = await backend.bus()
    result = await task_result(client, "sc-1", {"doc": "d1"})
    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.output is not None and result.output["echo"] == {"doc": "d1"}
    assert result.attempt == 1 and result.model_tier == "local"

    async def audited() -> bool:
        records = await client.audit_records()
        return any(r.task_id == result.task_id and r.outcome == "completed" for r in records)

    await poll(audited)

    async def acknowledged() -> bool:  # gone from the work queue (the ack follows the result)
        return await client.stream_messages(STREAM_TASKS) == 0

    await poll(acknowledged)


async def test_a_malformed_task_is_dead_lettered_once_with_its_reason(backend: Backend) -> None:
    await start_worker(backend, EchoBackend())
    client = await backend.bus()
    await client.js_publish(task_subject("echo", "local"), b'{"worker_type": 7}')

    async def stored() -> bool:
        return len(await client.dead_letters()) > 0

    await poll(stored)
    await asyncio.sleep(0.3)  # a redelivery, were there one, would add a second dead letter
    (dl,) = await client.dead_letters()
    assert dl.dead_letter.reason == DeadLetterReason.MALFORMED
    assert dl.dead_letter.detail.startswith("not a TaskMessage: ")
    assert dl.dead_letter.deliveries == 1 and dl.dead_letter.subject == task_subject("echo", "local")
    assert await client.stream_messages(STREAM_TASKS) == 0  # terminated: never redelivered


async def test_a_transient_failure_is_redelivered_then_succeeds(backend: Backend) -> None:
    flaky = Counting(fail_first=True)
    await start_worker(backend, flaky)
    client = await backend.bus()
    result = await task_result(client, "sc-3", {"n": 1})
    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.attempt == 2  # the nak'ed first delivery came back as num_delivered 2
    assert flaky.calls == [{"n": 1}, {"n": 1}]
    assert await client.dead_letters() == []


def metric(name: str, **labels: str) -> float:
    """Sum of the in-process samples of ``name`` whose labels include ``labels`` (0 when absent);
    the registry is the process's, so a test compares before and after."""
    return sum(
        s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def dead_letter_count(bus: ScenarioBus, n: int) -> bool:
    return len(await bus.dead_letters()) >= n


async def test_invalid_output_is_a_failed_result_with_the_errors(backend: Backend) -> None:
    schema = {
        "type": "object",
        "required": ["summary"],
        "properties": {"summary": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
    }
    retried, failed = (metric("loom_tasks_failed_total", outcome=o) for o in ("retried", "failed"))
    await start_worker(backend, EchoBackend(), output_schema=schema, max_deliver=2)
    client = await backend.bus()
    result = await task_result(client, "sc-out", {"output": {"count": -1}})
    assert result.status == TaskStatus.FAILED and result.error_code == "invalid_output"
    assert result.attempt == 1  # final at once: a redelivery would repeat the same output
    errors = result.metadata["validation_errors"]
    assert "(root): 'summary' is a required property" in errors
    assert "count: -1 is less than the minimum of 0" in errors
    await poll(lambda: dead_letter_count(client, 1))
    (dl,) = await client.dead_letters()
    assert dl.dead_letter.reason == DeadLetterReason.INVALID_OUTPUT
    assert dl.dead_letter.task_id == result.task_id
    assert metric("loom_tasks_failed_total", outcome="retried") == retried
    assert metric("loom_tasks_failed_total", outcome="failed") == failed + 1


async def test_invalid_input_fails_at_once_without_retry(backend: Backend) -> None:
    schema = {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1}},
    }
    await start_worker(backend, EchoBackend(), input_schema=schema, max_deliver=3)
    client = await backend.bus()
    result = await task_result(client, "sc-in", {"text": ""})
    assert result.error_code == "invalid_input" and result.attempt == 1
    assert result.error is not None and "text: '' should be non-empty" in result.error
    await poll(lambda: dead_letter_count(client, 1))
    assert (await client.dead_letters())[0].dead_letter.reason == DeadLetterReason.INVALID_INPUT

    # the term follows the dead letter
    await poll(lambda: consumer_empty(client, STREAM_TASKS, worker_consumer("echo", "local")), timeout=5)


async def test_timeout_and_backend_errors(backend: Backend) -> None:
    await start_worker(backend, EchoBackend(), timeout_seconds=0.3, max_deliver=2)
    client = await backend.bus()
    sub = await client.subscribe_results("sc-err")
    slow = TaskMessage(parent_task_id="sc-err", worker_type="echo", payload={"sleep": 5})
    broken = TaskMessage(parent_task_id="sc-err", worker_type="echo", payload={"fail": "cannot convert"})
    for task in (slow, broken):
        await client.publish_task(task, subject=task_subject("echo", "local"))
    by_id = {r.task_id: r for r in [TaskResult.from_bytes(await sub.get(timeout=15)) for _ in range(2)]}
    await sub.close()
    assert by_id[slow.task_id].error_code == "timeout" and by_id[slow.task_id].attempt == 2
    assert by_id[broken.task_id].error_code == "backend_error" and by_id[broken.task_id].attempt == 1
    assert by_id[broken.task_id].error == "cannot convert"
    await poll(lambda: dead_letter_count(client, 2))
    reasons = sorted(d.dead_letter.reason.value for d in await client.dead_letters())
    assert reasons == ["task_failed", "timeout"]


PIPELINE = {
    "name": "scene",
    "max_concurrent_goals": 4,
    "pipeline_stages": [
        {"name": "first", "worker_type": "echo", "input_mapping": {"doc": "goal.context.doc"}},
        *[
            {
                "name": n,
                "worker_type": "echo",
                "input_mapping": {"seen": "first.output.echo.doc", "which": f"goal.context.{n}"},
            }
            for n in ("left", "right")
        ],
    ],
}


async def test_a_pipeline_goal_runs_dependent_and_parallel_stages_and_survives_a_restart(
    backend: Backend,
) -> None:
    counting = Counting()
    await start_worker(backend, counting)
    await start_router(backend)
    spec = PipelineSpec.model_validate(PIPELINE)
    pipeline = PipelineService(spec, await backend.bus())
    await backend.start(pipeline.run, pipeline.is_ready)
    client = await backend.bus()
    goal = GoalMessage(pipeline="scene", context={"doc": "d1", "left": "L", "right": "R"})
    result = await goal_result(client, goal)
    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.output is not None
    assert result.output["first"]["echo"] == {"doc": "d1"}
    assert result.output["left"]["echo"] == {"seen": "d1", "which": "L"}
    assert result.output["right"]["echo"] == {"seen": "d1", "which": "R"}
    stages = {s.name: s for s in result.stages}
    first_done = stages["first"].finished_at
    assert first_done is not None
    for n in ("left", "right"):
        started = stages[n].started_at
        assert started is not None and started >= first_done
    assert len(counting.calls) == 3

    # A new pipeline process on a new connection: the finished goal's state survived, so the same
    # goal id gets the same result again and no stage runs twice.
    await backend.stop_all()
    await start_worker(backend, counting)
    await start_router(backend)
    again = PipelineService(spec, await backend.bus())
    await backend.start(again.run, again.is_ready)
    replay = await goal_result(client, goal)
    assert replay.status == TaskStatus.COMPLETED and replay.output == result.output
    assert len(counting.calls) == 3


class Holding(ProcessingBackend):
    """EchoBackend after a pause, counting the most tasks it held at once."""

    def __init__(self, pause: float):
        self.pause, self.now, self.most = pause, 0, 0
        self.echo = EchoBackend()

    async def process(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.pause)
            return await self.echo.process(payload, config)
        finally:
            self.now -= 1


async def test_the_router_admits_within_a_concurrency_limit_and_frees_a_slot_on_each_result(
    backend: Backend,
) -> None:
    holding = Holding(0.05)
    await start_worker(backend, holding)
    await start_router(backend, {"rateLimits": {"local": {"maxConcurrent": 1}}})
    client = await backend.bus()
    sub = await client.subscribe_results("sc-r1")
    try:
        for n in range(3):
            await client.publish_task(
                TaskMessage(parent_task_id="sc-r1", worker_type="echo", payload={"n": n})
            )
        async with asyncio.timeout(15):
            results = [TaskResult.from_bytes(await sub.get()) for _ in range(3)]
    finally:
        await sub.close()
    assert [r.status for r in results] == [TaskStatus.COMPLETED] * 3, [r.error for r in results]
    assert sorted(r.output["echo"]["n"] for r in results if r.output) == [0, 1, 2]
    assert {r.model_tier for r in results} == {"local"}  # the tier the router chose (the worker's default)
    assert holding.most == 1  # the worker takes 8 at once; the router let one through at a time
    await poll(lambda: _stored(client, STREAM_INCOMING, 0))  # each acknowledged once forwarded


async def test_the_router_dead_letters_a_task_for_a_worker_type_it_does_not_know_and_answers_its_caller(
    backend: Backend,
) -> None:
    await start_router(backend, echo=WorkerRoute(default_model_tier="local", tiers=["local"]))
    client = await backend.bus()
    sub = await client.subscribe_results("sc-r2")
    try:
        await client.publish_task(TaskMessage(parent_task_id="sc-r2", worker_type="nope", payload={}))
        result = TaskResult.from_bytes(await sub.get(timeout=15))
    finally:
        await sub.close()
    assert result.status == TaskStatus.FAILED and result.error_code == "unknown_worker_type"
    (dl,) = await client.dead_letters()
    assert dl.dead_letter.reason == DeadLetterReason.UNKNOWN_WORKER_TYPE
    assert dl.dead_letter.detail == "no worker type 'nope' (known: echo)"
    await poll(lambda: _stored(client, STREAM_INCOMING, 0))  # terminated after the answer, not redelivered


async def test_the_router_dead_letters_a_malformed_task_once(backend: Backend) -> None:
    await start_router(backend)
    client = await backend.bus()
    await client.js_publish(incoming_subject(), b'{"worker_type": 7}')

    async def stored() -> bool:
        return len(await client.dead_letters()) > 0

    await poll(stored)
    await asyncio.sleep(0.3)  # a redelivery, were there one, would add a second dead letter
    (dl,) = await client.dead_letters()
    assert dl.dead_letter.reason == DeadLetterReason.MALFORMED and dl.dead_letter.source == "router"
    assert dl.dead_letter.deliveries == 1
    assert await client.stream_messages(STREAM_INCOMING) == 0


async def test_the_router_dead_letters_a_task_no_worker_consumes_once_it_waited_long_enough(
    backend: Backend,
) -> None:
    options = RouterOptions(drain_grace=1.0, lag_interval=60, no_worker_wait=0.3, no_worker_interval=0.1)
    await start_router(backend, options=options)
    client = await backend.bus()
    sub = await client.subscribe_results("sc-r4")
    try:
        await client.publish_task(TaskMessage(parent_task_id="sc-r4", worker_type="ghost", payload={}))
        result = TaskResult.from_bytes(await sub.get(timeout=15))
    finally:
        await sub.close()
    assert result.status == TaskStatus.FAILED and result.error_code == "no_worker"
    (dl,) = await client.dead_letters()
    assert dl.dead_letter.reason == DeadLetterReason.NO_WORKER
    assert dl.dead_letter.detail.startswith("no worker consumes loom.tasks.ghost.standard ")
    assert await client.stream_messages(STREAM_TASKS) == 0  # taken out of the work queue


async def test_the_router_dead_letters_a_task_its_worker_never_settled_within_max_deliver(
    backend: Backend,
) -> None:
    """A consumer that keeps dying with the task (never settles it): after its last allowed delivery
    the server's MAX_DELIVERIES advisory reaches the router, which dead-letters the task, answers
    its caller and takes it out of the work queue."""
    await start_router(backend)
    bus = await backend.bus()
    durable = await bus.ensure_worker_consumer(
        "stuck", "local", ack_wait=0.3, max_deliver=2, max_ack_pending=10
    )
    seen: list[int] = []

    async def never_settles(d: Delivery) -> None:
        seen.append(d.num_delivered)
        d.settled = True  # nothing is sent: as if the process died holding it

    async def run(stop: asyncio.Event) -> None:
        await bus.consume(STREAM_TASKS, durable, never_settles, max_in_flight=4, batch=4, stop=stop)

    await backend.start(run, lambda: True)
    client = await backend.bus()
    sub = await client.subscribe_results("sc-r5")
    try:
        task = TaskMessage(parent_task_id="sc-r5", worker_type="stuck", model_tier="local", payload={})
        await client.publish_task(task)
        result = TaskResult.from_bytes(await sub.get(timeout=20))
    finally:
        await sub.close()
    assert result.status == TaskStatus.FAILED and result.error_code == "max_deliveries"
    assert seen == [1, 2]
    (dl,) = await client.dead_letters()
    assert dl.dead_letter.reason == DeadLetterReason.MAX_DELIVERIES and dl.dead_letter.deliveries == 2
    await poll(lambda: _stored(client, STREAM_TASKS, 0))  # deleted after the dead letter was stored


async def _stored(bus: ScenarioBus, stream: str, n: int) -> bool:
    return await bus.stream_messages(stream) == n


async def test_an_orchestrator_checkpoint_survives_its_connection(backend: Backend) -> None:
    writer = KVCheckpointStore(await backend.bus(), ttl=60)
    cp = Checkpoint(goal_id="g-1", sequence=2, executive_summary="two of three done", context_tokens=120)
    await writer.save("orch.g-1", cp)
    reader = KVCheckpointStore(await backend.bus())
    loaded = await reader.load("orch.g-1")
    assert loaded is not None and loaded.model_dump() == cp.model_dump()
    await reader.delete("orch.g-1")
    assert await writer.load("orch.g-1") is None
    assert await reader.load("orch.g-2") is None


async def test_a_key_value_bucket_swaps_only_at_the_revision_read(backend: Backend) -> None:
    """The compare-and-set the router's shared limits and budgets rest on, the same on both buses."""
    bus = await backend.bus()
    a = await bus.key_value("scenario-kv", ttl=60)
    b = await (await backend.bus()).key_value("scenario-kv")
    assert await kv_read(a, "k") == (None, 0)
    assert await kv_swap(a, "k", b"1", 0)
    value, rev = await kv_read(b, "k")
    assert value == b"1" and rev > 0
    assert not await kv_swap(b, "k", b"x", 0)  # no longer absent
    assert await kv_swap(b, "k", b"2", rev)
    assert not await kv_swap(a, "k", b"3", rev)  # another writer came first
    assert await kv_read(a, "k") == (b"2", (await kv_read(b, "k"))[1])
    await kv_delete(a, "k", within=bus.timeout)
    assert (await kv_read(b, "k"))[0] is None
