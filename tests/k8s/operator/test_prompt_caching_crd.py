"""The tier's ``promptCaching`` switch on the real API server: the CRD's CEL rule admits it on the
anthropic backend only (other backends cannot turn their servers' prefix caching off)."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from tests.k8s.operator.conftest import Loom

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("loom_crds")]


def test_prompt_caching_defaults_on_and_anthropic_may_turn_it_off(loom: Loom) -> None:
    tiers = [
        {"name": "frontier", "backend": "anthropic", "model": "claude-x", "promptCaching": False},
        {"name": "standard", "backend": "openai", "model": "gpt-x"},
        {"name": "local"},
    ]
    created = loom.create("RouterPolicy", "default", {"tiers": tiers})
    got = {t["name"]: t["promptCaching"] for t in created["spec"]["tiers"]}
    assert got == {"frontier": False, "standard": True, "local": True}


@pytest.mark.parametrize(
    "tier", [{"backend": "openai", "model": "gpt-x"}, {"backend": "ollama", "model": "m"}, {}]
)
def test_prompt_caching_off_elsewhere_is_rejected(loom: Loom, tier: dict[str, str]) -> None:
    with pytest.raises(ApiException) as info:
        loom.create("RouterPolicy", "default", {"tiers": [{"name": "t", "promptCaching": False, **tier}]})
    assert info.value.status == 422
    assert (
        "promptCaching: false applies to the anthropic backend only" in json.loads(info.value.body)["message"]
    )
