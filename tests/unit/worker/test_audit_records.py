"""Audit records: outcomes, fields, filters, CSV and settings (pure; the stream is in tests/integration)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from loom import tracing
from loom.api.router_policy import FALLBACK_TIERS_ENV, TierDefinition, TierPrice
from loom.audit import (
    CSV_COLUMNS,
    AuditFilter,
    AuditSettings,
    dead_letter_record,
    goal_record,
    task_outcome,
    task_record,
    to_csv,
)
from loom.bus_auth import Identity, Role, permissions, tenant_identity
from loom.cli.commands.audit import parse_time
from loom.costs import COST_SCALE, cost_micros
from loom.messages import (
    DeadLetter,
    DeadLetterReason,
    GoalResult,
    StageRecord,
    TaskResult,
    TaskStatus,
    TokenUsage,
)
from loom.worker.runtime import tier_prices

USAGE = TokenUsage(prompt_tokens=120, completion_tokens=30, cache_read_tokens=900, cache_write_tokens=5)


def _result(status: TaskStatus, code: str | None = None) -> TaskResult:
    return TaskResult(
        task_id="g1.classify.1",
        parent_task_id="g1",
        worker_type="doc-classifier",
        status=status,
        output={"category": "report"} if status is TaskStatus.COMPLETED else None,
        error_code=code,
        model_used="claude-x",
        model_tier="standard",
        token_usage=USAGE,
        processing_time_ms=812.5,
        attempt=2,
        tenant="acme",
        metadata={"pipeline": "doc-analysis", "stage": "classify"},
    )


@pytest.mark.parametrize(
    ("status", "code", "role", "outcome"),
    [
        (TaskStatus.COMPLETED, None, "worker", "completed"),
        (TaskStatus.FAILED, "invalid_output", "worker", "failed"),
        (TaskStatus.FAILED, "rate_limited", "router", "rate_limited"),
        (TaskStatus.FAILED, "unknown_worker_type", "router", "dead_lettered"),
    ],
)
def test_the_outcome_is_decided_by_who_ended_the_task(
    status: TaskStatus, code: str | None, role: str, outcome: str
) -> None:
    assert task_outcome(status, code, role) == outcome


def test_a_task_record_holds_tokens_cached_apart_model_tier_and_trace() -> None:
    with tracing.root("submit", submitted_by="tenant_acme"):
        trace_id = tracing.current_trace_id()
        rec = task_record(_result(TaskStatus.COMPLETED), "worker", payload={"text": "secret"})
    assert rec.kind == "task" and rec.outcome == "completed" and rec.error_kind is None
    assert (rec.tenant, rec.worker_type, rec.pipeline, rec.tier, rec.model) == (
        "acme", "doc-classifier", "doc-analysis", "standard", "claude-x",
    )  # fmt: skip
    assert (rec.tokens_in, rec.tokens_out, rec.cache_read_tokens, rec.cache_write_tokens) == (120, 30, 900, 5)
    assert rec.duration_ms == 812.5 and rec.attempt == 2 and rec.goal_id == "g1"
    assert rec.trace_id == trace_id and rec.submitter == "tenant_acme" and rec.role == "worker"
    assert rec.payload is None and rec.output is None  # no payloads unless enabled
    assert rec.cost is None  # no prices configured


def test_a_task_record_costs_its_usage_at_the_answering_tiers_price() -> None:
    price = TierPrice(input_per_million=3.0, output_per_million=15.0)
    rec = task_record(_result(TaskStatus.COMPLETED), "worker", price=price)
    # 120 fresh x 3 + 30 out x 15 + 900 cache reads x 0.3 + 5 cache writes x 3.75, per million.
    assert rec.cost == pytest.approx((120 * 3 + 30 * 15 + 900 * 0.3 + 5 * 3.75) / 1e6, abs=1e-6)
    assert rec.cost == cost_micros(price, USAGE) / COST_SCALE  # the budgets' rule, not a copy


def test_worker_prices_cover_its_tier_and_the_fallbacks_that_may_answer() -> None:
    own = TierPrice(input_per_million=3.0, output_per_million=15.0)
    cheap = TierPrice(input_per_million=0.5, output_per_million=1.0)
    tier = TierDefinition(name="standard", price=own, fallback=["backup", "free"])
    env = {
        FALLBACK_TIERS_ENV: json.dumps(
            [TierDefinition(name="backup", price=cheap).to_manifest_dict(), {"name": "free"}]
        )
    }
    assert tier_prices(tier, env) == {"standard": own, "backup": cheap}
    # A processor worker's tier names fallbacks nobody passed: its own price only.
    assert tier_prices(tier, {}) == {"standard": own}
    assert tier_prices(TierDefinition(name="local"), {}) == {}


def test_a_goal_dead_lettered_unread_is_recorded_as_a_goal() -> None:
    """A malformed goal has no goal id; its subject still says it was a goal."""
    dl = DeadLetter(
        reason=DeadLetterReason.MALFORMED,
        detail="not a goal the pipeline can run",
        subject="loom.goals.doc-analysis.tenant.acme",
        original="{",
        tenant="acme",
        source="pipeline",
    )
    rec = dead_letter_record(dl)
    assert (rec.kind, rec.outcome, rec.error_kind) == ("goal", "dead_lettered", "malformed")
    assert rec.role == "pipeline" and rec.tenant == "acme"


def test_payloads_only_when_enabled() -> None:
    rec = task_record(_result(TaskStatus.COMPLETED), "worker", payload={"text": "t"}, with_payloads=True)
    assert rec.payload == {"text": "t"} and rec.output == {"category": "report"}


def test_dead_letter_and_goal_records() -> None:
    dl = DeadLetter(
        reason=DeadLetterReason.RATE_LIMITED,
        subject="loom.tasks.incoming",
        original="{}",
        task_id="t1",
        worker_type="echo",
        model_tier="standard",
        tenant="acme",
        source="router",
        trace_id="ab" * 16,
    )
    rec = dead_letter_record(dl)
    assert (rec.outcome, rec.error_kind, rec.tenant, rec.tier, rec.trace_id, rec.role) == (
        "rate_limited", "rate_limited", "acme", "standard", "ab" * 16, "router",
    )  # fmt: skip
    other = dead_letter_record(dl.model_copy(update={"reason": DeadLetterReason.NO_WORKER}))
    assert other.outcome == "dead_lettered" and other.error_kind == "no_worker"

    goal = GoalResult(
        goal_id="g1",
        status=TaskStatus.FAILED,
        pipeline="doc-analysis",
        stages=[StageRecord(name="extract", worker_type="x", status="timeout")],
        token_usage=USAGE,
        processing_time_ms=99.0,
        tenant="acme",
    )
    g = goal_record(goal)
    assert (g.kind, g.outcome, g.error_kind, g.pipeline, g.tokens_in) == (
        "goal", "failed", "timeout", "doc-analysis", 120,
    )  # fmt: skip


def test_filters_and_csv_export() -> None:
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    a = task_record(_result(TaskStatus.COMPLETED), "worker").model_copy(update={"at": now})
    b = task_record(_result(TaskStatus.FAILED, "timeout"), "worker").model_copy(
        update={"at": now + timedelta(hours=1), "tenant": "other"}
    )
    assert [r for r in (a, b) if AuditFilter(tenant="acme").matches(r)] == [a]
    assert [r for r in (a, b) if AuditFilter(outcome="failed").matches(r)] == [b]
    assert [r for r in (a, b) if AuditFilter(since=now + timedelta(minutes=1)).matches(r)] == [b]
    assert [r for r in (a, b) if AuditFilter(until=now + timedelta(minutes=1)).matches(r)] == [a]
    assert [r for r in (a, b) if AuditFilter(worker_type="nope").matches(r)] == []
    lines = to_csv([a, b]).splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS)
    row = dict(zip(CSV_COLUMNS, lines[2].split(","), strict=True))
    assert row["outcome"] == "failed" and row["error_kind"] == "timeout" and row["tokens_in"] == "120"


def test_settings_from_env() -> None:
    assert AuditSettings.from_env({}) == AuditSettings(
        enabled=True, payloads=False, max_age=None, buffer=10_000
    )
    s = AuditSettings.from_env(
        {"LOOM_AUDIT": "off", "LOOM_AUDIT_PAYLOADS": "true", "LOOM_AUDIT_MAX_AGE_SECONDS": "3600"}
    )
    assert (s.enabled, s.payloads, s.max_age) == (False, True, 3600.0)
    with pytest.raises(ValueError, match="LOOM_AUDIT_MAX_AGE_SECONDS"):
        AuditSettings.from_env({"LOOM_AUDIT_MAX_AGE_SECONDS": "-1"})


def test_audit_writers_may_publish_audit_records_and_tenants_may_not() -> None:
    writer = Identity("w", Role.WORKER, worker_type="echo", tiers=("local",))
    for ident in (writer, Identity("r", Role.ROUTER), Identity("p", Role.PIPELINE, pipeline="x")):
        assert "loom.audit.>" in permissions(ident).publish
    assert "loom.audit.>" not in permissions(Identity("s", Role.SCHEDULER)).publish
    assert not any("audit" in s for s in permissions(tenant_identity("acme")).publish)


def test_time_arguments() -> None:
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("2026-01-31T10:00:00Z") == datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert parse_time("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


def test_records_are_packed_per_tenant_into_bounded_messages_and_read_back() -> None:
    from loom.audit import AuditRecord, pack, unpack

    recs = [AuditRecord(kind="task", outcome="completed", role="worker", tenant=t, task_id=str(i))
            for i, t in enumerate(["a", "b", "a", "a", "b"])]  # fmt: skip
    packed = pack(recs)
    assert [(m.subject, [r.task_id for r in m.records]) for m in packed] == [
        ("loom.audit.a", ["0", "2", "3"]),
        ("loom.audit.b", ["1", "4"]),
    ]
    assert [r.task_id for r in unpack(packed[0].body)] == ["0", "2", "3"]
    one = len(recs[0].to_bytes())
    small = pack(recs[:1] * 3, max_bytes=2 * (one + 1))  # two fit (each line and its newline)
    assert [len(m.records) for m in small] == [2, 1]
    assert len({m.msg_id for m in small}) == 2
