from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.llm.factory import DEFAULT_LOCAL_URL, ProviderConfigError, build_model_client, build_provider
from loom.llm.guarded import GuardedProvider
from loom.llm.openai_provider import OpenAIProvider

#: Local mode with the embedded model server's default URL listed, as ``loom up`` runs workers.
LOCAL = loopback_allowed(DEFAULT_LOCAL_URL)


def test_local_backend_defaults_and_env_url() -> None:
    provider = build_provider(TierDefinition(name="local"), env=LOCAL)
    assert isinstance(provider, GuardedProvider) and isinstance(provider.inner, OpenAIProvider)
    assert (provider.backend, provider.inner.base_url, provider.inner.structured) == (
        "local",
        DEFAULT_LOCAL_URL,
        "json_object",
    )
    env = {"LOOM_LOCAL_LLM_URL": "http://127.0.0.1:1/v1"} | loopback_allowed("http://127.0.0.1:1")
    other = build_provider(TierDefinition(name="local"), env=env)
    assert other.inner.base_url == "http://127.0.0.1:1/v1"  # type: ignore[attr-defined]


def test_loopback_model_servers_are_refused_outside_local_mode() -> None:
    """The embedded server's URL is loopback: outside local mode no listing makes it callable."""
    with pytest.raises(ProviderConfigError, match=r"127\.0\.0\.1:8911 is not in modelEndpoints\.allowedUrls"):
        build_provider(TierDefinition(name="local"), env={})
    listed_only = {"LOOM_MODEL_ENDPOINTS": LOCAL["LOOM_MODEL_ENDPOINTS"]}
    with pytest.raises(ProviderConfigError, match="loopback, allowed only in local mode"):
        build_provider(TierDefinition(name="local"), env=listed_only)


def test_keys_from_named_env_or_file(tmp_path: Path) -> None:
    tier = TierDefinition(name="frontier", backend="anthropic", model="claude", api_key_env="MY_KEY")
    client = build_model_client(tier, env={"MY_KEY": "sk-from-env"})
    assert client.inner.backend == "anthropic"
    assert "sk-from-env" not in repr(client)
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    assert build_provider(tier, env={"LOOM_API_KEY_FILE": str(key_file)}) is not None


def test_missing_key_and_model_are_clear_errors() -> None:
    with pytest.raises(
        ProviderConfigError, match="needs an API key: set ANTHROPIC_API_KEY or LOOM_API_KEY_FILE"
    ):
        build_provider(TierDefinition(name="s", backend="anthropic", model="claude"), env={})
    with pytest.raises(ProviderConfigError, match="needs an API key: set OPENAI_API_KEY"):
        build_provider(TierDefinition(name="s", backend="openai", model="gpt"), env={})
    with pytest.raises(ProviderConfigError, match="needs a model name"):
        build_provider(TierDefinition(name="s", backend="ollama"), env=loopback_allowed("http://127.0.0.1:11434"))
    with pytest.raises(ProviderConfigError, match="unreadable file"):
        build_provider(
            TierDefinition(name="s", backend="anthropic", model="c"),
            env={"LOOM_API_KEY_FILE": "/nonexistent/key"},
        )


def test_openai_compatible_server_without_key() -> None:
    tier = TierDefinition(name="s", backend="openai", model="qwen", base_url="http://127.0.0.1:8000/v1")
    provider = build_provider(tier, env=loopback_allowed("http://127.0.0.1:8000"))
    assert provider.inner.base_url == "http://127.0.0.1:8000/v1"  # type: ignore[attr-defined]


def test_retries_come_from_the_tier() -> None:
    client = build_model_client(TierDefinition(name="local", max_retries=7, timeout_seconds=12), env=LOCAL)
    assert client.policy.max_retries == 7 and client.call_timeout == 12
