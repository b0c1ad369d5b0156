"""A provider that checks its endpoint against the allow-list before every call.

The host is resolved and every address checked right before the request, so a
name that later resolves somewhere refused (DNS rebinding, a changed record) is
caught at the next call; nothing, not even the API key in a header, is sent to a
refused endpoint. An address literal (``http://127.0.0.1:8911``, ``http://[::1]``)
resolves to nothing else ever, and the rules do not change in a process, so its
verdict is reached once, when the provider is built, and repeated on every call.
"""

from __future__ import annotations

from loom.llm.base import ChatRequest, ChatResponse, Provider
from loom.llm.endpoints import EndpointRefused, EndpointRules, address_literal, check_endpoint, url_problem
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
        #: For an address literal: the fixed verdict ("" when allowed); None: check before each call.
        self._verdict: str | None = None
        if address_literal(url):
            problem = url_problem(url, rules)
            self._verdict = f"model endpoint refused: {problem}" if problem else ""

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if self._verdict is None:
            await require_endpoint(self.url, self.rules)
        elif self._verdict:
            raise EndpointNotAllowed(self._verdict)
        return await self.inner.complete(request)

    async def close(self) -> None:
        await self.inner.close()

    def __repr__(self) -> str:
        return f"GuardedProvider({self.inner!r})"
