"""Provider fallback: the chain of providers against fake servers speaking the OpenAI wire format,
what a worker is told of its fallback tiers (locally and on a cluster), and the router's limits
charged to the tier that answered."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.support.endpoints import loopback_allowed

from loom.api import WorkerSpec
from loom.api.router_policy import FALLBACK_TIERS_ENV, RouterPolicySpec, TierDefinition, fallback_config
from loom.llm.base import ChatRequest, Message
from loom.llm.errors import BadRequest, Unavailable
from loom.llm.factory import build_model_client
from loom.llm.fallback import FallbackProvider, load_fallback_tiers
from loom.llm.resilience import RetryPolicy
from loom.router.limits import Limiter
from loom_operator.render import Owner, render_worker
from loom_operator.settings import Settings


async def _no_sleep(_: float) -> None:
    return None


def _chain(*servers: tuple[str, FakeLLMServer]) -> FallbackProvider:
    env = {"K": "sk", **loopback_allowed(*(s.url for _, s in servers))}
    return FallbackProvider(
        [
            (
                name,
                build_model_client(
                    TierDefinition(
                        name=name, backend="openai", model=f"{name}-m", base_url=s.url, api_key_env="K"
                    ),
                    env,
                    sleep=_no_sleep,
                    policy=RetryPolicy(max_retries=1),
                ),
            )
            for name, s in servers
        ]
    )


REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], system="s")


async def test_unavailable_and_rate_limited_fall_through_in_order_bad_requests_do_not() -> None:
    async with (
        FakeLLMServer("openai", default=lambda _: Reply(status=500)) as a,
        FakeLLMServer("openai", default=lambda _: Reply(status=429)) as b,
        FakeLLMServer("openai", default=lambda body: Reply(json={"ok": 1}, model=body["model"])) as c,
    ):
        chain = _chain(("a", a), ("b", b), ("c", c))
        answer = await chain.complete(REQUEST)
        assert (answer.tier, answer.model) == ("c", "c-m")
        assert (len(a.requests), len(b.requests), len(c.requests)) == (2, 2, 1)  # each retried once

        a.default = lambda _: Reply(status=400)
        with pytest.raises(BadRequest):
            await chain.complete(REQUEST)
        assert len(b.requests) == 2 and len(c.requests) == 1  # not asked

        a.default = lambda body: Reply(json={"ok": 1}, model=body["model"])
        own = await chain.complete(REQUEST)
        assert own.tier is None and own.model == "a-m"  # the worker's own tier answered
        await chain.close()


async def test_every_tier_unavailable_raises_the_last_error() -> None:
    async with (
        FakeLLMServer("openai", default=lambda _: Reply(status=503)) as a,
        FakeLLMServer("openai", default=lambda _: Reply(status=502)) as b,
    ):
        chain = _chain(("a", a), ("b", b))
        with pytest.raises(Unavailable):
            await chain.complete(REQUEST)
        assert len(b.requests) == 2
        await chain.close()


def _policy() -> RouterPolicySpec:
    def cloud(name: str, model: str, secret: str) -> dict[str, Any]:
        return {
            "name": name,
            "backend": "openai",
            "model": model,
            "apiKeySecretRef": {"name": secret, "key": "k"},
        }

    return RouterPolicySpec.model_validate(
        {
            "tiers": [
                {"name": "local", "backend": "ollama", "model": "llama3", "fallback": ["cloud", "cloud2"]},
                cloud("cloud", "gpt", "openai"),
                cloud("cloud2", "gpt2", "other"),
            ]
        }
    )


def test_a_worker_learns_its_fallback_tiers_with_keys_from_their_own_secrets() -> None:
    owner = Owner("Worker", "w", "ns", uid="u1")
    spec_doc = {"name": "w", "systemPrompt": "x", "defaultModelTier": "local"}
    settings = Settings(image="example.org/loom:test", nats_url="nats://nats:4222")
    objects = render_worker(owner, WorkerSpec.model_validate(spec_doc), settings, policy=_policy())
    [dep] = [o for o in objects if o["kind"] == "Deployment"]
    env: dict[str, Any] = {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    defs = json.loads(env[FALLBACK_TIERS_ENV])
    assert [(d["name"], d["apiKeyEnv"]) for d in defs] == [
        ("cloud", "LOOM_FALLBACK_1_API_KEY"),
        ("cloud2", "LOOM_FALLBACK_2_API_KEY"),
    ]  # both are openai: OPENAI_API_KEY could hold only one of the keys
    assert env["LOOM_FALLBACK_1_API_KEY"] == {"secretKeyRef": {"name": "openai", "key": "k"}}
    assert env["LOOM_FALLBACK_2_API_KEY"] == {"secretKeyRef": {"name": "other", "key": "k"}}
    assert "OPENAI_API_KEY" not in env

    local = _policy().fallback_tiers("local", mounted_keys=False)
    assert [t.key_env for t in local] == ["OPENAI_API_KEY", "OPENAI_API_KEY"]  # one environment, by hand


def test_the_worker_refuses_fallback_tiers_it_was_not_given() -> None:
    policy = _policy()
    tier = policy.tier("local")
    assert load_fallback_tiers(policy.tier("cloud"), {}) == []
    with pytest.raises(ValueError, match="LOOM_FALLBACK_TIERS is not set"):
        load_fallback_tiers(tier, {})
    only_one = fallback_config(policy.fallback_tiers("local", mounted_keys=True)[:1])
    with pytest.raises(ValueError, match="does not define cloud2"):
        load_fallback_tiers(tier, {FALLBACK_TIERS_ENV: only_one})
    both = fallback_config(policy.fallback_tiers("local", mounted_keys=True))
    assert [t.name for t in load_fallback_tiers(tier, {FALLBACK_TIERS_ENV: both})] == ["cloud", "cloud2"]


def test_policy_fallback_names_other_defined_tiers() -> None:
    with pytest.raises(ValidationError, match="'a' is the tier itself"):
        RouterPolicySpec.model_validate({"tiers": [{"name": "a", "fallback": ["a"]}]})
    with pytest.raises(ValidationError, match="'z' is not a tier"):
        RouterPolicySpec.model_validate({"tiers": [{"name": "a", "fallback": ["z"]}]})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_limits_are_charged_to_the_tier_that_answered() -> None:
    clock = Clock()
    policy = RouterPolicySpec.model_validate(
        {
            "tiers": [{"name": "a", "fallback": ["b"]}, {"name": "b"}],
            "rateLimits": {
                "a": {"tokensPerMinute": 1000, "maxConcurrent": 1},
                "b": {"tokensPerMinute": 1000},
            },
            "tenantLimits": {"overrides": {"acme": {"tokensPerMinute": 5000}}},
        }
    )
    limiter = Limiter(policy, clock)
    ticket = limiter.try_acquire("a", "acme", 400)
    assert ticket is not None
    a, b, acme = limiter.tiers["a"], limiter.tiers["b"], limiter.tenants["acme"]
    assert a.tokens is not None and b.tokens is not None and acme.tokens is not None
    assert a.tokens.available(clock()) == 600
    limiter.release_answered_by(ticket, "b", 250)
    assert a.tokens.available(clock()) == 1000  # the unavailable tier spent nothing
    assert b.tokens.available(clock()) == 750
    assert acme.tokens.available(clock()) == 4750  # the tenant pays what was used
    assert a.concurrency is not None and a.concurrency.used == 0
    limiter.release_answered_by(ticket, "b", 250)  # once only
    assert b.tokens.available(clock()) == 750
