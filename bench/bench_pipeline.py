"""Pipeline overhead per stage and concurrency of parallel stages, on a real NATS server.

Everything runs for real: nats-server, the router, a processor worker (no-op and
echo backends) and the pipeline orchestrator, in one process. Figures are
ratios against a baseline measured in the same run:

- per-stage overhead: a goal through a chain of N no-op stages, per stage, minus
  one routed task on its own (publish to the router, worker, result);
- concurrency ratio: three 200 ms stages that depend only on the first; the
  sum of their durations over the wall time of their level (3.0 = fully parallel).

Run: ``.venv/bin/python -m bench.bench_pipeline [--goals 50] [--stages 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from tests.support.nats_server import NatsServer
from tests.support.pipelines import wait_goal_result

from loom.api.pipeline import PipelineSpec
from loom.api.router_policy import RouterConfig, TierDefinition
from loom.api.worker import WorkerSpec
from loom.bus import Bus
from loom.messages import GoalMessage, TaskMessage, TaskStatus
from loom.pipeline.service import PipelineService
from loom.router.service import RouterService
from loom.settings import NatsSettings
from loom.worker.runtime import WorkerRuntime


def worker(name: str, backend: str) -> WorkerSpec:
    return WorkerSpec.model_validate(
        {
            "name": name,
            "worker_kind": "processor",
            "processing_backend": backend,
            "default_model_tier": "local",
            "max_in_flight": 16,
        }
    )


def chain(n: int) -> PipelineSpec:
    stages: list[dict[str, Any]] = [{"name": "s0", "worker_type": "noop", "tier": "local"}]
    stages += [
        {"name": f"s{i}", "worker_type": "noop", "tier": "local", "depends_on": [f"s{i - 1}"]}
        for i in range(1, n)
    ]
    return PipelineSpec.model_validate(
        {"name": "chain", "max_concurrent_goals": 4, "pipeline_stages": stages}
    )


def fan() -> PipelineSpec:
    stages: list[dict[str, Any]] = [{"name": "first", "worker_type": "noop", "tier": "local"}]
    stages += [
        {
            "name": n,
            "worker_type": "echo",
            "tier": "local",
            "depends_on": ["first"],
            "input_mapping": {"sleep": "goal.context.sleep"},
        }
        for n in ("a", "b", "c")
    ]
    return PipelineSpec.model_validate({"name": "fan", "max_concurrent_goals": 4, "pipeline_stages": stages})


async def start(coro_factory: Any, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(coro_factory(stop))


async def main(goals: int, stages: int) -> None:
    server = NatsServer().start()
    settings = NatsSettings(url=server.url, name="bench")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    buses: list[Bus] = []
    try:

        async def bus() -> Bus:
            b = await Bus.connect(settings)
            buses.append(b)
            return b

        router = RouterService(await bus(), RouterConfig())
        tasks.append(asyncio.create_task(router.run(stop)))
        tier = TierDefinition(name="local")
        for w in (
            worker("noop", "loom.contrib.noop.NoopBackend"),
            worker("echo", "loom.contrib.noop.EchoBackend"),
        ):
            rt = WorkerRuntime(await bus(), w, tier)
            tasks.append(asyncio.create_task(rt.run(stop)))
        services = [PipelineService(chain(stages), await bus()), PipelineService(fan(), await bus())]
        tasks += [asyncio.create_task(s.run(stop)) for s in services]
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in services)), 20)
        deadline = time.monotonic() + 20
        while not router.ready:
            if time.monotonic() > deadline:
                raise RuntimeError("the router did not bind its consumer")
            await asyncio.sleep(0.01)
        client = await bus()

        async def routed_task() -> float:
            task = TaskMessage(worker_type="noop", model_tier="local")
            sub = await client.subscribe_results(task.task_id)
            t0 = time.perf_counter()
            await client.publish_task(task)
            await sub.get(timeout=30)
            dt = time.perf_counter() - t0
            await sub.close()
            return dt

        async def goal(pipeline: str, context: dict[str, Any] | None = None) -> tuple[float, Any]:
            g = GoalMessage(pipeline=pipeline, context=context or {})
            sub = await client.subscribe_results(g.goal_id)
            t0 = time.perf_counter()
            await client.publish_goal(g)
            result = await wait_goal_result(sub, 60)
            dt = time.perf_counter() - t0
            await sub.close()
            assert result.status == TaskStatus.COMPLETED, result.error
            return dt, result

        for _ in range(20):  # warm-up: consumers, connections, imports
            await routed_task()
        await goal("chain")
        single = [await routed_task() for _ in range(goals * 2)]
        chained = [(await goal("chain"))[0] for _ in range(goals)]
        task_ms = statistics.median(single) * 1000
        goal_ms = statistics.median(chained) * 1000
        per_stage = goal_ms / stages
        print(f"single routed task (p50):        {task_ms:7.2f} ms")
        print(f"{stages}-stage no-op pipeline goal (p50): {goal_ms:7.2f} ms")
        print(f"per stage:                       {per_stage:7.2f} ms")
        print(
            f"pipeline overhead per stage:     {per_stage - task_ms:7.2f} ms  "
            f"({per_stage / task_ms:.2f}x a routed task)"
        )

        ratios = []
        for _ in range(5):
            _, result = await goal("fan", {"sleep": 0.2})
            level = [s for s in result.stages if s.name in ("a", "b", "c")]
            wall = (max(s.finished_at for s in level) - min(s.started_at for s in level)).total_seconds()
            ratios.append(sum(s.duration_ms for s in level) / 1000 / wall)
        print(f"parallel stages concurrency ratio (3 x 200 ms, 3.0 = ideal): {statistics.median(ratios):.2f}")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        for b in buses:
            await b.close()
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--goals", type=int, default=50)
    parser.add_argument("--stages", type=int, default=5)
    ns = parser.parse_args()
    asyncio.run(main(ns.goals, ns.stages))
