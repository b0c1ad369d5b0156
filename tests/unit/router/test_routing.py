"""The routing decision: tier precedence and every rejection reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loom.api.loader import LoadError
from loom.api.router_policy import RouterConfig, RouterPolicySpec, WorkerRoute
from loom.messages import DeadLetterReason, TaskMessage
from loom.router.routing import Rejection, Route, RoutingTable, estimate_tokens, load_router_config


def table(workers: dict[str, WorkerRoute] | None = None, **policy: object) -> RoutingTable:
    return RoutingTable(RouterConfig(policy=RouterPolicySpec.model_validate(policy), workers=workers))


CATALOG = {
    "echo": WorkerRoute(default_model_tier="local", tiers=["local", "frontier"], max_output_tokens=300),
    "solo": WorkerRoute(default_model_tier="standard", tiers=[]),
}


@pytest.mark.parametrize(
    ("overrides", "task_tier", "expected"),
    [
        ({}, None, "local"),  # worker default
        ({}, "frontier", "frontier"),  # task's tier
        ({"echo": "frontier"}, "local", "frontier"),  # override beats the task
    ],
)
def test_tier_precedence(overrides: dict[str, str], task_tier: str | None, expected: str) -> None:
    decision = table(CATALOG, tierOverrides=overrides).route(
        TaskMessage(worker_type="echo", model_tier=task_tier)
    )
    assert decision == Route("echo", expected, f"loom.tasks.echo.{expected}")


def test_without_catalog_any_type_routes_and_defaults_to_standard() -> None:
    assert table().route(TaskMessage(worker_type="anything")) == Route(
        "anything", "standard", "loom.tasks.anything.standard"
    )


def test_rejections_name_their_reason() -> None:
    t = table(
        CATALOG, tiers=[{"name": "local"}, {"name": "frontier"}, {"name": "standard"}, {"name": "gold"}]
    )
    r = t.route(TaskMessage(worker_type="ghost"))
    assert (
        isinstance(r, Rejection) and r.reason == DeadLetterReason.UNKNOWN_WORKER_TYPE and "echo" in r.detail
    )
    r = t.route(TaskMessage(worker_type="echo", model_tier="platinum"))
    assert (
        isinstance(r, Rejection) and r.reason == DeadLetterReason.UNKNOWN_TIER and "not defined" in r.detail
    )
    r = t.route(TaskMessage(worker_type="echo", model_tier="gold"))
    assert (
        isinstance(r, Rejection)
        and r.reason == DeadLetterReason.UNKNOWN_TIER
        and "does not serve" in r.detail
    )
    # a worker with no explicit tiers serves its default only
    assert t.route(TaskMessage(worker_type="solo")) == Route("solo", "standard", "loom.tasks.solo.standard")
    r = t.route(TaskMessage(worker_type="solo", model_tier="local"))
    assert isinstance(r, Rejection) and r.reason == DeadLetterReason.UNKNOWN_TIER


def test_token_estimate_uses_the_worker_output_budget() -> None:
    t = table(CATALOG)
    assert t.max_output_tokens("echo") == 300 and t.max_output_tokens("unknown") == 2000
    assert estimate_tokens(400, 300) == 400


def _write(path: Path, *docs: object) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs)))
    return path


def test_load_router_config_from_policy_and_worker_manifests(tmp_path: Path) -> None:
    _write(
        tmp_path / "policy.yaml",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "RouterPolicy",
            "metadata": {"name": "p"},
            "spec": {"tierOverrides": {"sum": "frontier"}},
        },
    )
    _write(
        tmp_path / "workers.yaml",
        {
            "apiVersion": "loom.dev/v1alpha1",
            "kind": "Worker",
            "metadata": {"name": "sum"},
            "spec": {
                "systemPrompt": "x",
                "tiers": ["local", "frontier"],
                "defaultModelTier": "local",
                "maxOutputTokens": 77,
            },
        },
        {"name": "proc", "worker_kind": "processor", "processing_backend": "a.B"},
    )
    cfg = load_router_config([tmp_path])
    assert cfg.policy.tier_overrides == {"sum": "frontier"}
    assert cfg.workers is not None and set(cfg.workers) == {"sum", "proc"}
    assert cfg.workers["sum"].max_output_tokens == 77 and cfg.workers["sum"].tiers == ["local", "frontier"]


def test_load_router_config_yaml_as_the_operator_writes_it(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "router.yaml",
        {
            "policy": {"rateLimits": {"local": {"maxConcurrent": 3}}},
            "workers": {"echo": {"defaultModelTier": "local", "tiers": ["local"]}},
        },
    )
    cfg = load_router_config([p])
    assert cfg.policy.rate_limits["local"].max_concurrent == 3 and cfg.workers is not None


def test_load_router_config_reports_every_problem(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", {"policy": {"replicas": 0}})
    b = _write(tmp_path / "b.yaml", {"name": "w", "worker_kind": "processor"})
    with pytest.raises(LoadError) as err:
        load_router_config([a, b])
    text = str(err.value)
    assert "a.yaml: RouterConfig.policy.replicas: Input should be greater than or equal to 1" in text
    assert "b.yaml: Worker: processor workers need processingBackend" in text


def test_inflight_lease_follows_the_worker_or_defaults() -> None:
    from loom.router.routing import DEFAULT_INFLIGHT_LEASE, LEASE_GRACE, WORKER_ACK_GRACE

    slow = WorkerRoute(default_model_tier="local", tiers=[], timeout_seconds=120, max_deliver=3)
    t = table({"slow": slow, "echo": CATALOG["echo"]})
    assert t.inflight_lease("slow") == (120 + WORKER_ACK_GRACE) * 3 + LEASE_GRACE
    assert t.inflight_lease("echo") == DEFAULT_INFLIGHT_LEASE  # catalog entry without timing
    assert t.inflight_lease("unknown") == DEFAULT_INFLIGHT_LEASE
    assert table(None).inflight_lease("slow") == DEFAULT_INFLIGHT_LEASE


def test_worker_route_carries_the_timing_of_the_worker() -> None:
    from loom.api.router_policy import worker_route
    from loom.api.worker import WorkerSpec

    spec = WorkerSpec.model_validate(
        {"name": "w", "workerKind": "processor", "processingBackend": "loom.contrib.noop.NoopBackend",
         "timeoutSeconds": 10, "maxDeliver": 4}
    )
    route = worker_route(spec)
    assert (route.timeout_seconds, route.max_deliver) == (10, 4)


def test_router_lease_from_flag_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from loom.cli.main import build_parser

    def lease(*argv: str) -> float | None:
        value: float | None = build_parser().parse_args(["router", *argv]).inflight_lease_seconds
        return value

    assert lease() is None  # derived from the catalog at run time
    monkeypatch.setenv("LOOM_ROUTER_INFLIGHT_LEASE_SECONDS", "42")
    assert lease() == 42.0
    assert lease("--inflight-lease-seconds", "7.5") == 7.5
    with pytest.raises(SystemExit):
        lease("--inflight-lease-seconds", "0")


def test_without_a_catalog_an_untiered_task_goes_to_the_one_tier_its_workers_consume() -> None:
    from loom.api.router_policy import RouterConfig
    from loom.messages import TaskMessage
    from loom.router.routing import Route, RoutingTable

    table = RoutingTable(RouterConfig())
    task = TaskMessage(worker_type="extractor")
    assert table.needs_served_tiers(task)
    one = table.route(task, frozenset({"local"}))
    assert isinstance(one, Route) and one.subject == "loom.tasks.extractor.local"
    several = table.route(task, frozenset({"local", "frontier"}))
    assert isinstance(several, Route) and several.tier == "standard"
    assert not table.needs_served_tiers(TaskMessage(worker_type="extractor", model_tier="frontier"))
