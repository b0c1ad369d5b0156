"""The provider-neutral chat interface every model backend implements.

A conversation is a list of :class:`Message` in one neutral shape; each provider
translates it into its own wire format (Anthropic content blocks, OpenAI
``tool_calls``, Ollama ``tool_name``) and back, so the engine's tool loop and
output retries never see a provider's dialect.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from loom.messages import TokenUsage

Role = Literal["user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: name, description and a JSON Schema of its arguments."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Message:
    """One turn: user text, assistant text and/or tool calls, or one tool result."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False


@dataclass(frozen=True)
class ChatRequest:
    """What the engine asks of a model."""

    messages: list[Message]
    system: str = ""
    tools: list[ToolSpec] = field(default_factory=list)
    response_schema: dict[str, Any] | None = None
    max_tokens: int = 1024
    temperature: float | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens one call consumed, cached input apart from fresh input.

    ``prompt_tokens`` are the input tokens processed at the full rate; the prompt cache's
    share is counted only in ``cache_read_tokens`` (read from the cache, billed at a fraction)
    and ``cache_write_tokens`` (written to it, billed at a premium by Anthropic), never twice.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        """Every input token the model read: fresh, read from the cache and written to it."""
        return self.prompt_tokens + self.cache_read_tokens + self.cache_write_tokens


def token_usage(usage: Usage) -> TokenUsage:
    """One call's usage as results report it, the cached share kept apart."""
    return TokenUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )


@dataclass(frozen=True)
class ChatResponse:
    """What a model answered: final text and/or tool calls, usage, model and why it stopped."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    stop_reason: str | None = None
    #: The tier that answered when it was a fallback tier (see :mod:`loom.llm.fallback`).
    tier: str | None = None


class Provider(ABC):
    """One model endpoint. Implementations raise :mod:`loom.llm.errors` types only."""

    backend: str = "provider"

    def __init__(self, model: str):
        self.model = model

    @abstractmethod
    async def complete(self, request: ChatRequest) -> ChatResponse:
        """One model call, no retries (the resilience layer retries)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
