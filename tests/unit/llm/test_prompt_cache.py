"""Prompt caching on the wire: breakpoints where the stable prefix ends, the same prefix on every
task of a worker, and cached tokens parsed and accounted apart from fresh ones (usage, results,
metrics, the router's token count), against fake servers; the Anthropic one applies Anthropic's
caching rules."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anthropic as sdk
import pytest
from prometheus_client import REGISTRY
from tests.fakes.llm_server import FakeLLMServer, Reply
from tests.fakes.virtual_time import VirtualSleep
from tests.support.endpoints import loopback_allowed

from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.llm.anthropic_provider import AnthropicProvider
from loom.llm.base import ChatRequest, Message, ToolSpec
from loom.llm.factory import build_model_client
from loom.llm.ollama_provider import OllamaProvider
from loom.llm.openai_provider import OpenAIProvider
from loom.messages import TaskMessage, TaskResult, TaskStatus, TokenUsage
from loom.worker.llm_engine import LLMEngine

BREAKPOINT = {"type": "ephemeral"}
SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
TOOL = ToolSpec("lookup", "Look a record up", {"type": "object", "properties": {"id": {"type": "string"}}})
LONG_SYSTEM = "You label support tickets. " + " ".join(
    f"Rule {i}: be exact about case {i}." for i in range(300)
)
ENV = {"ANTHROPIC_API_KEY": "sk-ant-test", "OPENAI_API_KEY": "sk-test"}


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where a request carries cache_control: ``tools[i]``, ``system[i]``, ``messages[i][j]``."""
    found = [f"tools[{i}]" for i, t in enumerate(body.get("tools") or []) if "cache_control" in t]
    system = body.get("system")
    if isinstance(system, list):
        found += [f"system[{i}]" for i, b in enumerate(system) if "cache_control" in b]
    for i, m in enumerate(body.get("messages") or []):
        content = m.get("content")
        if isinstance(content, list):
            found += [f"messages[{i}][{j}]" for j, b in enumerate(content) if "cache_control" in b]
    return found


def anthropic(fake: FakeLLMServer, *, caching: bool = True) -> AnthropicProvider:
    return AnthropicProvider("claude-x", api_key="sk-ant", base_url=fake.url, prompt_caching=caching)


# -- the Anthropic request ---------------------------------------------------------------------------


async def test_breakpoints_on_the_last_tool_and_the_system_prompt_only(anthropic_fake: FakeLLMServer) -> None:
    provider = anthropic(anthropic_fake)
    anthropic_fake.push(Reply(tool_calls=[("lookup", {"id": "r1"})]), Reply(json={"n": 1}))
    first = await provider.complete(
        ChatRequest(
            messages=[Message(role="user", content="find r1")],
            system="be brief",
            tools=[TOOL],
            response_schema=SCHEMA,
        )
    )
    history = [
        Message(role="user", content="find r1"),
        Message(role="assistant", tool_calls=first.tool_calls),
        Message(role="tool", content="{}", tool_call_id=first.tool_calls[0].id, name="lookup"),
    ]
    await provider.complete(
        ChatRequest(messages=history, system="be brief", tools=[TOOL], response_schema=SCHEMA)
    )
    for body in anthropic_fake.requests:
        # tools come first in Anthropic's prefix: the last one (``respond``) ends them; then the system
        assert breakpoints(body) == [f"tools[{len(body['tools']) - 1}]", "system[0]"]
        assert body["tools"][-1] == {
            "name": "respond",
            "description": "Give the final answer.",
            "input_schema": SCHEMA,
            "cache_control": BREAKPOINT,
        }
        assert body["system"] == [{"type": "text", "text": "be brief", "cache_control": BREAKPOINT}]
    await provider.close()


async def test_no_system_prompt_no_tools_no_breakpoint(anthropic_fake: FakeLLMServer) -> None:
    provider = anthropic(anthropic_fake)
    await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    assert breakpoints(anthropic_fake.requests[0]) == []
    assert "system" not in anthropic_fake.requests[0]
    await provider.close()


async def test_caching_off_sends_no_breakpoints(anthropic_fake: FakeLLMServer) -> None:
    provider = anthropic(anthropic_fake, caching=False)
    await provider.complete(
        ChatRequest(messages=[Message(role="user", content="x")], system="be brief", tools=[TOOL])
    )
    body = anthropic_fake.requests[0]
    assert body["system"] == "be brief"
    assert "cache_control" not in json.dumps(body)
    await provider.close()


# -- usage parsed apart ------------------------------------------------------------------------------


async def test_cached_tokens_are_parsed_apart_from_fresh_ones(any_fake: FakeLLMServer) -> None:
    if any_fake.kind == "anthropic":
        provider: Any = anthropic(any_fake)
        # Anthropic's input_tokens already leave the cached share out
        any_fake.push(
            Reply(
                text="a", prompt_tokens=12, completion_tokens=4, cache_read_tokens=900, cache_write_tokens=50
            )
        )
        expected = (12, 4, 900, 50)
    else:
        if any_fake.kind == "openai":
            provider = OpenAIProvider("gpt-x", base_url=any_fake.url, api_key="k")
        else:
            provider = OllamaProvider("llama-x", base_url=any_fake.url)
        # OpenAI and Ollama count the cached share inside the prompt count
        any_fake.push(Reply(text="a", prompt_tokens=912, completion_tokens=4, cache_read_tokens=900))
        expected = (12, 4, 900, 0)
    response = await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))
    u = response.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_write_tokens) == expected
    assert u.input_tokens == expected[0] + expected[2] + expected[3]
    await provider.close()


async def test_usage_without_cache_fields_reads_as_uncached(openai_fake: FakeLLMServer) -> None:
    body = {
        "choices": [{"message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 2},
    }
    openai_fake.push(Reply(body=json.dumps(body)))
    provider = OpenAIProvider("m", base_url=openai_fake.url)
    usage = (await provider.complete(ChatRequest(messages=[Message(role="user", content="x")]))).usage
    assert (usage.prompt_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (30, 0, 0)
    await provider.close()


# -- the fake applies Anthropic's rules ----------------------------------------------------------------


async def test_a_marked_prefix_is_written_once_then_read() -> None:
    async with FakeLLMServer("anthropic", prompt_cache=True) as fake:
        on, off = anthropic(fake), anthropic(fake, caching=False)

        async def ask(
            provider: AnthropicProvider, text: str, system: str = LONG_SYSTEM
        ) -> tuple[int, int, int]:
            u = (
                await provider.complete(
                    ChatRequest(messages=[Message(role="user", content=text)], system=system)
                )
            ).usage
            return u.prompt_tokens, u.cache_read_tokens, u.cache_write_tokens

        fresh1, read1, write1 = await ask(on, "ticket one")
        assert read1 == 0 and write1 >= 1024 and 0 < fresh1 < 20  # first time: the prefix is written
        fresh2, read2, write2 = await ask(on, "ticket number two")
        assert (read2, write2) == (write1, 0) and 0 < fresh2 < 20  # then read; only the payload is fresh
        fresh3, read3, write3 = await ask(off, "ticket one")  # no breakpoint: all at the full rate
        assert (read3, write3) == (0, 0) and fresh3 == fresh1 + write1
        # a changed system prompt misses; a prefix under the minimum is never cached
        _, read4, write4 = await ask(on, "ticket one", LONG_SYSTEM + " Also rule X.")
        assert read4 == 0 and write4 > write1
        assert (await ask(on, "ticket one", "short"))[1:] == (0, 0)
        assert (await ask(on, "ticket one", "short"))[1:] == (0, 0)
        await on.close()
        await off.close()


async def test_requests_sent_before_the_first_answer_all_miss() -> None:
    """A prefix is readable once the answer that wrote it is ready, as at Anthropic."""
    async with FakeLLMServer("anthropic", prompt_cache=True, delay=0.2) as fake:
        provider = anthropic(fake)
        request = ChatRequest(messages=[Message(role="user", content="x")], system=LONG_SYSTEM)
        together = await asyncio.gather(provider.complete(request), provider.complete(request))
        after = await provider.complete(request)
        assert [r.usage.cache_read_tokens for r in together] == [0, 0]
        assert together[0].usage.cache_write_tokens == together[1].usage.cache_write_tokens > 1024
        assert after.usage.cache_read_tokens == together[0].usage.cache_write_tokens
        await provider.close()


async def test_more_than_four_breakpoints_are_refused() -> None:
    async with FakeLLMServer("anthropic", prompt_cache=True) as fake:
        provider = anthropic(fake)
        tools = [ToolSpec(f"t{i}", "d", {"type": "object"}) for i in range(5)]
        marked = {"type": "text", "text": "x", "cache_control": BREAKPOINT}
        kwargs = provider.build_kwargs(ChatRequest(messages=[], system="s", tools=tools))
        kwargs["messages"] = [{"role": "user", "content": [marked, marked, marked]}]
        client = sdk.AsyncAnthropic(api_key="sk-ant", base_url=fake.url, max_retries=0)
        with pytest.raises(sdk.BadRequestError, match="A maximum of 4 blocks with cache_control"):
            await client.messages.create(**kwargs)
        await client.close()
        await provider.close()


# -- through the worker engine ------------------------------------------------------------------------


def worker(tmp_path: Path) -> WorkerSpec:
    (tmp_path / "terms.md").write_text("Certiorari: review by a higher court.\n" * 40)
    (tmp_path / "shots.jsonl").write_text('{"input": "Q1", "output": {"label": "A1"}}\n')
    return WorkerSpec(
        name="labeller",
        system_prompt=LONG_SYSTEM,
        input_schema={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        output_schema={"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}},
        knowledge_sources=[{"path": "terms.md"}, {"path": "shots.jsonl", "inject_as": "few_shot"}],
    )


def engine(fake: FakeLLMServer, spec: WorkerSpec, tmp_path: Path, tier: str, **kw: Any) -> LLMEngine:
    t = TierDefinition(name=tier, backend=fake.kind, model="m-1", base_url=fake.url, **kw)
    env = ENV | loopback_allowed(fake.url)
    client = build_model_client(t, env=env, sleep=VirtualSleep())
    return LLMEngine(spec, t, provider=client, base_dir=tmp_path, env=env)


def without_payload(body: dict[str, Any]) -> str:
    """The request minus its last message (the task's payload), as bytes to compare."""
    return json.dumps({**body, "messages": body["messages"][:-1]}, sort_keys=True)


async def test_every_task_of_a_worker_sends_the_same_prefix(any_fake: FakeLLMServer, tmp_path: Path) -> None:
    eng = engine(any_fake, worker(tmp_path), tmp_path, "prefix")
    any_fake.default = lambda _: Reply(json={"label": "x"})
    await eng.run(TaskMessage(worker_type="labeller", payload={"text": "first ticket"}))
    await eng.run(TaskMessage(worker_type="labeller", payload={"text": "second ticket"}))
    one, two = any_fake.requests
    assert without_payload(one) == without_payload(two)  # byte-identical up to the payload
    assert one["messages"][-1] != two["messages"][-1]
    assert "first ticket" not in without_payload(one)  # nothing task-specific before the payload
    assert [m["role"] for m in one["messages"]][-1] == "user"
    if any_fake.kind == "anthropic":
        assert breakpoints(one) == ["tools[0]", "system[0]"]  # the respond tool, then the system
        assert "Certiorari" in one["system"][0]["text"] and "Input: Q1" in one["system"][0]["text"]
    else:
        system = one["messages"][0]
        assert system["role"] == "system" and "Certiorari" in system["content"]
    await eng.close()


def _tokens(kind: str, tier: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "loom_llm_tokens_total", {"backend": "anthropic", "tier": tier, "kind": kind}
        )
        or 0.0
    )


async def test_cached_tokens_reach_the_result_and_the_metrics(tmp_path: Path) -> None:
    async with FakeLLMServer("anthropic", prompt_cache=True) as fake:
        fake.default = lambda _: Reply(json={"label": "x"}, completion_tokens=3)
        eng = engine(fake, worker(tmp_path), tmp_path, "cachedacct")
        first = (await eng.run(TaskMessage(worker_type="labeller", payload={"text": "a"}))).token_usage
        second = (await eng.run(TaskMessage(worker_type="labeller", payload={"text": "b"}))).token_usage
        assert first.cache_read_tokens == 0 and first.cache_write_tokens > 1024
        assert second.cache_read_tokens == first.cache_write_tokens and second.cache_write_tokens == 0
        assert second.prompt_tokens < 30  # only the payload at the full rate
        assert second.input_tokens == first.input_tokens
        assert _tokens("cache_write", "cachedacct") == first.cache_write_tokens
        assert _tokens("cache_read", "cachedacct") == second.cache_read_tokens
        assert _tokens("prompt", "cachedacct") == first.prompt_tokens + second.prompt_tokens
        assert _tokens("completion", "cachedacct") == 6
        await eng.close()


async def test_a_tier_with_caching_off_pays_full_rate_every_time(tmp_path: Path) -> None:
    async with FakeLLMServer("anthropic", prompt_cache=True) as fake:
        fake.default = lambda _: Reply(json={"label": "x"})
        eng = engine(fake, worker(tmp_path), tmp_path, "nocache", prompt_caching=False)
        usages = [
            (await eng.run(TaskMessage(worker_type="labeller", payload={"text": t}))).token_usage
            for t in "ab"
        ]
        assert all(u.cache_read_tokens == u.cache_write_tokens == 0 for u in usages)
        assert usages[1].prompt_tokens > 1024
        assert all("cache_control" not in json.dumps(b) for b in fake.requests)
        await eng.close()


def test_the_tier_switch_is_anthropic_only() -> None:
    assert (
        TierDefinition(name="a", backend="anthropic", model="m", prompt_caching=False).prompt_caching is False
    )
    with pytest.raises(ValueError, match="anthropic backend only"):
        TierDefinition(name="o", backend="openai", model="m", prompt_caching=False)


# -- accounting ------------------------------------------------------------------------------------------


def test_result_usage_round_trips_and_old_results_read_as_uncached() -> None:
    usage = TokenUsage(prompt_tokens=10, completion_tokens=5, cache_read_tokens=2000, cache_write_tokens=0)
    result = TaskResult(task_id="t", worker_type="w", status=TaskStatus.COMPLETED, token_usage=usage)
    assert TaskResult.model_validate_json(result.model_dump_json()).token_usage == usage
    old = TaskResult.model_validate(
        {"task_id": "t", "worker_type": "w", "status": "completed", "token_usage": {"prompt_tokens": 7}}
    )
    assert (old.token_usage.cache_read_tokens, old.token_usage.cache_write_tokens) == (0, 0)


def test_a_cached_token_is_never_counted_as_a_fresh_one() -> None:
    a = TokenUsage(prompt_tokens=10, completion_tokens=5, cache_read_tokens=2000, cache_write_tokens=0)
    b = TokenUsage(prompt_tokens=12, completion_tokens=4, cache_read_tokens=0, cache_write_tokens=2000)
    total = a + b
    assert (total.prompt_tokens, total.cache_read_tokens, total.cache_write_tokens) == (22, 2000, 2000)
    assert total.input_tokens == 4022 and total.total_tokens == 4031
    # the router's tokens-per-minute correction counts writes and fresh input, not reads
    assert a.limited_tokens == 15 and b.limited_tokens == 2016


async def test_an_eval_judge_reports_its_cached_tokens_apart(anthropic_fake: FakeLLMServer) -> None:
    from loom.evals.judge import judge
    from loom.evals.suite import JudgeScorer

    anthropic_fake.push(
        Reply(
            json={"reasoning": "fine", "score": 1},
            prompt_tokens=30,
            cache_read_tokens=1500,
            cache_write_tokens=0,
        )
    )
    provider = anthropic(anthropic_fake)
    score, usage = await judge(JudgeScorer(type="judge", rubric="Is it right?"), provider, {}, None, {"a": 1})
    assert score.score == 1.0
    assert (usage.prompt_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (30, 1500, 0)
    await provider.close()
