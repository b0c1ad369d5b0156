"""Any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, LM Studio).

These servers cache a repeated prompt prefix on their own (OpenAI from 1,024 tokens, vLLM's
and llama.cpp's prefix caches), with no per-request switch. The request puts the stable
prefix first (tools, then the system prompt with knowledge and examples, the same bytes on
every task of a worker) and the task's payload after it; cached tokens come back in
``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from loom.llm.base import ChatRequest, ChatResponse, Message, Provider, ToolCall, ToolSpec, Usage
from loom.llm.errors import InvalidModelOutput, Unavailable
from loom.llm.http import DEFAULT_MAX_CONNECTIONS, HttpPool, post_json

#: How the response schema is sent: OpenAI's ``json_schema``, llama.cpp's ``json_object`` + ``schema``,
#: or not at all (the prompt's schema directive still applies).
StructuredMode = Literal["json_schema", "json_object", "none"]


def to_openai_messages(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages in OpenAI's chat format."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        elif m.role == "assistant" and m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": m.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                        }
                        for c in m.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def function_tools(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """Tool specs in the ``{"type": "function", ...}`` format (OpenAI's, also Ollama's)."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
        }
        for t in tools
    ]


def parse_openai_usage(usage: Any) -> Usage:
    """Chat-completions usage as neutral usage: ``prompt_tokens`` includes the cached prefix
    (``prompt_tokens_details.cached_tokens``, read from the provider's automatic prefix cache),
    so that share is moved out of the fresh count."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    cached = min(max(cached, 0), prompt)
    return Usage(
        prompt_tokens=prompt - cached,
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cache_read_tokens=cached,
    )


def parse_openai_response(data: dict[str, Any], default_model: str) -> ChatResponse:
    """A chat-completions answer as a neutral response."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise Unavailable("chat completion without choices") from exc
    calls: list[ToolCall] = []
    for raw in message.get("tool_calls") or []:
        fn = raw.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError as exc:
            raise InvalidModelOutput(f"tool call {fn.get('name')!r} has unparseable arguments") from exc
        if not isinstance(args, dict):
            raise InvalidModelOutput(f"tool call {fn.get('name')!r} arguments are not an object")
        calls.append(
            ToolCall(id=str(raw.get("id") or f"call_{len(calls)}"), name=fn.get("name", ""), arguments=args)
        )
    return ChatResponse(
        text=message.get("content") or "",
        tool_calls=tuple(calls),
        usage=parse_openai_usage(data.get("usage")),
        model=str(data.get("model") or default_model),
        stop_reason=choice.get("finish_reason"),
    )


class OpenAIProvider(Provider):
    """Chat completions over a pooled async HTTP client (aiohttp, no thread per call)."""

    backend = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        structured: StructuredMode = "json_schema",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        backend: str = "openai",
    ):
        super().__init__(model)
        self.backend = backend
        self.base_url = base_url
        self.structured = structured
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = HttpPool(base_url, timeout=timeout, headers=headers, max_connections=max_connections)

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for one request."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(request.system, request.messages),
            "max_tokens": request.max_tokens,
            "stream": False,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = function_tools(request.tools)
        schema = request.response_schema
        if schema is not None and self.structured == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": False},
            }
        elif schema is not None and self.structured == "json_object" and not request.tools:
            # A grammar forced on every token would rule out tool calls, so only without tools.
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        data = await post_json(self._client, "chat/completions", self.build_body(request))
        return parse_openai_response(data, self.model)

    async def close(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r}, api_key=<redacted>)"
