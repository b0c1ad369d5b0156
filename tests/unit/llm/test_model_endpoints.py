"""The model-endpoint decision (loom.llm.endpoints) and where it is applied: the RouterPolicy
model, the operator's render, the environment of local mode."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from loom.api.router_policy import RouterPolicySpec
from loom.llm.endpoints import (
    EndpointRefused,
    EndpointRules,
    check_addresses,
    check_endpoint,
    rules_from_env,
    url_problem,
)

RULES = EndpointRules.build(
    ["models.example.com", "*.openai.azure.com", "http://vllm.models.svc:8000"], ["10.96.0.0/12"]
)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://api.openai.com/v1", None),
        ("https://api.anthropic.com", None),
        ("https://models.example.com/v1", None),
        ("https://eu.openai.azure.com/openai", None),
        ("http://vllm.models.svc:8000/v1", None),
        ("http://models.example.com/v1", "not in modelEndpoints.allowedUrls"),  # https only unless listed
        ("https://models.example.com:8443/v1", "not in modelEndpoints.allowedUrls"),  # other port
        ("https://openai.azure.com", "not in modelEndpoints.allowedUrls"),  # the wildcard needs a label
        ("https://evil.example/v1", "not in modelEndpoints.allowedUrls"),
        ("https://user:pw@models.example.com/v1", "user name or password"),
        ("ftp://models.example.com", "not an http(s) URL"),
        ("http://169.254.169.254/latest", "not in modelEndpoints.allowedUrls"),
    ],
)
def test_urls(url: str, why: str | None) -> None:
    problem = url_problem(url, RULES)
    assert (problem is None) if why is None else (problem is not None and why in problem), problem


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.5", "private or cluster-internal"),
        ("192.168.1.1", "private or cluster-internal"),
        ("100.64.0.1", "private or cluster-internal"),
        ("::ffff:10.0.0.5", "private or cluster-internal"),
        ("0.0.0.0", "not a unicast address"),
        ("127.0.0.1", "loopback, allowed only in local mode"),
        ("::1", "loopback, allowed only in local mode"),
        ("10.96.0.10", None),  # inside a listed network
        ("104.18.6.192", None),
    ],
)
def test_resolved_addresses(address: str, why: str | None) -> None:
    if why is None:
        check_addresses("http://vllm.models.svc:8000", [address], RULES)
        return
    with pytest.raises(EndpointRefused, match=why):
        check_addresses("http://vllm.models.svc:8000", [address], RULES)


def test_loopback_only_in_local_mode_and_only_when_listed() -> None:
    listed = ["http://127.0.0.1:8911"]
    assert "local mode" in (url_problem("http://127.0.0.1:8911/v1", EndpointRules.build(listed)) or "")
    local = EndpointRules.build(listed, local_mode=True)
    assert url_problem("http://127.0.0.1:8911/v1", local) is None
    assert "not in modelEndpoints.allowedUrls" in (url_problem("http://127.0.0.1:6379", local) or "")


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the work it is handed (a host lookup is one)."""

    submitted = 0

    def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.submitted += 1
        return super().submit(*args, **kwargs)


def lookups_of(urls: list[str], rules: EndpointRules) -> int:
    """How many lookups checking each URL before a call takes (on a fresh event loop)."""
    executor = CountingExecutor(max_workers=1)

    async def check() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        for url in urls:
            await check_endpoint(url, rules)

    asyncio.run(check())
    return executor.submitted


def test_an_address_literal_is_checked_without_a_lookup() -> None:
    """The per-call check resolves host names, but an address has nothing to resolve: no thread hop
    on every model call of a worker talking to ``127.0.0.1`` (local mode's model server)."""
    local = EndpointRules.build(
        ["http://127.0.0.1:8911", "http://[::1]:8911", "http://localhost:8911"], local_mode=True
    )
    assert lookups_of(["http://127.0.0.1:8911/v1", "http://[::1]:8911/v1"] * 5, local) == 0
    assert lookups_of(["http://localhost:8911/v1"], local) == 1
    listed = EndpointRules.build(["http://169.254.169.254"])
    with pytest.raises(EndpointRefused, match="cloud metadata"):
        asyncio.run(check_endpoint("http://169.254.169.254/latest", listed))


def test_rules_from_the_environment() -> None:
    env = {"LOOM_MODEL_ENDPOINTS": json.dumps({"allowedUrls": ["x.example"]}), "LOOM_LOCAL_MODE": "1"}
    rules = rules_from_env(env)
    assert rules.local_mode and url_problem("https://x.example", rules) is None
    assert rules_from_env({}).local_mode is False
    with pytest.raises(EndpointRefused, match="not JSON"):
        rules_from_env({"LOOM_MODEL_ENDPOINTS": "{"})
    with pytest.raises(EndpointRefused, match="allowedUrls and allowedNetworks"):
        rules_from_env({"LOOM_MODEL_ENDPOINTS": '{"hosts": []}'})


def policy(base_url: str, **endpoints: list[str]) -> dict[str, object]:
    return {
        "tiers": [{"name": "standard", "backend": "openai", "model": "m", "baseUrl": base_url}],
        "modelEndpoints": endpoints,
    }


def test_the_router_policy_refuses_an_unlisted_base_url() -> None:
    with pytest.raises(ValidationError, match=r"tiers\.standard\.baseUrl: http://10\.0\.0\.5:80 is not in"):
        RouterPolicySpec.model_validate(policy("http://10.0.0.5/v1"))
    with pytest.raises(ValidationError, match=r"allowedUrls: 'https://x\.example/v1': give only"):
        RouterPolicySpec.model_validate(policy("https://x.example/v1", allowedUrls=["https://x.example/v1"]))
    with pytest.raises(ValidationError, match=r"allowedNetworks: '10\.0\.0\.1/8': not a network"):
        RouterPolicySpec.model_validate(policy("https://api.openai.com/v1", allowedNetworks=["10.0.0.1/8"]))
    ok = RouterPolicySpec.model_validate(
        policy("http://10.0.0.5/v1", allowedUrls=["http://10.0.0.5"], allowedNetworks=["10.0.0.0/8"])
    )
    assert ok.endpoint_problems(local_mode=False) == []


def test_a_loopback_base_url_passes_the_model_but_not_the_operator() -> None:
    spec = RouterPolicySpec.model_validate(policy("http://127.0.0.1:9000/v1", allowedUrls=["http://127.0.0.1:9000"]))
    assert spec.endpoint_problems(local_mode=True) == []
    assert spec.endpoint_problems(local_mode=False) == [
        "tiers.standard.baseUrl: 127.0.0.1 is loopback, allowed only in local mode (loom up)"
    ]
