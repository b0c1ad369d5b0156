"""RouterPolicy status shows each declared limit's and budget's use, read by the operator from the
routers' Key-Value buckets on a real nats-server (real API server, the chart's operator RBAC)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from loom.api.router_policy import RouterPolicySpec
from loom.bus import Bus
from loom.router.budget_ledger import BudgetLedger, Exhausted
from loom.router.budgets import BUDGETS_BUCKET, BUDGETS_TTL, estimate_usage
from loom.router.shared_limits import LIMITS_BUCKET, scope_key, window_of
from loom.settings import NatsSettings
from tests.k8s.operator.conftest import Loom, operator_env, running_operator, wait_for
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.k8s


async def _spend(nats_url: str, spec: RouterPolicySpec, tier: str, tenant: str) -> None:
    """What routers would leave in NATS: 150 tokens reserved by a tenant, 7 requests of the tier."""
    bus = await Bus.connect(NatsSettings(url=nats_url, name="usage-test"))
    try:
        ledger = BudgetLedger(spec, await bus.key_value(BUDGETS_BUCKET, ttl=BUDGETS_TTL))
        assert not isinstance(await ledger.reserve(tier, tenant, estimate_usage(100, 50)), Exhausted)
        limits = await bus.key_value(LIMITS_BUCKET, ttl=3600)
        now = window_of(time.time(), 60.0)
        for w in (now, now + 1):  # the current minute and the next, should it turn meanwhile
            await limits.put(f"{scope_key(f'tier:{tier}')}.requests.{w}", b"7")
    finally:
        await bus.close()


def test_status_shows_limit_and_budget_use_of_the_current_window(
    sa_kubeconfig: Path, operator_nats: NatsServer, loom: Loom
) -> None:
    tier, tenant = f"u{uuid.uuid4().hex[:6]}", f"acme-{uuid.uuid4().hex[:6]}"
    spec = {
        "tiers": [{"name": tier}],
        "replicas": 2,  # limits shared through NATS
        "rateLimits": {tier: {"requestsPerMinute": 600, "maxConcurrent": 3}},
        "tenantLimits": {"default": {}},
        "budgets": {"tenants": {tenant: {"tokensPerDay": 1000}}},
    }
    env = {**operator_env(operator_nats), "LOOM_USAGE_INTERVAL": "0.5"}
    with running_operator(sa_kubeconfig, env, name="usage"):
        loom.create("RouterPolicy", "default", spec)
        asyncio.run(_spend(operator_nats.url, RouterPolicySpec.model_validate(spec), tier, tenant))

        def usage() -> dict[tuple[str, str], Any] | None:
            rows = loom.get("RouterPolicy", "default").get("status", {}).get("usage")
            if not rows:
                return None
            got = {(r["scope"], r["what"]): (r.get("used"), r["limit"]) for r in rows}
            return got if got.get((f"tenant:{tenant}", "tokens/day"), (0,))[0] == 150 else None

        got = wait_for(usage, 60, what="RouterPolicy status.usage")
        assert got == {
            (f"tier:{tier}", "requests"): (7, 600),
            (f"tier:{tier}", "in_flight"): (0, 3),
            (f"tenant:{tenant}", "tokens/day"): (150, 1000),
        }  # one row per declared limit and budget, nothing per tenant seen in traffic
        # the reconciler's own status writes (conditions, tiers) and the usage live side by side
        status = wait_for(
            lambda: (s := loom.get("RouterPolicy", "default").get("status", {})).get("conditions") and s,
            60,
            what="reconciled status",
        )
        assert status["usage"] and status["usageTime"].endswith("Z") and status["tierNames"] == tier
