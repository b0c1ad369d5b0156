"""A provider that checks its endpoint against the allow-list before every call.

The host is resolved and every address checked right before the request, so a
name that later resolves somewhere refused (DNS rebinding, a changed record) is
caught at the next call; nothing, not even the API key in a header, is sent to a
refused endpoint.
"""

from __future__ import annotations

from loom.llm.base import ChatRequest, ChatResponse, Provider
from loom.llm.endpoints import EndpointRefused, EndpointRules, check_endpoint
from loom.llm.errors import EndpointNotAllowed, Unavailable


async def require_endpoint(url: str, rules: EndpointRules) -> None:
    """Check ``url`` and its host's addresses now; raise the provider error a caller handles."""
    try:
        await check_endpoint(url, rules)
    except EndpointRefused as exc:
        raise EndpointNotAllowed(str(exc)) from None
    except OSError as exc:
        raise Unavailable(f"cannot resolve the endpoint's host: {exc.strerror or exc}") from None


class GuardedProvider(Provider):
    """Wraps a provider; refuses the call (EndpointNotAllowed) when its endpoint is not allowed now."""

    def __init__(self, inner: Provider, url: str, rules: EndpointRules):
        super().__init__(inner.model)
        self.backend = inner.backend
        self.inner = inner
        self.url = url
        self.rules = rules

    async def complete(self, request: ChatRequest) -> ChatResponse:
        await require_endpoint(self.url, self.rules)
        return await self.inner.complete(request)

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"GuardedProvider({self.inner!r})"
