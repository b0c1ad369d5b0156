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


class GuardedProvider(Provider):
    """Wraps a provider; refuses the call (EndpointNotAllowed) when its endpoint is not allowed now."""

    def __init__(self, inner: Provider, url: str, rules: EndpointRules):
        super().__init__(inner.model)
        self.backend = inner.backend
        self.inner = inner
        self.url = url
        self.rules = rules

    async def complete(self, request: ChatRequest) -> ChatResponse:
        try:
            await check_endpoint(self.url, self.rules)
        except EndpointRefused as exc:
            raise EndpointNotAllowed(str(exc)) from None
        except OSError as exc:
            raise Unavailable(f"cannot resolve the model endpoint's host: {exc.strerror or exc}") from None
        return await self.inner.complete(request)

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"GuardedProvider({self.inner!r})"
