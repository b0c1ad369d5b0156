"""The chart's default RouterPolicy turns fairness on: a shared tenant budget, payload and stream limits."""

from __future__ import annotations

from pathlib import Path

from loom.api.router_policy import RouterPolicySpec
from loom.router.limits import SHARED_BUDGET, Limiter
from tests.support import chart
from tests.support.chart import one


def test_the_default_router_policy_limits_unlisted_tenants_together(tmp_path: Path) -> None:
    objects = chart.render({"routerPolicy": {"create": True}}, tmp_path)
    policy = one(objects, "RouterPolicy")
    schema = chart.crd_schemas()[(policy["apiVersion"], "RouterPolicy")]
    chart.validate_custom_resource(policy, schema)  # the CRD's schema accepts it
    spec = RouterPolicySpec.model_validate(policy["spec"])
    limits = spec.tenant_limits
    assert limits.default is not None and limits.default.requests_per_minute and limits.default.max_concurrent
    assert limits.default_scope == "shared" and limits.overrides == {}
    assert spec.max_payload_bytes == 1024 * 1024
    assert (spec.streams.discard, spec.streams.max_messages_per_tenant) == ("new", 10_000)
    # Rotating tenant names lands every name in the one shared budget of the default limits.
    limiter = Limiter(spec, clock=lambda: 0.0)
    for name in ("a1", "a2", "a3", "default"):
        limiter.limits_for("local", name)
    assert set(limiter.tenants) == {SHARED_BUDGET}
