"""Ollama's native ``/api/chat`` (``format`` = the output schema; tools in Ollama's function format).

Ollama keeps the processed prompt of the previous request and reuses its longest common
prefix; the system prompt comes first and is the same on every task of a worker, so only the
payload is processed again. Versions that report ``prompt_eval_cached_count`` count the cached
share inside ``prompt_eval_count``; it is moved out of the fresh count (older versions report
no split, and their count is taken as it is).
"""

from __future__ import annotations

from typing import Any

from loom.llm.base import ChatRequest, ChatResponse, Message, Provider, ToolCall, Usage
from loom.llm.errors import InvalidModelOutput, Unavailable
from loom.llm.http import DEFAULT_MAX_CONNECTIONS, HttpPool, post_json
from loom.llm.openai_provider import function_tools


def to_ollama_messages(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral messages in Ollama's chat format (tool results carry ``tool_name``)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "content": m.content, "tool_name": m.name or ""})
        elif m.role == "assistant" and m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": m.content,
                    "tool_calls": [
                        {"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def parse_ollama_usage(data: dict[str, Any]) -> Usage:
    """Usage of an ``/api/chat`` answer, the cached share (when reported) apart from the fresh one."""
    prompt = int(data.get("prompt_eval_count") or 0)
    cached = min(max(int(data.get("prompt_eval_cached_count") or 0), 0), prompt)
    return Usage(
        prompt_tokens=prompt - cached,
        completion_tokens=int(data.get("eval_count") or 0),
        cache_read_tokens=cached,
    )


def parse_ollama_response(data: dict[str, Any], default_model: str) -> ChatResponse:
    """An ``/api/chat`` answer as a neutral response (tool call ids are made up: Ollama has none)."""
    message = data.get("message")
    if not isinstance(message, dict):
        raise Unavailable("chat answer without message")
    calls: list[ToolCall] = []
    for i, raw in enumerate(message.get("tool_calls") or []):
        fn = raw.get("function") or {}
        args = fn.get("arguments") or {}
        if not isinstance(args, dict):
            raise InvalidModelOutput(f"tool call {fn.get('name')!r} arguments are not an object")
        calls.append(
            ToolCall(id=str(raw.get("id") or f"call_{i}"), name=str(fn.get("name", "")), arguments=args)
        )
    return ChatResponse(
        text=message.get("content") or "",
        tool_calls=tuple(calls),
        usage=parse_ollama_usage(data),
        model=str(data.get("model") or default_model),
        stop_reason=data.get("done_reason"),
    )


class OllamaProvider(Provider):
    """Ollama over a pooled async HTTP client (aiohttp)."""

    backend = "ollama"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "http://127.0.0.1:11434",
        timeout: float = 60.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        super().__init__(model)
        self.base_url = base_url
        self._client = HttpPool(base_url, timeout=timeout, max_connections=max_connections)

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for one request."""
        options: dict[str, Any] = {"num_predict": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_ollama_messages(request.system, request.messages),
            "stream": False,
            "options": options,
        }
        if request.tools:
            body["tools"] = function_tools(request.tools)
        elif request.response_schema is not None:
            body["format"] = request.response_schema
        return body

    async def complete(self, request: ChatRequest) -> ChatResponse:
        data = await post_json(self._client, "api/chat", self.build_body(request))
        return parse_ollama_response(data, self.model)

    async def close(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"OllamaProvider(model={self.model!r}, base_url={self.base_url!r})"
