"""The endpoint guard before every model call: a name is resolved and checked each time; an address
literal's verdict is reached once, when the provider is built, and holds for every call."""

from __future__ import annotations

import pytest
from tests.fakes.llm_server import FakeLLMServer

from loom.llm.base import ChatRequest, Message
from loom.llm.endpoints import EndpointRules, address_literal
from loom.llm.errors import EndpointNotAllowed
from loom.llm.guarded import GuardedProvider
from loom.llm.openai_provider import OpenAIProvider

REQUEST = ChatRequest(system="s", messages=[Message("user", "hi")])


@pytest.mark.parametrize(
    ("url", "literal"),
    [
        ("http://127.0.0.1:8911/v1", True),
        ("http://[::1]:8911/v1", True),
        ("https://10.0.0.7", True),
        ("http://localhost:8911/v1", False),
        ("https://api.openai.com/v1", False),
    ],
)
def test_address_literals_are_told_from_names(url: str, literal: bool) -> None:
    assert address_literal(url) is literal


async def test_a_refused_literal_is_refused_on_each_call_with_no_request(openai_fake: FakeLLMServer) -> None:
    origin = openai_fake.root_url
    # Listed, but loopback outside local mode: refused whatever is listed.
    rules = EndpointRules.build([origin], local_mode=False)
    provider = GuardedProvider(OpenAIProvider("m", base_url=openai_fake.url), openai_fake.url, rules)
    try:
        for _ in range(2):
            with pytest.raises(EndpointNotAllowed, match="loopback, allowed only in local mode"):
                await provider.complete(REQUEST)
        assert openai_fake.requests == []
    finally:
        await provider.close()


async def test_an_allowed_literal_is_called(openai_fake: FakeLLMServer) -> None:
    rules = EndpointRules.build([openai_fake.root_url], local_mode=True)
    provider = GuardedProvider(OpenAIProvider("m", base_url=openai_fake.url), openai_fake.url, rules)
    try:
        response = await provider.complete(REQUEST)
        assert response.text == '{"ok": true}'
        assert len(openai_fake.requests) == 1
    finally:
        await provider.close()
