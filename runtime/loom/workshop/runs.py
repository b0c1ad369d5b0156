"""Model runs in the background: a page starts one and polls its state, never waiting on a model.

A worker test runs through :class:`loom.evals.targets.EngineTarget`, the worker's real engine on the
tier's real provider (what ``loom eval`` uses), and an eval run through :func:`loom.evals.runner.run_suite`
with the suite's SQLite store beside the suite file. Tiers on the embedded model share one llama.cpp
server, started on first use (or the URL given with ``--local-llm-url``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loom.api.loader import Resource
from loom.api.router_policy import RouterPolicySpec
from loom.contracts import Contract
from loom.evals.compare import Comparison, compare_runs
from loom.evals.runner import CaseResult, RunResult, run_suite
from loom.evals.store import SqliteRunStore, default_store_path
from loom.evals.suite import EvalSuite, JudgeScorer
from loom.evals.targets import CaseOutput, EngineTarget, model_client, needs_embedded_model, tier_setup
from loom.llm.base import Provider
from loom.llm.jsonextract import NoJSONFound, extract_json
from loom.llm.prompt import feedback_message
from loom.messages import GoalMessage, GoalResult, TaskResult
from loom.workshop.connection import Connection

#: Runs kept for their pages; past this the oldest finished ones are forgotten (eval runs stay stored).
MAX_RUNS = 200


class EmbeddedModel:
    """The llama.cpp server for tiers on backend local without a base URL: one, started when first needed."""

    def __init__(self, url: str | None = None):
        self._url = url
        self._server: Any = None
        self._lock = asyncio.Lock()

    async def url(self) -> str:
        async with self._lock:
            if self._url is None:
                from loom.llm.local_server import LocalLlamaServer
                from loom.local.llm import DEFAULT_CONTEXT, local_model_path

                log = Path(tempfile.mkdtemp(prefix="loom-workshop-")) / "llama.log"
                server = LocalLlamaServer(local_model_path(), n_ctx=DEFAULT_CONTEXT, log_path=log)
                await asyncio.to_thread(server.start, wait_seconds=180)
                self._server, self._url = server, server.base_url
            return self._url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@dataclass
class Run:
    """One background run and what the page shows of it."""

    id: str
    kind: str  # test | eval
    title: str
    state: str = "running"  # running | done | failed
    steps: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


@dataclass
class Attempt:
    """One reply of the model in a test, with the problems it was sent back with."""

    reply: str
    problems: list[str]
    feedback: str | None


def attempts(raw_replies: list[str], output_schema: dict[str, Any] | None) -> list[Attempt]:
    """Each reply checked the way the engine checks it (JSON extraction, then the output contract)."""
    contract = Contract(output_schema)
    out = []
    for i, reply in enumerate(raw_replies):
        try:
            value = extract_json(reply)
            problems = (
                contract.errors(value)
                if isinstance(value, dict)
                else [f"(root): the reply must be a JSON object, not {type(value).__name__}"]
            )
        except NoJSONFound as exc:
            problems = [str(exc)]
        last = i == len(raw_replies) - 1
        out.append(Attempt(reply, problems, feedback_message(problems) if problems and not last else None))
    return out


@dataclass
class TestOutcome:
    """A worker test as the page shows it."""

    tier: str
    payload: dict[str, Any]
    output: CaseOutput
    attempts: list[Attempt]


@dataclass
class StageEvent:
    """A stage result as it arrived while the goal ran."""

    stage: str
    attempt: str
    status: str
    at_ms: float
    worker: str
    error: str | None


@dataclass
class GoalOutcome:
    """A goal's live timeline and, at the end, its result."""

    goal_id: str
    pipeline: str
    events: list[StageEvent] = field(default_factory=list)
    result: GoalResult | None = None


@dataclass
class EvalOutcome:
    """An eval run, and its comparison with the chosen baseline."""

    result: RunResult
    comparison: Comparison | None
    store: str


class Runs:
    """The runs of this Workshop process (kept in memory; eval runs are also stored on disk)."""

    def __init__(self, model: EmbeddedModel, keep: int = MAX_RUNS):
        self.model = model
        self.keep = keep
        self._runs: dict[str, Run] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, run_id: str) -> Run:
        return self._runs[run_id]

    def _start(self, kind: str, title: str, work: Callable[[Run], Awaitable[Any]]) -> Run:
        run = Run(id=str(next(self._ids)), kind=kind, title=title)
        self._runs[run.id] = run
        finished = [r.id for r in self._runs.values() if r.state != "running"]
        for old in finished[: max(0, len(self._runs) - self.keep)]:  # the oldest finished ones go first
            del self._runs[old]

        async def body() -> None:
            try:
                run.result = await work(run)
                run.state = "done"
            except Exception as exc:  # shown on the page: the run failed, with its reason
                run.error, run.state = f"{type(exc).__name__}: {exc}", "failed"
            finally:
                run.finished = time.monotonic()

        task = asyncio.create_task(body())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    async def _tier(self, policy: RouterPolicySpec, tier: str, run: Run) -> tuple[Any, dict[str, str]]:
        tdef, _ = tier_setup(policy, tier, None)
        url = None
        if needs_embedded_model(tdef):
            run.steps.append(
                "starting the embedded model" if self.model._url is None else "embedded model ready"
            )
            url = await self.model.url()
        return tier_setup(policy, tier, url)

    def test(
        self,
        worker: Resource,
        policy: RouterPolicySpec,
        tier: str,
        payload: dict[str, Any],
        kind: str = "test",
    ) -> Run:
        """Run one payload through the worker's engine on ``tier`` (``kind`` picks how the page shows it)."""

        async def work(run: Run) -> TestOutcome:
            tdef, env = (
                await self._tier(policy, tier, run)
                if worker.spec.worker_kind == "llm"
                else tier_setup(policy, tier, None)
            )
            target = EngineTarget(worker, tdef, env)
            run.steps.append(f"calling {worker.spec.worker_type} on tier {tier}")
            await target.start()
            try:
                out = await target.run("test", payload)
            finally:
                await target.close()
            return TestOutcome(tier, payload, out, attempts(out.raw_replies or [], worker.spec.output_schema))

        return self._start(kind, f"{kind} {worker.spec.worker_type} on {tier}", work)

    def evaluate(
        self,
        suite: EvalSuite,
        suite_path: Path,
        worker: Resource,
        policy: RouterPolicySpec,
        tier: str,
        baseline: str | None,
    ) -> Run:
        """Run a suite through the worker's engine; store the run beside the suite; compare."""

        async def work(run: Run) -> EvalOutcome:
            store = SqliteRunStore(default_store_path(suite_path))
            before = await asyncio.to_thread(store.baseline, suite.name, baseline) if baseline else None
            tdef, env = await self._tier(policy, tier, run)
            judges: dict[str | None, Provider] = {}
            if any(isinstance(s, JudgeScorer) for c in suite.cases for s in suite.scorers_for(c)):
                for jt in {tier, *suite.judge_tiers}:
                    jdef, jenv = await self._tier(policy, jt, run)
                    judges[jt] = model_client(jdef, {**os.environ, **jenv})
                judges[None] = judges[tier]
            target = EngineTarget(worker, tdef, env)
            await target.start()

            def progress(case: CaseResult) -> None:
                run.steps.append(f"case {case.case_id}: {case.score:.3f} {'pass' if case.passed else 'FAIL'}")

            try:
                result = await run_suite(
                    suite,
                    target,
                    tier=tier,
                    mode="engine",
                    worker_schema=worker.spec.output_schema,
                    judges=judges,
                    on_case=progress,
                )
            finally:
                await target.close()
                for p in {id(p): p for p in judges.values()}.values():
                    await p.close()
            await asyncio.to_thread(store.save_run, result)
            comparison = (
                compare_runs(result, before, name=baseline, tolerance=suite.regression_tolerance)
                if before is not None and baseline
                else None
            )
            return EvalOutcome(result, comparison, str(store.path))

        return self._start("eval", f"eval {suite.name} on {tier}", work)

    def goal(self, connection: Connection, pipeline: str, context: dict[str, Any], timeout: float) -> Run:
        """Submit a goal to a running pipeline; each stage result joins the timeline as it arrives."""
        goal = GoalMessage(pipeline=pipeline, context=context, instruction="workshop run")
        live = GoalOutcome(goal.goal_id, pipeline)

        async def work(run: Run) -> GoalOutcome:
            bus = await connection.bus()
            sub = await bus.subscribe_results(goal.goal_id, goal.tenant)
            try:
                await bus.publish_goal(goal)
                run.steps.append(f"goal {goal.goal_id} submitted to pipeline {pipeline}")
                async with asyncio.timeout(timeout):
                    while live.result is None:
                        _take(live, await sub.get(), run)
            except TimeoutError:
                raise TimeoutError(
                    f"no goal result within {timeout:g}s (is pipeline {pipeline!r} running?)"
                ) from None
            finally:
                await sub.close()
            return live

        run = self._start("goal", f"goal on pipeline {pipeline}", work)
        run.result = live  # the timeline is shown while the goal runs
        return run

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.model.stop)


def _take(live: GoalOutcome, data: bytes, run: Run) -> None:
    """One message on the goal's result subject: a stage's task result, or the goal's own result."""
    doc = json.loads(data)
    if "task_id" not in doc:
        live.result = GoalResult.model_validate(doc)
        return
    result = TaskResult.model_validate(doc)
    _, _, rest = result.task_id.partition(f"{live.goal_id}.")
    stage, _, attempt = rest.rpartition(".")
    live.events.append(
        StageEvent(
            stage=stage or result.task_id,
            attempt=attempt,
            status=result.status.value,
            at_ms=run.elapsed * 1000,
            worker=result.worker_type,
            error=result.error,
        )
    )
