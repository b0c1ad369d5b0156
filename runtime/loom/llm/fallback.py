"""Provider fallback: a tier's provider, then its fallback tiers' providers, in order.

A fallback is tried only when the provider before it is unavailable after its own retries (the
resilience layer's: 5xx, 529, connection failures, 429, per-call timeouts) or its circuit is open,
which fails at once. A bad request, an authentication failure, a prompt over the context window and
an unusable answer are not the provider's absence: they are raised as they are, since another model
would be asked the same thing. The answer carries the tier that gave it, for the result's
``model_tier`` (limits, budgets and cost are charged to it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

from pydantic import TypeAdapter, ValidationError

from loom.api.router_policy import FALLBACK_TIERS_ENV, TierDefinition
from loom.llm.base import ChatRequest, ChatResponse, Provider
from loom.llm.errors import InvalidModelOutput, ProviderError, ProviderTimeout, RateLimited, Unavailable
from loom.llm.metrics import FALLBACK_EXHAUSTED, FALLBACKS
from loom.llm.resilience import ResilientProvider


def falls_back(error: ProviderError) -> bool:
    """Whether ``error`` means the provider is unavailable, so the next tier is worth asking."""
    return isinstance(error, Unavailable | RateLimited | ProviderTimeout) and not isinstance(
        error, InvalidModelOutput
    )


class FallbackProvider(Provider):
    """Calls ``chain[0]`` and, while each is unavailable, the next: ``(tier name, provider)`` pairs."""

    def __init__(self, chain: list[tuple[str, ResilientProvider]]):
        if len(chain) < 2:
            raise ValueError("a fallback chain needs the tier and at least one fallback tier")
        super().__init__(chain[0][1].model)
        self.chain = chain
        self.backend = chain[0][1].backend

    async def complete(self, request: ChatRequest, deadline: float | None = None) -> ChatResponse:
        """The first answer along the chain; the last provider's error when none answers."""
        for tier, provider in self.chain[:-1]:
            try:
                return self._answered(tier, provider, await provider.complete(request, deadline=deadline))
            except ProviderError as exc:
                if not falls_back(exc):
                    raise
        tier, provider = self.chain[-1]
        try:
            response = await provider.complete(request, deadline=deadline)
        except ProviderError as exc:
            if falls_back(exc):
                FALLBACK_EXHAUSTED.labels(self.chain[0][0]).inc()
            raise
        return self._answered(tier, provider, response)

    def _answered(self, tier: str, provider: Provider, response: ChatResponse) -> ChatResponse:
        if tier == self.chain[0][0]:
            return response
        FALLBACKS.labels(self.chain[0][0], tier).inc()
        return replace(response, model=response.model or provider.model, tier=tier)

    async def close(self) -> None:
        for _, provider in self.chain:
            await provider.close()

    def __repr__(self) -> str:
        return f"FallbackProvider({', '.join(t for t, _ in self.chain)})"


def load_fallback_tiers(tier: TierDefinition, env: Mapping[str, str]) -> list[TierDefinition]:
    """The definitions of ``tier.fallback`` from ``LOOM_FALLBACK_TIERS``, in the tier's order;
    ValueError when the variable is missing, unreadable or lacks one of them."""
    if not tier.fallback:
        return []
    raw = env.get(FALLBACK_TIERS_ENV)
    where = f"tier {tier.name!r} falls back to {', '.join(tier.fallback)}"
    if not raw:
        raise ValueError(f"{where}, but {FALLBACK_TIERS_ENV} is not set")
    try:
        defs = TypeAdapter(list[TierDefinition]).validate_python(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ValueError(
            f"{where}, but {FALLBACK_TIERS_ENV} is not a list of tier definitions: {exc}"
        ) from None
    by_name = {d.name: d for d in defs}
    missing = [name for name in tier.fallback if name not in by_name]
    if missing:
        raise ValueError(f"{where}, but {FALLBACK_TIERS_ENV} does not define {', '.join(missing)}")
    return [by_name[name] for name in tier.fallback]
