"""Anthropic's Messages API through the official SDK, with tool-forced structured output.

The SDK's own retries are off (``max_retries=0``): the resilience layer retries,
so backoff, Retry-After, the circuit breaker and metrics behave the same for
every backend. A response schema becomes a ``respond`` tool the model is forced
to call; its arguments are the answer.

Prompt caching: Anthropic reads a request as tools, then system, then messages, and
caches the prefix up to a block marked with ``cache_control``. A worker's tools and
system prompt (its prompt, knowledge and few-shot examples) are the same on every
task and come before the task's payload, so the last tool and the system block carry
the two breakpoints (of the four allowed); the payload after them is never cached.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic

from loom.llm.base import ChatRequest, ChatResponse, Message, Provider, ToolCall, Usage
from loom.llm.errors import ProviderError, ProviderTimeout, Unavailable
from loom.llm.http import error_for_status

RESPOND_TOOL = "respond"
#: The breakpoint marking where the stable prefix ends (five-minute cache, refreshed on each hit).
CACHE_BREAKPOINT: dict[str, str] = {"type": "ephemeral"}


def to_anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages as Anthropic content blocks; tool results ride in user turns, and
    consecutive turns of one role merge (the API wants them alternating)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        blocks: list[dict[str, Any]]
        if m.role == "tool":
            role = "user"
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id,
                    "content": m.content,
                    **({"is_error": True} if m.is_error else {}),
                }
            ]
        else:
            role = m.role
            blocks = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls
            ]
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def forced_output_tools(request: ChatRequest) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Tools and tool_choice for a request: the caller's tools, plus ``respond`` when an object
    schema is wanted (forced when it is the only tool, otherwise "any tool")."""
    tools = [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in request.tools
    ]
    schema = request.response_schema
    if schema is None or schema.get("type") != "object":
        return tools, None
    tools.append({"name": RESPOND_TOOL, "description": "Give the final answer.", "input_schema": schema})
    choice = {"type": "tool", "name": RESPOND_TOOL} if len(tools) == 1 else {"type": "any"}
    return tools, choice


def parse_anthropic_message(message: Any) -> ChatResponse:
    """An SDK ``Message`` as a neutral response; a ``respond`` call becomes the final text."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    answer: str | None = None
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            if block.name == RESPOND_TOOL:
                answer = json.dumps(block.input)
            else:
                calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(block.input or {})))
    return ChatResponse(
        text="".join(texts) if answer is None else answer,
        tool_calls=tuple(calls) if answer is None else (),
        usage=parse_anthropic_usage(message.usage),
        model=message.model,
        stop_reason=message.stop_reason,
    )


def parse_anthropic_usage(usage: Any) -> Usage:
    """The SDK's usage as neutral usage: ``input_tokens`` already excludes the cached share."""
    return Usage(
        prompt_tokens=int(usage.input_tokens or 0),
        completion_tokens=int(usage.output_tokens or 0),
        cache_read_tokens=int(getattr(usage, "cache_read_input_tokens", None) or 0),
        cache_write_tokens=int(getattr(usage, "cache_creation_input_tokens", None) or 0),
    )


def mark_stable_prefix(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``messages.create`` arguments with cache breakpoints where the stable prefix ends: on the
    last tool (tools come first in Anthropic's prefix) and on the system prompt's last block.
    The messages (the task's payload and its tool rounds) get none."""
    out = dict(kwargs)
    if out.get("tools"):
        tools = [dict(t) for t in out["tools"]]
        tools[-1]["cache_control"] = dict(CACHE_BREAKPOINT)
        out["tools"] = tools
    system = out.get("system")
    if isinstance(system, str) and system:
        out["system"] = [{"type": "text", "text": system, "cache_control": dict(CACHE_BREAKPOINT)}]
    return out


def map_sdk_error(exc: anthropic.AnthropicError) -> ProviderError:
    """The typed error for an SDK exception."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderTimeout(f"Anthropic API timeout: {exc}")
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body)
        return error_for_status(exc.status_code, exc.response.headers, body or "")
    if isinstance(exc, anthropic.APIConnectionError):
        return Unavailable(f"Anthropic API unreachable: {exc}")
    return Unavailable(f"Anthropic API error: {type(exc).__name__}")


class AnthropicProvider(Provider):
    """Claude models via ``AsyncAnthropic`` (pooled connections, SDK retries off)."""

    backend = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 60.0,
        prompt_caching: bool = True,
    ):
        super().__init__(model)
        self.base_url = base_url
        self.prompt_caching = prompt_caching
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
        )

    def build_kwargs(self, request: ChatRequest) -> dict[str, Any]:
        """Keyword arguments for ``messages.create``."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": to_anthropic_messages(request.messages),
        }
        if request.system:
            kwargs["system"] = request.system
        if request.temperature is not None:
            # SDK 1.x dropped the keyword (newer models reject sampling settings); the API still
            # takes the field from models that support it, so it goes in the body only when set.
            kwargs["extra_body"] = {"temperature": request.temperature}
        tools, choice = forced_output_tools(request)
        if tools:
            kwargs["tools"] = tools
        if choice:
            kwargs["tool_choice"] = choice
        return mark_stable_prefix(kwargs) if self.prompt_caching else kwargs

    async def complete(self, request: ChatRequest) -> ChatResponse:
        try:
            message = await self._client.messages.create(**self.build_kwargs(request))
        except anthropic.AnthropicError as exc:
            raise map_sdk_error(exc) from exc
        if not hasattr(message, "content"):
            raise Unavailable(f"unreadable Messages API answer ({type(message).__name__})")
        return parse_anthropic_message(message)

    async def close(self) -> None:
        await self._client.close()

    def __repr__(self) -> str:
        return f"AnthropicProvider(model={self.model!r}, base_url={self.base_url!r}, api_key=<redacted>)"
