"""Build a provider for a tier definition: backend, model, base URL and API key.

API keys come only from the environment variable the tier names (default
``ANTHROPIC_API_KEY`` / ``OPENAI_API_KEY``) or from the file in ``LOOM_API_KEY_FILE``
(a mounted Secret). They are handed to the client and never logged: provider
reprs redact them and errors name only where a key was looked for.

Every provider is built only for an allowed endpoint (:mod:`loom.llm.endpoints`,
rules from ``LOOM_MODEL_ENDPOINTS`` / ``LOOM_LOCAL_MODE``) and checks it again,
resolving the host, before each call (:class:`loom.llm.guarded.GuardedProvider`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path

from loom.api.router_policy import DEFAULT_KEY_ENV, TierDefinition
from loom.clock import Clock
from loom.llm.base import Provider
from loom.llm.endpoints import EndpointRefused, EndpointRules, check_url, rules_from_env
from loom.llm.guarded import GuardedProvider
from loom.llm.http import DEFAULT_MAX_CONNECTIONS
from loom.llm.resilience import ResilientProvider, RetryPolicy, Sleep

#: Where ``loom`` expects the local llama.cpp server (see :mod:`loom.llm.local_server`).
DEFAULT_LOCAL_URL = "http://127.0.0.1:8911/v1"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
KEY_FILE_ENV = "LOOM_API_KEY_FILE"


class ProviderConfigError(ValueError):
    """A tier cannot be turned into a working provider (no model, no key, unknown backend)."""


def resolve_api_key(tier: TierDefinition, env: Mapping[str, str] | None = None) -> str | None:
    """The tier's API key from its environment variable, else from ``LOOM_API_KEY_FILE``."""
    e = os.environ if env is None else env
    name = tier.key_env
    if name and e.get(name):
        return e[name].strip()
    path = e.get(KEY_FILE_ENV)
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ProviderConfigError(f"{KEY_FILE_ENV} points to an unreadable file: {exc.strerror}") from exc
    return None


def base_url_for(tier: TierDefinition, env: Mapping[str, str] | None = None) -> str | None:
    """The tier's base URL, or the backend's default."""
    e = os.environ if env is None else env
    if tier.base_url:
        return tier.base_url
    if tier.backend == "local":
        return e.get("LOOM_LOCAL_LLM_URL") or DEFAULT_LOCAL_URL
    if tier.backend == "ollama":
        host = e.get("OLLAMA_HOST")
        return (host if host.startswith("http") else f"http://{host}") if host else DEFAULT_OLLAMA_URL
    if tier.backend == "openai":
        return DEFAULT_OPENAI_URL
    if tier.backend == "anthropic":
        return DEFAULT_ANTHROPIC_URL
    return None


def build_provider(
    tier: TierDefinition,
    env: Mapping[str, str] | None = None,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    rules: EndpointRules | None = None,
) -> Provider:
    """The provider (no retries) for a tier, refusing an endpoint outside the allow-list.

    ``rules`` default to the process's (``LOOM_MODEL_ENDPOINTS`` and ``LOOM_LOCAL_MODE``).
    """
    url, allowed = check_tier_endpoint(tier, env, rules)
    where = f"tier {tier.name!r} ({tier.backend})"
    return GuardedProvider(_raw_provider(tier, env, url, where, max_connections), url, allowed)


def check_tier_endpoint(
    tier: TierDefinition, env: Mapping[str, str] | None = None, rules: EndpointRules | None = None
) -> tuple[str, EndpointRules]:
    """The tier's URL and the rules it passed (without DNS); ProviderConfigError when refused."""
    e = os.environ if env is None else env
    url = base_url_for(tier, e)
    where = f"tier {tier.name!r} ({tier.backend})"
    if url is None:
        raise ProviderConfigError(f"{where}: no base URL")
    try:
        allowed = rules if rules is not None else rules_from_env(e)
        check_url(url, allowed)
    except EndpointRefused as exc:
        raise ProviderConfigError(f"{where}: {exc}") from None
    return url, allowed


def _raw_provider(
    tier: TierDefinition, env: Mapping[str, str] | None, url: str, where: str, max_connections: int
) -> Provider:
    if tier.backend == "local":
        from loom.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(
            tier.model or "local",
            base_url=url,
            api_key=resolve_api_key(tier, env) if tier.api_key_env else None,
            timeout=tier.timeout_seconds,
            structured="json_object",
            max_connections=max_connections,
            backend="local",
        )
    if not tier.model:
        raise ProviderConfigError(f"{where} needs a model name (tiers[].model)")
    if tier.backend == "ollama":
        from loom.llm.ollama_provider import OllamaProvider

        return OllamaProvider(
            tier.model,
            base_url=url,
            timeout=tier.timeout_seconds,
            max_connections=max_connections,
        )
    key = resolve_api_key(tier, env)
    key_hint = f"set {tier.api_key_env or DEFAULT_KEY_ENV[tier.backend]} or {KEY_FILE_ENV}"
    if tier.backend == "openai":
        from loom.llm.openai_provider import OpenAIProvider

        if key is None and url == DEFAULT_OPENAI_URL:
            raise ProviderConfigError(f"{where} needs an API key: {key_hint}")
        return OpenAIProvider(
            tier.model,
            base_url=url,
            api_key=key,
            timeout=tier.timeout_seconds,
            structured="json_schema",
            max_connections=max_connections,
        )
    if tier.backend == "anthropic":
        from loom.llm.anthropic_provider import AnthropicProvider

        if key is None:
            raise ProviderConfigError(f"{where} needs an API key: {key_hint}")
        return AnthropicProvider(
            tier.model,
            api_key=key,
            base_url=url,
            timeout=tier.timeout_seconds,
            prompt_caching=tier.prompt_caching,
        )
    raise ProviderConfigError(f"{where}: unknown backend")


def build_model_client(
    tier: TierDefinition,
    env: Mapping[str, str] | None = None,
    *,
    sleep: Sleep | None = None,
    clock: Clock | None = None,
    policy: RetryPolicy | None = None,
    rules: EndpointRules | None = None,
) -> ResilientProvider:
    """The tier's provider with per-call timeout, retries (``tier.max_retries``), breaker and metrics."""
    return ResilientProvider(
        build_provider(tier, env, rules=rules),
        tier=tier.name,
        call_timeout=tier.timeout_seconds,
        policy=policy or RetryPolicy(max_retries=tier.max_retries),
        sleep=sleep or asyncio.sleep,
        clock=clock or time.monotonic,
    )
