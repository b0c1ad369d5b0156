"""Each provider against a fake server speaking its wire format."""

from __future__ import annotations

import json

import pytest
from tests.fakes.llm_server import FakeLLMServer, Reply

from loom.llm.anthropic_provider import AnthropicProvider
from loom.llm.base import ChatRequest, Message, Provider, ToolCall, ToolSpec
from loom.llm.errors import (
    AuthenticationFailed,
    BadRequest,
    ContextTooLong,
    InvalidModelOutput,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from loom.llm.http import parse_retry_after
from loom.llm.ollama_provider import OllamaProvider
from loom.llm.openai_provider import OpenAIProvider

SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
BREAKPOINT = {"type": "ephemeral"}
TOOL = ToolSpec("lookup", "Look a record up", {"type": "object", "properties": {"id": {"type": "string"}}})


def make(fake: FakeLLMServer, timeout: float = 5.0) -> Provider:
    if fake.kind == "anthropic":
        return AnthropicProvider("claude-x", api_key="sk-ant-secret", base_url=fake.url, timeout=timeout)
    if fake.kind == "ollama":
        return OllamaProvider("llama-x", base_url=fake.url, timeout=timeout)
    return OpenAIProvider("gpt-x", base_url=fake.url, api_key="sk-secret", timeout=timeout)


async def test_text_answer_usage_and_model(any_fake: FakeLLMServer) -> None:
    provider = make(any_fake)
    any_fake.push(Reply(text="hello", prompt_tokens=12, completion_tokens=4, model="served-model"))
    response = await provider.complete(
        ChatRequest(messages=[Message(role="user", content="hi")], system="be brief", max_tokens=33)
    )
    assert response.text == "hello"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (12, 4)
    assert response.model == "served-model"
    body = any_fake.requests[0]
    if any_fake.kind == "anthropic":
        assert body["system"] == [{"type": "text", "text": "be brief", "cache_control": BREAKPOINT}]
        assert body["max_tokens"] == 33
        assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    else:
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        assert body["stream"] is False
    await provider.close()


async def test_structured_output_is_requested_natively(any_fake: FakeLLMServer) -> None:
    provider = make(any_fake)
    any_fake.push(Reply(json={"n": 4}))
    response = await provider.complete(
        ChatRequest(messages=[Message(role="user", content="x")], response_schema=SCHEMA)
    )
    assert json.loads(response.text) == {"n": 4}
    body = any_fake.requests[0]
    if any_fake.kind == "anthropic":
        assert body["tool_choice"] == {"type": "tool", "name": "respond"}
        assert body["tools"][0]["input_schema"] == SCHEMA
    elif any_fake.kind == "ollama":
        assert body["format"] == SCHEMA
    else:
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    await provider.close()


async def test_llama_cpp_json_object_mode(openai_fake: FakeLLMServer) -> None:
    provider = OpenAIProvider("local", base_url=openai_fake.url, structured="json_object", backend="local")
    await provider.complete(ChatRequest(messages=[Message(role="user", content="x")], response_schema=SCHEMA))
    assert openai_fake.requests[0]["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert "authorization" not in openai_fake.headers[0]
    await provider.close()


async def test_tool_call_round_trip_in_native_format(any_fake: FakeLLMServer) -> None:
    provider = make(any_fake)
    any_fake.push(Reply(tool_calls=[("lookup", {"id": "r1"})]), Reply(json={"n": 1}))
    first = await provider.complete(
        ChatRequest(messages=[Message(role="user", content="find r1")], tools=[TOOL], response_schema=SCHEMA)
    )
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("lookup", {"id": "r1"})]
    call = first.tool_calls[0]
    history = [
        Message(role="user", content="find r1"),
        Message(role="assistant", content=first.text, tool_calls=first.tool_calls),
        Message(role="tool", content='{"title": "R one"}', tool_call_id=call.id, name="lookup"),
    ]
    final = await provider.complete(ChatRequest(messages=history, tools=[TOOL], response_schema=SCHEMA))
    assert json.loads(final.text) == {"n": 1}
    sent = any_fake.requests[1]
    if any_fake.kind == "anthropic":
        assert sent["tool_choice"] == {"type": "any"}
        assert sent["messages"][1]["content"] == [
            {"type": "tool_use", "id": call.id, "name": "lookup", "input": {"id": "r1"}}
        ]
        assert sent["messages"][2]["content"][0] == {
            "type": "tool_result",
            "tool_use_id": call.id,
            "content": '{"title": "R one"}',
        }
    elif any_fake.kind == "ollama":
        assert sent["tools"][0]["function"]["name"] == "lookup"
        assert "format" not in sent  # a forced format would rule out tool calls
        assert sent["messages"][1]["tool_calls"] == [
            {"function": {"name": "lookup", "arguments": {"id": "r1"}}}
        ]
        assert sent["messages"][2] == {"role": "tool", "content": '{"title": "R one"}', "tool_name": "lookup"}
    else:
        assert sent["tools"][0] == {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a record up",
                "parameters": TOOL.input_schema,
            },
        }
        assert sent["messages"][1]["tool_calls"][0]["function"] == {
            "name": "lookup",
            "arguments": '{"id": "r1"}',
        }
        assert sent["messages"][2] == {
            "role": "tool",
            "tool_call_id": call.id,
            "content": '{"title": "R one"}',
        }
    await provider.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(status=429, headers={"retry-after": "3"}), RateLimited),
        (Reply(status=500), Unavailable),
        (Reply(status=529, error="Overloaded"), Unavailable),
        (Reply(status=503), Unavailable),
        (Reply(status=401, error="invalid x-api-key"), AuthenticationFailed),
        (Reply(status=400, error="prompt is too long: 300000 tokens > 200000 maximum"), ContextTooLong),
        (Reply(status=400, error="max_tokens: must be positive"), BadRequest),
        (Reply(status=404, error="model not found"), BadRequest),
        (Reply(status=200, body="<html>gateway</html>"), Unavailable),
    ],
)
async def test_errors_are_typed(any_fake: FakeLLMServer, reply: Reply, error: type[Exception]) -> None:
    provider = make(any_fake)
    any_fake.push(reply)
    with pytest.raises(error) as info:
        await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == 3
    await provider.close()


async def test_client_side_timeout_is_typed(any_fake: FakeLLMServer) -> None:
    provider = make(any_fake, timeout=0.2)
    any_fake.push(Reply(json={}, delay=3))
    with pytest.raises(ProviderTimeout):
        await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    await provider.close()


async def test_unreachable_server_is_unavailable() -> None:
    provider = OpenAIProvider("m", base_url="http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(Unavailable):
        await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    await provider.close()


async def test_a_redirect_is_not_followed(openai_fake: FakeLLMServer, ollama_fake: FakeLLMServer) -> None:
    """A redirect elsewhere would send the request (and its key) past the endpoint allow-list."""
    elsewhere = {"location": f"{ollama_fake.root_url}/api/chat"}
    openai_fake.push(Reply(status=307, headers=elsewhere, body=""))
    provider = make(openai_fake)
    with pytest.raises(BadRequest, match="HTTP 307"):
        await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    assert len(openai_fake.requests) == 1
    assert ollama_fake.requests == []
    await provider.close()


async def test_a_proxy_from_the_environment_is_used(
    openai_fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` carries the call (read once, when the client opens): the fake stands in for
    the proxy, so a host that resolves nowhere is still answered."""
    monkeypatch.setenv("HTTP_PROXY", openai_fake.root_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    provider = OpenAIProvider("m", base_url="http://model.invalid/v1", timeout=5)
    for _ in range(2):
        response = await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
        assert response.text
    assert len(openai_fake.requests) == 2
    await provider.close()


async def test_broken_tool_arguments_are_invalid_model_output(openai_fake: FakeLLMServer) -> None:
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{x"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    openai_fake.push(Reply(body=json.dumps(body)))
    provider = OpenAIProvider("m", base_url=openai_fake.url)
    with pytest.raises(InvalidModelOutput):
        await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    await provider.close()


async def test_api_keys_are_sent_but_never_in_repr(
    openai_fake: FakeLLMServer, anthropic_fake: FakeLLMServer
) -> None:
    openai = make(openai_fake)
    anthropic = make(anthropic_fake)
    await openai.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    await anthropic.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    assert openai_fake.headers[0]["authorization"] == "Bearer sk-secret"
    sent = anthropic_fake.headers[0]
    assert "sk-ant-secret" in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))
    assert "sk-" not in repr(openai) and "sk-" not in repr(anthropic)
    assert "redacted" in repr(openai)
    await openai.close()
    await anthropic.close()


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "4"}) == 4.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_anthropic_merges_consecutive_turns() -> None:
    from loom.llm.anthropic_provider import to_anthropic_messages

    msgs = [
        Message(role="user", content="q"),
        Message(role="assistant", tool_calls=(ToolCall("a", "t", {}), ToolCall("b", "t", {}))),
        Message(role="tool", content="1", tool_call_id="a"),
        Message(role="tool", content="boom", tool_call_id="b", is_error=True),
    ]
    out = to_anthropic_messages(msgs)
    assert [m["role"] for m in out] == ["user", "assistant", "user"]
    assert [b["tool_use_id"] for b in out[2]["content"]] == ["a", "b"]
    assert out[2]["content"][1]["is_error"] is True


async def test_temperature_reaches_the_wire_only_when_set(any_fake: FakeLLMServer) -> None:
    """The Anthropic SDK no longer takes ``temperature`` as a keyword; it still goes on the wire."""
    provider = make(any_fake)
    any_fake.push(Reply(text="a"), Reply(text="b"))
    await provider.complete(ChatRequest(messages=[Message(role="user", content="x")], temperature=0.2))
    await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    sent = any_fake.requests
    if any_fake.kind == "ollama":
        assert sent[0]["options"]["temperature"] == 0.2
        assert "temperature" not in sent[1].get("options", {})
    else:
        assert sent[0]["temperature"] == 0.2
        assert "temperature" not in sent[1]
    await provider.close()
