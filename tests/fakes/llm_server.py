"""A scripted fake model server speaking the Anthropic Messages API, OpenAI chat completions and
Ollama's ``/api/chat`` / ``/api/embed`` over real HTTP on loopback.

Replies come from a script (a queue of :class:`Reply`) and, when it is empty, from a
default responder. Every request body is recorded, so tests can check exactly what
the worker sent (messages, tools, schema, no leftovers from earlier tasks).

With ``prompt_cache=True`` the Anthropic endpoint applies Anthropic's documented prompt-caching
rules (:class:`AnthropicPromptCache`) and reports usage from the request itself, so a test or a
benchmark sees what a worker's requests would be billed.

Run standalone (for benchmarks): ``python -m tests.fakes.llm_server --kind openai --delay 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Kind = Literal["openai", "anthropic", "ollama"]


@dataclass
class Reply:
    """One scripted answer.

    ``json`` (an object) is the model's answer: text for OpenAI/Ollama, a ``respond`` tool call
    for Anthropic when the request forces it, text otherwise. ``text`` is a raw assistant text
    (e.g. prose or broken JSON). ``tool_calls`` are ``(name, arguments)`` pairs. A non-200
    ``status`` sends the provider's error body (``error`` message), or ``body`` verbatim.
    """

    json: Any = None
    text: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = "fake error"
    body: str | None = None
    delay: float = 0.0
    prompt_tokens: int = 11
    completion_tokens: int = 7
    #: Cached input: Anthropic's ``cache_read_input_tokens`` (apart from ``prompt_tokens``), OpenAI's
    #: ``prompt_tokens_details.cached_tokens`` and Ollama's ``prompt_eval_cached_count`` (both a share
    #: of ``prompt_tokens``, as those APIs count them).
    cache_read_tokens: int = 0
    #: Anthropic's ``cache_creation_input_tokens``.
    cache_write_tokens: int = 0
    model: str | None = None


Responder = Callable[[dict[str, Any]], Reply]


def _ok_default(_: dict[str, Any]) -> Reply:
    return Reply(json={"ok": True})


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class CacheRuleError(ValueError):
    """A request Anthropic would refuse for its cache breakpoints (answered 400)."""


def _tokens(block: Any) -> int:
    """A block's token count: about four characters of its JSON per token, at least one."""
    return max(1, (len(json.dumps(block, sort_keys=True, ensure_ascii=False)) + 3) // 4)


def prompt_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Messages request as Anthropic reads it for caching: tools, then system, then messages,
    one entry per block (a message's role rides with its blocks)."""
    blocks: list[dict[str, Any]] = [dict(t) for t in body.get("tools") or []]
    system = body.get("system")
    if isinstance(system, str):
        blocks += [{"type": "text", "text": system}] if system else []
    else:
        blocks += [dict(b) for b in system or []]
    for message in body.get("messages") or []:
        content = message.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        blocks += [{**b, "role": message.get("role")} for b in items]
    return blocks


@dataclass
class CacheLookup:
    """One request against the cache: its usage split and the prefixes it writes."""

    usage: tuple[int, int, int]
    written: list[str]


class AnthropicPromptCache:
    """Anthropic's documented prompt-caching rules, for one server.

    A block with ``cache_control`` is a breakpoint (at most four per request). The prefix up to a
    breakpoint (tools, system, messages, in that order; the model included) is written to the
    cache when it is at least ``min_tokens`` long, and lives ``ttl`` seconds, refreshed by each hit.
    A request reads the longest cached prefix ending at a breakpoint or at one of the 20 block
    boundaries before it. Usage then splits the input as Anthropic reports it: read from the cache,
    written to it (the part past the hit, up to the last breakpoint), and the rest at full rate.
    What a request writes is readable only once its answer is ready (:meth:`commit`), so requests
    sent together before the first answer all miss, as they do at Anthropic.
    """

    LOOKBACK = 20
    MAX_BREAKPOINTS = 4

    def __init__(
        self, *, min_tokens: int = 1024, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic
    ):
        self.min_tokens = min_tokens
        self.ttl = ttl
        self.clock = clock
        self._expiry: dict[str, float] = {}

    def commit(self, lookup: CacheLookup) -> None:
        """Make what a request wrote readable (its answer is ready)."""
        expiry = self.clock() + self.ttl
        for key in lookup.written:
            self._expiry[key] = expiry

    def lookup(self, body: dict[str, Any]) -> CacheLookup:
        """What a request reads from the cache and would write to it."""
        blocks = prompt_blocks(body)
        breakpoints = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        if len(breakpoints) > self.MAX_BREAKPOINTS:
            raise CacheRuleError(
                f"A maximum of {self.MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {len(breakpoints)}."
            )
        digest = hashlib.sha256(str(body.get("model")).encode())
        keys: list[str] = []
        totals: list[int] = []
        total = 0
        for block in blocks:
            plain = {k: v for k, v in block.items() if k != "cache_control"}
            digest.update(json.dumps(plain, sort_keys=True, ensure_ascii=False).encode())
            keys.append(digest.copy().hexdigest())
            total += _tokens(plain)
            totals.append(total)
        now = self.clock()
        hit = -1
        for bp in breakpoints:
            for i in range(bp, max(-1, bp - self.LOOKBACK), -1):
                if self._expiry.get(keys[i], 0.0) > now:
                    hit = max(hit, i)
                    break
        read = totals[hit] if hit >= 0 else 0
        if hit >= 0:
            self._expiry[keys[hit]] = now + self.ttl
        written = [bp for bp in breakpoints if bp > hit and totals[bp] >= self.min_tokens]
        write = totals[max(written)] - read if written else 0
        return CacheLookup((total - read - write, read, write), [keys[bp] for bp in written])


class FakeLLMServer:
    """One fake provider on ``127.0.0.1:<port>``."""

    def __init__(
        self,
        kind: Kind,
        *,
        default: Responder | None = None,
        delay: float = 0.0,
        model: str = "fake-model",
        dimensions: int = 8,
        record: bool = True,
        prompt_cache: bool = False,
        min_cache_tokens: int = 1024,
    ):
        self.kind = kind
        self.default = default or _ok_default
        self.delay = delay
        self.model = model
        self.dimensions = dimensions
        self.record = record
        #: Anthropic's caching rules, applied when asked for: usage is then computed from each request.
        self.prompt_cache = AnthropicPromptCache(min_tokens=min_cache_tokens) if prompt_cache else None
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeLLMServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/embeddings", self._openai_embed)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/api/embed", self._ollama_embed)
        app.router.add_get("/_stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=2048)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLLMServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL a client is configured with (``/v1`` for OpenAI-compatible)."""
        return f"{self.root_url}/v1" if self.kind == "openai" else self.root_url

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self.script.extend(replies)

    # -- plumbing --------------------------------------------------------------------------

    async def _next(
        self, request: web.Request, arrive: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[dict[str, Any], Reply]:
        body = await request.json()
        if arrive is not None:  # what the request finds on arrival, before its answer's delay
            arrive(body)
        if self.record:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
        reply = self.script.popleft() if self.script else self.default(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            wait = reply.delay or self.delay
            if wait:
                await asyncio.sleep(wait)
        finally:
            self.in_flight -= 1
        self.served += 1
        return body, reply

    def _error(self, reply: Reply) -> web.Response:
        if reply.body is not None:
            return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
        kind = _ERROR_TYPES.get(reply.status, "api_error")
        if self.kind == "anthropic":
            payload: Any = {"type": "error", "error": {"type": kind, "message": reply.error}}
        elif self.kind == "openai":
            payload = {"error": {"message": reply.error, "type": kind, "code": None}}
        else:
            payload = {"error": reply.error}
        return web.json_response(payload, status=reply.status, headers=reply.headers)

    def _answer_text(self, reply: Reply) -> str:
        if reply.text is not None:
            return reply.text
        return json.dumps(reply.json) if reply.json is not None else ""

    async def _stats(self, request: web.Request) -> web.Response:
        if request.query.get("reset"):
            self.max_in_flight = self.in_flight
            self.served = 0
        return web.json_response(
            {"served": self.served, "in_flight": self.in_flight, "max_in_flight": self.max_in_flight}
        )

    # -- OpenAI ----------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _openai_chat(self, request: web.Request) -> web.Response:
        body, reply = await self._next(request)
        if reply.status != 200 or reply.body is not None:
            return self._error(reply)
        message: dict[str, Any] = {"role": "assistant", "content": self._answer_text(reply) or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                for i, (n, a) in enumerate(reply.tool_calls)
            ]
        return web.json_response(
            {
                "id": f"chatcmpl-{self.served}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": reply.model or body.get("model") or self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": reply.cache_read_tokens},
                },
            }
        )

    async def _openai_embed(self, request: web.Request) -> web.Response:
        body, reply = await self._next(request)
        if reply.status != 200:
            return self._error(reply)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": self.vector(t)} for i, t in enumerate(texts)]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return web.json_response(
            {"object": "list", "data": data[::-1], "model": body["model"], "usage": usage}
        )

    def vector(self, text: str) -> list[float]:
        """A deterministic vector for ``text``."""
        return [float((len(text) * (i + 1) + sum(map(ord, text))) % 97) for i in range(self.dimensions)]

    # -- Anthropic -------------------------------------------------------------------------

    async def _anthropic_messages(self, request: web.Request) -> web.Response:
        found: list[CacheLookup | CacheRuleError] = []

        def arrive(body: dict[str, Any]) -> None:
            assert self.prompt_cache is not None
            try:
                found.append(self.prompt_cache.lookup(body))
            except CacheRuleError as exc:
                found.append(exc)

        body, reply = await self._next(request, arrive if self.prompt_cache is not None else None)
        if reply.status != 200 or reply.body is not None:
            return self._error(reply)
        usage = {
            "input_tokens": reply.prompt_tokens,
            "output_tokens": reply.completion_tokens,
            "cache_read_input_tokens": reply.cache_read_tokens,
            "cache_creation_input_tokens": reply.cache_write_tokens,
        }
        if found:
            lookup = found[0]
            if isinstance(lookup, CacheRuleError):
                return self._error(Reply(status=400, error=str(lookup)))
            assert self.prompt_cache is not None
            self.prompt_cache.commit(lookup)
            fresh, read, write = lookup.usage
            usage |= {
                "input_tokens": fresh,
                "cache_read_input_tokens": read,
                "cache_creation_input_tokens": write,
            }
        forced = (body.get("tool_choice") or {}).get("type") in ("tool", "any")
        respond = any(t.get("name") == "respond" for t in body.get("tools") or [])
        content: list[dict[str, Any]] = []
        if reply.tool_calls:
            content = [
                {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": a}
                for i, (n, a) in enumerate(reply.tool_calls)
            ]
        elif reply.json is not None and forced and respond:
            content = [{"type": "tool_use", "id": "toolu_respond", "name": "respond", "input": reply.json}]
        else:
            content = [{"type": "text", "text": self._answer_text(reply)}]
        return web.json_response(
            {
                "id": f"msg_{self.served}",
                "type": "message",
                "role": "assistant",
                "model": reply.model or body.get("model") or self.model,
                "content": content,
                "stop_reason": "tool_use" if content[0]["type"] == "tool_use" else "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        )

    # -- Ollama ----------------------------------------------------------------------------

    async def _ollama_chat(self, request: web.Request) -> web.Response:
        body, reply = await self._next(request)
        if reply.status != 200 or reply.body is not None:
            return self._error(reply)
        message: dict[str, Any] = {"role": "assistant", "content": self._answer_text(reply)}
        if reply.tool_calls:
            message["tool_calls"] = [{"function": {"name": n, "arguments": a}} for n, a in reply.tool_calls]
        return web.json_response(
            {
                "model": reply.model or body.get("model") or self.model,
                "created_at": "2025-01-01T00:00:00Z",
                "message": message,
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": reply.prompt_tokens,
                "eval_count": reply.completion_tokens,
                **({"prompt_eval_cached_count": reply.cache_read_tokens} if reply.cache_read_tokens else {}),
            }
        )

    async def _ollama_embed(self, request: web.Request) -> web.Response:
        body, reply = await self._next(request)
        if reply.status != 200:
            return self._error(reply)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"model": body["model"], "embeddings": [self.vector(t) for t in texts]})


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn of a request in any of the three formats."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        for block in content or []:
            if block.get("type") == "text":
                return str(block["text"])
    return ""


async def _serve(kind: Kind, port: int, delay: float, answer: dict[str, Any]) -> None:
    server = FakeLLMServer(kind, delay=delay, default=lambda _: Reply(json=answer), record=False)
    await server.start(port)
    print(f"READY {server.url}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["openai", "anthropic", "ollama"], default="openai")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--answer", default='{"ok": true}', help="JSON object every request gets")
    args = parser.parse_args()
    asyncio.run(_serve(args.kind, args.port, args.delay, json.loads(args.answer)))


if __name__ == "__main__":
    main()
