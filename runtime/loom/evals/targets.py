"""How a case reaches a worker: its engine in this process, or the router of a running system.

:class:`EngineTarget` builds the worker's real engine with the tier's real provider (as ``loom
up`` gives it to a worker process) and runs a case the way the worker runtime runs a task: input
contract, ``timeout_seconds``, output contract. The model's raw replies are recorded on the way
(a provider wrapper under the resilience layer), so a report shows each reply and the output
retries. :class:`BusTarget` submits the case as a task to the router and waits for its result, so
it tests the deployed system (routing, limits, the deployed prompt); raw replies are not on the
wire there.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loom.api.loader import Resource
from loom.api.router_policy import RouterPolicySpec, TierDefinition
from loom.api.worker import WorkerSpec
from loom.bus import Bus
from loom.contracts import Contract
from loom.errors import TaskError, TaskTimeout
from loom.llm.base import ChatRequest, ChatResponse, Provider
from loom.llm.factory import build_provider
from loom.llm.resilience import ResilientProvider, RetryPolicy
from loom.local.manifests import PlanError, router_policy, worker_tier_env
from loom.messages import TaskMessage, TaskResult, TaskStatus, TokenUsage
from loom.worker.engine import TaskEngine, WorkOutcome


class TargetError(Exception):
    """The worker or tier of a suite cannot be set up from the given manifests."""


@dataclass
class CaseOutput:
    """What the worker did with one case."""

    output: dict[str, Any] | None
    error: str | None = None
    error_code: str | None = None
    raw_replies: list[str] | None = None
    retries: int | None = None
    tokens: TokenUsage = field(default_factory=TokenUsage)
    latency_ms: float = 0.0
    model: str | None = None


class Target(Protocol):
    """Somewhere a case input can be sent to get the worker's output."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, case_id: str, payload: dict[str, Any]) -> CaseOutput: ...


# -- resolving the worker and its tiers from manifests -------------------------------------------


def find_worker(resources: Sequence[Resource], name: str) -> Resource:
    """The Worker whose type (or resource name) is ``name``."""
    for res in resources:
        if res.kind == "Worker" and name in (res.spec.name, res.name):
            return res
    known = sorted(r.spec.name for r in resources if r.kind == "Worker")
    raise TargetError(
        f"no Worker {name!r} in the given paths"
        + (f" (found: {', '.join(known)})" if known else " (no Worker found at all)")
    )


def policy_of(resources: Sequence[Resource]) -> RouterPolicySpec:
    """The RouterPolicy of the manifests (the default policy when there is none)."""
    try:
        return router_policy(resources)[1]
    except PlanError as exc:
        raise TargetError("; ".join(exc.problems)) from None


def tier_setup(
    policy: RouterPolicySpec, tier: str, local_llm_url: str | None
) -> tuple[TierDefinition, dict[str, str]]:
    """The tier's definition and the environment a worker on it gets in local mode (one rule with
    ``loom up``: :func:`loom.local.manifests.worker_tier_env`)."""
    try:
        env, tdef = worker_tier_env(policy, tier, local_llm_url)
    except KeyError:
        raise TargetError(
            f"tier {tier!r} is not defined by the RouterPolicy (defined: {', '.join(policy.tier_names)})"
        ) from None
    return tdef, env


def needs_embedded_model(tdef: TierDefinition) -> bool:
    """Whether a tier runs on the embedded llama.cpp server (backend local, no base URL)."""
    return tdef.backend == "local" and not tdef.base_url


def model_client(
    tdef: TierDefinition, env: Mapping[str, str], recorder: ReplyRecorder | None = None
) -> Provider:
    """The tier's provider with its retries and timeouts; ``recorder`` sees each reply of the model."""
    inner = build_provider(tdef, env)
    if recorder is not None:
        inner = RecordingProvider(inner, recorder)
    return ResilientProvider(
        inner,
        tier=tdef.name,
        call_timeout=tdef.timeout_seconds,
        policy=RetryPolicy(max_retries=tdef.max_retries),
    )


# -- recording the model's replies per case ------------------------------------------------------


class ReplyRecorder:
    """The replies of the case running in the current task (a context variable, so cases in flight
    at the same time never see each other's replies)."""

    def __init__(self) -> None:
        self._var: contextvars.ContextVar[list[ChatResponse] | None] = contextvars.ContextVar(
            "loom_eval_replies", default=None
        )

    def begin(self) -> list[ChatResponse]:
        replies: list[ChatResponse] = []
        self._var.set(replies)
        return replies

    def add(self, response: ChatResponse) -> None:
        replies = self._var.get()
        if replies is not None:
            replies.append(response)


class RecordingProvider(Provider):
    """Passes calls through and hands each reply to a recorder."""

    def __init__(self, inner: Provider, recorder: ReplyRecorder):
        super().__init__(inner.model)
        self.inner = inner
        self.backend = inner.backend
        self.recorder = recorder

    async def complete(self, request: ChatRequest) -> ChatResponse:
        response = await self.inner.complete(request)
        self.recorder.add(response)
        return response

    async def close(self) -> None:
        await self.inner.close()


def _raw_text(response: ChatResponse) -> str:
    if response.tool_calls:
        calls = [{"tool": c.name, "arguments": c.arguments} for c in response.tool_calls]
        return (response.text + "\n" if response.text else "") + json.dumps(calls, ensure_ascii=False)
    return response.text


# -- the two targets -----------------------------------------------------------------------------


class EngineTarget:
    """The worker's real engine in this process, on one tier, no NATS."""

    def __init__(
        self,
        worker: Resource,
        tdef: TierDefinition,
        env: Mapping[str, str],
        *,
        engine: TaskEngine | None = None,
    ):
        self.spec: WorkerSpec = worker.spec
        self.tier = tdef
        self.recorder = ReplyRecorder()
        base_dir = Path(worker.source).parent if worker.source else Path.cwd()
        self._input = Contract(self.spec.input_schema)
        self._output = Contract(self.spec.output_schema)
        if engine is not None:
            self.engine = engine
        elif self.spec.worker_kind == "processor":
            from loom.worker.processor import ProcessorEngine

            self.engine = ProcessorEngine(self.spec)
        else:
            from loom.worker.llm_engine import LLMEngine

            full_env = {**os.environ, **env}
            self.engine = LLMEngine(
                self.spec,
                tdef,
                provider=model_client(tdef, full_env, self.recorder),
                base_dir=base_dir,
                env=full_env,
            )

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    async def run(self, case_id: str, payload: dict[str, Any]) -> CaseOutput:
        replies = self.recorder.begin()
        task = TaskMessage(worker_type=self.spec.name, model_tier=self.tier.name, payload=payload)
        t0 = time.perf_counter()
        outcome: WorkOutcome | None = None
        error: TaskError | None = None
        try:
            outcome = await self._work(task)
        except TaskError as exc:
            error = exc
        latency = (time.perf_counter() - t0) * 1000
        is_llm = self.spec.worker_kind != "processor"
        answers = [r for r in replies if not r.tool_calls]
        out = CaseOutput(
            output=outcome.output if outcome else None,
            raw_replies=[_raw_text(r) for r in replies] if is_llm else None,
            retries=max(0, len(answers) - 1) if is_llm else None,
            latency_ms=latency,
        )
        if outcome is not None:
            out.tokens, out.model = outcome.token_usage, outcome.model_used
        if error is not None:
            out.error, out.error_code = str(error), error.code
            out.tokens, out.model = error.token_usage or TokenUsage(), error.model_used
        if out.model is None and replies:
            out.model = replies[-1].model or None
        return out

    async def _work(self, task: TaskMessage) -> WorkOutcome:
        """One task as the worker runtime does it (input contract, timeout, output contract)."""
        self._input.check_input(task.payload)
        timeout = self.spec.timeout_seconds
        try:
            async with asyncio.timeout(timeout) as cm:
                outcome = await self.engine.run(task)
        except TimeoutError:
            if cm.expired():
                raise TaskTimeout(f"task ran past timeout_seconds={timeout:g}") from None
            raise TaskError("engine raised TimeoutError", code="timeout") from None
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(f"{type(exc).__name__}: {exc}", code="internal_error") from exc
        try:
            self._output.check_output(outcome.output)
        except TaskError as exc:
            exc.token_usage, exc.model_used = outcome.token_usage, outcome.model_used
            raise
        return outcome


def _answers(data: bytes, task: TaskMessage) -> bool:
    """Whether a body on the result subject is the result of ``task`` (and not some other message)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("task_id") == task.task_id


class BusTarget:
    """Tasks to the router of a running system; waits for each result."""

    def __init__(self, bus: Bus, worker_type: str, tier: str | None, *, tenant: str, timeout: float):
        self.bus = bus
        self.worker_type = worker_type
        self.tier = tier
        self.tenant = tenant
        self.timeout = timeout

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def run(self, case_id: str, payload: dict[str, Any]) -> CaseOutput:
        task = TaskMessage(
            worker_type=self.worker_type,
            model_tier=self.tier,
            payload=payload,
            tenant=self.tenant,
            metadata={"eval_case": case_id},
        )
        t0 = time.perf_counter()
        sub = await self.bus.subscribe_results(task.result_key, task.tenant)
        try:
            await self.bus.publish_task(task)
            deadline = asyncio.get_running_loop().time() + self.timeout
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise TimeoutError
                data = await sub.get(timeout=remaining)
                if _answers(data, task):
                    break
        except TimeoutError:
            return CaseOutput(
                output=None,
                error=f"no result within {self.timeout:g}s",
                error_code="timeout",
                latency_ms=(time.perf_counter() - t0) * 1000,
            )
        finally:
            await sub.close()
        result = TaskResult.model_validate_json(data)
        ok = result.status is TaskStatus.COMPLETED
        return CaseOutput(
            output=result.output if ok else None,
            error=None if ok else (result.error or result.status.value),
            error_code=None if ok else result.error_code,
            tokens=result.token_usage,
            latency_ms=(time.perf_counter() - t0) * 1000,
            model=result.model_used,
        )
