"""A worker's tier environment is the same from the operator and from local mode: one rule
(:meth:`TierDefinition.worker_config`, :func:`worker_tier`) with both callers compared."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loom.api import RouterPolicySpec
from loom.api.router_policy import TIER_CONFIG_ENV, TierDefinition
from loom.llm.endpoints import ENDPOINTS_ENV
from loom.llm.factory import resolve_api_key
from loom.local.manifests import worker_tier_env
from loom_operator.render.common import RenderError
from loom_operator.render.worker import tier_definition, tier_env

POLICY = RouterPolicySpec.model_validate(
    {
        "tiers": [
            {"name": "gpt", "backend": "openai", "model": "m", "apiKeySecretRef": {"name": "s", "key": "k"}},
            {"name": "own", "backend": "ollama", "model": "m", "apiKeySecretRef": {"name": "s", "key": "k"}},
            {"name": "claude", "backend": "anthropic", "model": "c", "apiKeyEnv": "TEAM_KEY"},
            {"name": "local", "backend": "local", "baseUrl": "https://llm.example/v1"},
        ],
        "modelEndpoints": {"allowedUrls": ["llm.example"]},
    }
)


def operator_env(policy: RouterPolicySpec | None, tier: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(plain values, secret references by variable) of the operator's container env for the tier."""
    env = tier_env(tier_definition(tier, policy), policy.model_endpoints if policy else None)
    values = {e["name"]: e["value"] for e in env if "value" in e}
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    return values, secrets


@pytest.mark.parametrize(("policy", "tier"), [(POLICY, t.name) for t in POLICY.tiers] + [(None, "fast")])
def test_operator_and_local_mode_give_a_worker_the_same_tier(
    policy: RouterPolicySpec | None, tier: str
) -> None:
    values, secrets = operator_env(policy, tier)
    local, _ = worker_tier_env(policy, tier, local_llm_url=None)
    assert json.loads(values[TIER_CONFIG_ENV]) == json.loads(local[TIER_CONFIG_ENV])
    assert json.loads(values[ENDPOINTS_ENV]) == json.loads(local[ENDPOINTS_ENV])
    # The variable the operator fills from the Secret is the one the worker reads its key from.
    config = json.loads(values[TIER_CONFIG_ENV])
    for variable in secrets:
        assert config["apiKeyEnv"] == variable


def test_a_secret_key_for_a_backend_without_a_usual_variable_reaches_the_worker_in_both_modes() -> None:
    """Ollama behind an authenticating proxy: local mode used to name no variable, so the key was lost."""
    _, secrets = operator_env(POLICY, "own")
    assert list(secrets) == ["LOOM_API_KEY"]
    local, tdef = worker_tier_env(POLICY, "own", local_llm_url=None)
    assert tdef.key_env == "LOOM_API_KEY"
    worker_side = TierDefinition.model_validate_json(local[TIER_CONFIG_ENV])
    assert resolve_api_key(worker_side, {"LOOM_API_KEY": "sk-proxy"}) == "sk-proxy"


def test_an_undefined_tier_is_refused_by_both() -> None:
    with pytest.raises(KeyError):
        worker_tier_env(POLICY, "gold", local_llm_url=None)
    with pytest.raises(RenderError, match="tier 'gold' is not defined"):
        tier_definition("gold", POLICY)
