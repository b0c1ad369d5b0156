"""The worker runner: pulls ``loom.tasks.<type>.<tier>``, runs the engine, publishes results, settles.

Per task: parse (malformed → dead letter), check the input contract (a broken
payload fails at once, no retry), run the engine under ``timeout_seconds``, check
the output contract, publish the result, then ack. A retryable failure before
the last delivery is nak'ed with the configured backoff and publishes nothing;
on the last delivery, or when retrying cannot help, the caller gets a failed
result and the task becomes a dead letter with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from loom import metrics, tracing
from loom.api.loader import load_one
from loom.api.router_policy import (
    FALLBACK_TIERS_ENV,
    TIER_CONFIG_ENV,
    RouterPolicySpec,
    TierDefinition,
    TierPrice,
)
from loom.api.worker import WorkerSpec
from loom.audit import dead_letter_record, task_record
from loom.bus import Delivery, RoleBus, slots_ahead
from loom.contracts import Contract
from loom.dead_letters import dead_letter_of
from loom.errors import TaskError, TaskTimeout
from loom.llm.fallback import load_fallback_tiers
from loom.messages import (
    DeadLetter,
    DeadLetterReason,
    TaskMessage,
    TaskResult,
    TaskStatus,
    TokenUsage,
    describe_validation_error,
)
from loom.subjects import STREAM_TASKS
from loom.worker.engine import TaskEngine, WorkOutcome, build_engine

log = logging.getLogger(__name__)


@dataclass
class WorkerOptions:
    """Tuning of one worker process."""

    ack_grace: float = 30.0  # ack_wait = timeout_seconds + ack_grace
    batch: int = 128
    drain_grace: float = 25.0
    lag_interval: float = 5.0


def load_tier_definition(
    tier: str, policy_path: str | Path | None = None, env: dict[str, str] | None = None
) -> TierDefinition:
    """The tier's definition: from a RouterPolicy file, else ``LOOM_TIER_CONFIG`` (JSON), else defaults."""
    if policy_path:
        policy: RouterPolicySpec = load_one(policy_path, "RouterPolicy").spec
        return policy.tier(tier)
    raw = (os.environ if env is None else env).get(TIER_CONFIG_ENV)
    if raw:
        tdef = TierDefinition.model_validate_json(raw)
        if tdef.name != tier:
            raise ValueError(
                f"{TIER_CONFIG_ENV} defines tier {tdef.name!r}, but this worker runs tier {tier!r}"
            )
        return tdef
    return TierDefinition(name=tier)


def tier_prices(tier: TierDefinition, env: Mapping[str, str]) -> dict[str, TierPrice]:
    """Prices of ``tier`` and of its fallback tiers (those that have one), by tier name. Fallback
    definitions are read only where they are given (an LLM worker's engine requires them; a
    processor worker never falls back)."""
    fallbacks = load_fallback_tiers(tier, env) if tier.fallback and FALLBACK_TIERS_ENV in env else []
    return {d.name: d.price for d in (tier, *fallbacks) if d.price is not None}


class WorkerRuntime:
    """One worker process for one (worker type, tier)."""

    def __init__(
        self,
        bus: RoleBus,
        spec: WorkerSpec,
        tier: TierDefinition,
        engine: TaskEngine | None = None,
        options: WorkerOptions | None = None,
    ):
        self.bus = bus
        self.spec = spec
        self.tier = tier.name
        #: Prices of the tiers that may answer (this one and its fallbacks), for audit records' cost.
        self.prices = tier_prices(tier, os.environ)
        self.worker_type = spec.worker_type
        self.engine = engine if engine is not None else build_engine(spec, tier)
        self.options = options or WorkerOptions()
        self.input = Contract(spec.input_schema)
        self.output = Contract(spec.output_schema)
        self.timeout = spec.timeout_seconds
        self.backoff = list(spec.retry_backoff_seconds)
        self.bound = False
        self.consumer = ""
        wt, t = self.worker_type, self.tier
        self._received = metrics.TASKS_RECEIVED.labels(wt, t)
        self._completed = metrics.TASKS_COMPLETED.labels(wt, t)
        self._retried = metrics.TASKS_FAILED.labels(wt, t, "retried")
        self._failed = metrics.TASKS_FAILED.labels(wt, t, "failed")
        self._dur_ok = metrics.TASK_DURATION.labels(wt, t, "completed")
        self._dur_err = metrics.TASK_DURATION.labels(wt, t, "failed")
        self._in_flight = metrics.TASKS_IN_FLIGHT.labels(wt, t)

    @property
    def ready(self) -> bool:
        """NATS connected and the consumer bound."""
        return self.bound and self.bus.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; then finish or release in-flight tasks and return."""
        if self.tier not in self.spec.served_tiers:
            log.warning(
                "worker %s runs tier %r, which it does not list (serves %s)",
                self.worker_type,
                self.tier,
                ", ".join(self.spec.served_tiers),
            )
        mif = self.spec.max_in_flight
        self.consumer = await self.bus.ensure_worker_consumer(
            self.worker_type,
            self.tier,
            ack_wait=self.timeout + self.options.ack_grace,
            max_deliver=self.spec.max_deliver,
            max_ack_pending=max(mif, 1000),
        )
        await self.engine.start()

        def bound() -> None:
            self.bound = True
            log.info("worker %s/%s consuming (max %d in flight)", self.worker_type, self.tier, mif)

        lag = asyncio.create_task(self._lag_loop(stop))
        batch = min(self.options.batch, mif)
        try:
            await self.bus.consume(
                STREAM_TASKS,
                self.consumer,
                self._handle,
                max_in_flight=mif,
                batch=batch,
                stop=stop,
                drain_grace=self.options.drain_grace,
                on_bound=bound,
                ahead=slots_ahead(mif, batch),  # every run ends within the ack wait: timeout + grace
            )
        finally:
            self.bound = False
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
            await self.engine.close()

    async def _handle(self, d: Delivery) -> None:
        t0 = time.perf_counter()
        self._received.inc()
        self._in_flight.inc()
        attrs = {"messaging.message.delivery_count": d.num_delivered, "loom.tier": self.tier}
        parent = tracing.extract(d.headers)
        tracing.mark(f"receive {self.worker_type}", parent=parent, attributes=attrs)
        try:
            with tracing.span(
                f"task {self.worker_type}", parent=parent, kind=tracing.Kind.CONSUMER, attributes=attrs
            ):
                await self._work(d, t0)
        finally:
            self._in_flight.dec()

    async def _work(self, d: Delivery, t0: float) -> None:
        try:
            task = TaskMessage.model_validate_json(d.data)
        except ValidationError as exc:
            dl = await self._dead(
                d, DeadLetterReason.MALFORMED, f"not a TaskMessage: {describe_validation_error(exc)}", None
            )
            self.bus.audit.emit(lambda: dead_letter_record(dl))
            self._failed.inc()
            return
        attempt = d.num_delivered
        try:
            outcome = await self._run(task)
        except TaskError as exc:
            await self._failure(d, task, exc, attempt, t0)
            return
        elapsed = time.perf_counter() - t0
        result = TaskResult(
            task_id=task.task_id,
            parent_task_id=task.parent_task_id,
            worker_type=task.worker_type,
            status=TaskStatus.COMPLETED,
            output=outcome.output,
            model_used=outcome.model_used,
            model_tier=outcome.model_tier or self.tier,
            token_usage=outcome.token_usage,
            processing_time_ms=elapsed * 1000.0,
            attempt=attempt,
            tenant=task.tenant,
            request_id=task.request_id,
            metadata=task.metadata,
            trace_id=tracing.current_trace_id(),  # set here: publish_result would copy the result
        )
        await self.bus.publish_result(result)
        await d.ack()
        self._audit(result, task)
        self._completed.inc()
        self._dur_ok.observe(elapsed, tracing.exemplar())

    def _audit(self, result: TaskResult, task: TaskMessage) -> None:
        """One audit record of a task's final result, priced at the tier that answered."""
        self.bus.audit.emit(
            lambda: task_record(
                result,
                "worker",
                payload=task.payload,
                with_payloads=self.bus.audit.payloads,
                price=self.prices.get(result.model_tier or self.tier),
            )
        )

    async def _run(self, task: TaskMessage) -> WorkOutcome:
        own_checks = not self.engine.checks_contracts
        if own_checks:
            self.input.check_input(task.payload)
        try:
            async with asyncio.timeout(self.timeout) as cm:
                outcome = await self.engine.run(task)
        except TimeoutError:
            if cm.expired():
                raise TaskTimeout(f"task ran past timeout_seconds={self.timeout:g}") from None
            raise TaskError("engine raised TimeoutError", code="timeout", retryable=True) from None
        except TaskError:
            raise
        except Exception as exc:
            log.exception("engine failed on task %s", task.task_id)
            raise TaskError(f"{type(exc).__name__}: {exc}", code="internal_error", retryable=True) from exc
        if own_checks:
            try:
                self.output.check_output(outcome.output)
            except TaskError as exc:
                exc.token_usage, exc.model_used = outcome.token_usage, outcome.model_used
                raise
        return outcome

    async def _failure(self, d: Delivery, task: TaskMessage, exc: TaskError, attempt: int, t0: float) -> None:
        elapsed = time.perf_counter() - t0
        self._dur_err.observe(elapsed, tracing.exemplar())
        tracing.fail(str(exc), exc.code)
        if exc.retryable and attempt < self.spec.max_deliver:
            delay = self.backoff[min(attempt - 1, len(self.backoff) - 1)] if self.backoff else 0.0
            await d.nak(delay=delay)
            self._retried.inc()
            log.info("task %s attempt %d failed (%s); retry in %gs", task.task_id, attempt, exc.code, delay)
            return
        errors = getattr(exc, "errors", None)
        result = TaskResult(
            task_id=task.task_id,
            parent_task_id=task.parent_task_id,
            worker_type=task.worker_type,
            status=TaskStatus.FAILED,
            error=str(exc),
            error_code=exc.code,
            model_used=exc.model_used,
            model_tier=self.tier,
            token_usage=exc.token_usage or TokenUsage(),
            processing_time_ms=elapsed * 1000.0,
            attempt=attempt,
            tenant=task.tenant,
            request_id=task.request_id,
            metadata={**task.metadata, "validation_errors": errors} if errors else task.metadata,
            trace_id=tracing.current_trace_id(),
        )
        await self.bus.publish_result(result)
        await self._dead(d, exc.reason, f"{exc.code}: {exc}", task)
        self._audit(result, task)
        self._failed.inc()
        log.warning("task %s failed for good after %d attempts: %s", task.task_id, attempt, exc)

    async def _dead(
        self, d: Delivery, reason: DeadLetterReason, detail: str, task: TaskMessage | None
    ) -> DeadLetter:
        dl = dead_letter_of(d, reason, detail, stream=STREAM_TASKS, role="worker", task=task, tier=self.tier)
        await self.bus.publish_dead_letter(dl)
        await d.term()
        metrics.DEAD_LETTERS.labels(reason.value, "worker").inc()
        return dl

    async def _lag_loop(self, stop: asyncio.Event) -> None:
        labels = (STREAM_TASKS, self.consumer)
        while not stop.is_set():
            try:
                lag = await self.bus.consumer_info(*labels)
                metrics.CONSUMER_LAG.labels(*labels).set(lag.total)
                metrics.CONSUMER_PENDING.labels(*labels).set(lag.num_pending)
                metrics.CONSUMER_ACK_PENDING.labels(*labels).set(lag.num_ack_pending)
            except Exception as exc:
                log.debug("consumer info failed: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.options.lag_interval)
            except TimeoutError:
                continue
