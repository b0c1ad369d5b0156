"""Fixtures for LLM unit tests: fake provider servers on loopback and a virtual-time sleep."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.virtual_time import VirtualSleep


@pytest.fixture
def vsleep() -> VirtualSleep:
    return VirtualSleep()


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("openai") as server:
        yield server


@pytest.fixture
async def anthropic_fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("anthropic") as server:
        yield server


@pytest.fixture
async def ollama_fake() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer("ollama") as server:
        yield server


@pytest.fixture(params=["openai", "anthropic", "ollama"])
async def any_fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(request.param) as server:
        yield server
