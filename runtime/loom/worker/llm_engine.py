"""The LLM worker engine: one system prompt, strict JSON contracts, optional tools and knowledge.

Each task starts from a fresh conversation (system prompt + the payload), so
nothing of one task reaches the next. The model's reply is extracted as JSON,
stripped of ``silo_updates`` and validated; a reply that breaks the contract is
sent back with the errors, up to ``output_retries`` times. Provider errors are
retried inside the call budget by the resilience layer and then become task
errors (retryable or not) for the runtime to redeliver or dead-letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loom import tracing
from loom.api.loader import resolve_schema_refs
from loom.api.router_policy import TierDefinition
from loom.api.worker import WorkerSpec
from loom.clock import Clock
from loom.contracts import Contract
from loom.core.workspace import WorkspaceError, WorkspaceManager
from loom.errors import InvalidInput, InvalidOutput, TaskError
from loom.llm.base import ChatRequest, ChatResponse, Message, Provider, ToolCall, token_usage
from loom.llm.errors import InputTooLong, ProviderError, to_task_error
from loom.llm.factory import build_model_client
from loom.llm.fallback import FallbackProvider, load_fallback_tiers
from loom.llm.jsonextract import NoJSONFound, extract_json
from loom.llm.prompt import (
    SILO_UPDATES_SCHEMA,
    Example,
    Reference,
    SiloText,
    build_system_prompt,
    estimate_tokens,
    feedback_message,
    user_message,
)
from loom.llm.resilience import ResilientProvider
from loom.messages import TaskMessage, TokenUsage
from loom.worker.engine import TaskEngine, WorkOutcome
from loom.worker.knowledge import (
    FolderSilo,
    SiloChange,
    apply_silo_changes,
    load_few_shot,
    load_reference,
    plan_silo_updates,
    resolve_path,
)
from loom.worker.tools import ToolBox


def resolve_file_refs(
    payload: dict[str, Any], fields: list[str], workspace: WorkspaceManager
) -> dict[str, Any]:
    """A copy of ``payload`` with ``<field>_content`` for each file-ref field present.

    ``.json`` files are parsed; anything else is read as text. Missing files and
    references that leave the workspace are the task's fault: :class:`InvalidInput`.
    """
    out = dict(payload)
    for name in fields:
        ref = payload.get(name)
        if ref is None:
            continue
        if not isinstance(ref, str):
            raise InvalidInput(f"file ref {name!r} must be a string path, got {type(ref).__name__}")
        try:
            out[f"{name}_content"] = (
                workspace.read_json(ref) if ref.lower().endswith(".json") else workspace.read_text(ref)
            )
        except WorkspaceError as exc:
            raise InvalidInput(f"file ref {name!r}: {exc}") from exc
        except FileNotFoundError as exc:
            raise InvalidInput(f"file ref {name!r}: {ref!r} does not exist in the workspace") from exc
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"file ref {name!r}: cannot read {ref!r}: {exc}") from exc
    return out


def provider_schema(schema: dict[str, Any] | None, writable_silos: bool) -> dict[str, Any] | None:
    """The schema sent for structured decoding: the output schema, plus ``silo_updates`` when allowed."""
    if schema is None or not writable_silos or schema.get("type") != "object":
        return schema
    widened = copy.deepcopy(schema)
    widened.setdefault("properties", {})["silo_updates"] = SILO_UPDATES_SCHEMA
    return widened


class LLMEngine(TaskEngine):
    """Runs tasks of one LLM worker type on one tier."""

    #: The input is checked before the model is called, the output before it is returned (a reply
    #: that breaks the contract goes back to the model with the errors).
    checks_contracts = True

    def __init__(
        self,
        spec: WorkerSpec,
        tier: TierDefinition | None,
        *,
        provider: Provider | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Clock = time.monotonic,
    ):
        self.spec = resolve_schema_refs(spec)
        self.tier = tier or TierDefinition(name=spec.default_model_tier)
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self._env = env
        self._clock = clock
        self._client = provider
        self._input = Contract(self.spec.input_schema)
        self._output = Contract(self.spec.output_schema)
        self._workspace = WorkspaceManager(self.spec.workspace_dir) if self.spec.workspace_dir else None
        folders = [
            FolderSilo(s.name, resolve_path(s.path or "", self.base_dir), s.mode == "readwrite")
            for s in self.spec.knowledge_silos
            if s.type == "folder"
        ]
        self._read_silos = [s for s in folders if not s.writable]
        self._writable = {s.name: s for s in folders if s.writable}
        self._folders = {s.name: s for s in folders}
        self._silo_lock = asyncio.Lock()
        self._references: list[Reference] = []
        self._examples: list[Example] = []
        self._read_texts: list[SiloText] = []
        self._tools = ToolBox(())
        self._static_prompt: str | None = None
        self._schema = provider_schema(self.spec.output_schema, bool(self._writable))
        self._started = False

    async def start(self) -> None:
        """Load knowledge and tools, and open the provider client."""
        if self._started:
            return
        for source in self.spec.knowledge_sources:
            path = resolve_path(source.path, self.base_dir)
            if source.inject_as == "few_shot":
                self._examples.extend(load_few_shot(path))
            else:
                self._references.append(load_reference(path))
        self._read_texts = [s.read() for s in self._read_silos]
        self._tools = ToolBox.from_silos(self.spec.knowledge_silos)
        if not self._writable:
            self._static_prompt = self._prompt([])
        if self._client is None:
            self._client = self._model_client()
        self._started = True

    def _model_client(self) -> Provider:
        """The tier's provider, behind its fallback tiers' providers when it names any."""
        client = build_model_client(self.tier, self._env)
        fallbacks = load_fallback_tiers(self.tier, os.environ if self._env is None else self._env)
        if not fallbacks:
            return client
        chain = [(t.name, build_model_client(t, self._env)) for t in fallbacks]
        return FallbackProvider([(self.tier.name, client), *chain])

    async def close(self) -> None:
        """Close tools and the provider client."""
        await self._tools.close()
        if self._client is not None:
            await self._client.close()

    def _prompt(self, writable_texts: list[SiloText]) -> str:
        return build_system_prompt(
            self.spec.system_prompt or "",
            references=self._references,
            examples=self._examples,
            silos=[*self._read_texts, *writable_texts],
            output_schema=self.spec.output_schema,
            tools=bool(self._tools),
        )

    async def _system_prompt(self) -> str:
        if self._static_prompt is not None:
            return self._static_prompt
        async with self._silo_lock:
            texts = await asyncio.to_thread(lambda: [s.read() for s in self._writable.values()])
        return self._prompt(texts)

    async def run(self, task: TaskMessage) -> WorkOutcome:
        """Do one task from a fresh conversation."""
        if not self._started:
            await self.start()
        payload = task.payload
        self._input.check_input(payload)
        if self._workspace is not None and self.spec.resolve_file_refs:
            payload = await asyncio.to_thread(
                resolve_file_refs, payload, self.spec.resolve_file_refs, self._workspace
            )
        system = await self._system_prompt()
        messages = [Message(role="user", content=user_message(payload))]
        tool_text = json.dumps([t.input_schema for t in self._tools.specs]) if self._tools else ""
        estimate = estimate_tokens(system, messages[0].content, tool_text)
        if estimate > self.spec.max_input_tokens:
            raise InputTooLong(
                f"input is about {estimate} tokens (system prompt, knowledge and payload), over "
                f"max_input_tokens={self.spec.max_input_tokens}"
            )
        deadline = self._clock() + self.spec.timeout_seconds
        usage = [TokenUsage()]
        try:
            return await self._conversation(system, messages, deadline, usage)
        except TaskError as exc:  # what the failed attempt spent is still reported and settled
            exc.token_usage = usage[0]
            raise

    async def _conversation(
        self, system: str, messages: list[Message], deadline: float, usage: list[TokenUsage]
    ) -> WorkOutcome:
        """Ask until the reply meets the contract, at most ``1 + output_retries`` times."""
        model = ""
        tier: str | None = None
        problems: list[str] = []
        for attempt in range(1 + self.spec.output_retries):
            retry = (
                tracing.span("schema retry", attributes={"loom.output.attempt": attempt + 1})
                if attempt
                else contextlib.nullcontext()
            )
            with retry:
                response = await self._converse(system, messages, deadline, usage)
            model = response.model or model
            tier = response.tier or tier
            output, changes, problems = self._check(response.text)
            if not problems and output is not None:
                if changes:
                    await self._apply(changes)
                return WorkOutcome(
                    output=output,
                    model_used=model or None,
                    token_usage=usage[0],
                    model_tier=tier,
                )
            messages.append(Message(role="assistant", content=response.text))
            messages.append(Message(role="user", content=feedback_message(problems)))
        failure = InvalidOutput(
            f"model output broke the output contract after {1 + self.spec.output_retries} attempt(s): "
            + "; ".join(problems)
        )
        failure.errors = problems  # type: ignore[attr-defined]  # read by the runtime for the failed result
        failure.model_used = model or None
        raise failure

    async def _converse(
        self, system: str, messages: list[Message], deadline: float, usage: list[TokenUsage]
    ) -> ChatResponse:
        """Call the model, running tool rounds until it answers (at most ``max_tool_rounds``)."""
        assert self._client is not None
        rounds = 0
        while True:
            offer_tools = bool(self._tools) and rounds < self.spec.max_tool_rounds
            request = ChatRequest(
                messages=list(messages),
                system=system,
                tools=self._tools.specs if offer_tools else [],
                response_schema=self._schema,
                max_tokens=self.spec.max_output_tokens,
            )
            response = await self._call_model(request, deadline)
            usage[0] += token_usage(response.usage)
            if not response.tool_calls:
                return response
            if not offer_tools:
                raise TaskError(
                    f"model kept calling tools after max_tool_rounds={self.spec.max_tool_rounds}",
                    code="tool_rounds_exceeded",
                    retryable=False,
                )
            rounds += 1
            messages.append(Message(role="assistant", content=response.text, tool_calls=response.tool_calls))
            messages.extend(await asyncio.gather(*(self._call_tool(c) for c in response.tool_calls)))

    async def _call_model(self, request: ChatRequest, deadline: float) -> ChatResponse:
        """One model call (retries inside the resilience layer), as a GenAI ``chat`` span."""
        assert self._client is not None
        model = self.tier.model or self._client.model
        # Attributes only for a span that is recorded: with hundreds of calls in flight, building
        # them for nothing is CPU every task pays (measured with bench/bench_llm_inflight.py).
        attrs = (
            tracing.chat_attributes(self._client.backend, model, request.max_tokens, request.temperature)
            if tracing.enabled()
            else None
        )
        with tracing.span(f"chat {model}", kind=tracing.Kind.CLIENT, attributes=attrs) as span:
            try:
                if isinstance(self._client, ResilientProvider | FallbackProvider):
                    response = await self._client.complete(request, deadline=deadline)
                else:
                    response = await self._client.complete(request)
            except ProviderError as exc:
                tracing.fail(str(exc), type(exc).__name__, span)
                raise to_task_error(exc) from exc
            if not span.is_recording():
                return response
            u = response.usage
            tracing.record_chat_response(
                span,
                model=response.model,
                input_tokens=u.input_tokens,
                output_tokens=u.completion_tokens,
                cache_read_tokens=u.cache_read_tokens,
                cache_write_tokens=u.cache_write_tokens,
                finish_reason=response.stop_reason,
                completion=response.text if tracing.capture_content() else None,
            )
            return response

    async def _call_tool(self, call: ToolCall) -> Message:
        """One tool call, as a GenAI ``execute_tool`` span."""
        attrs = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
        }
        with tracing.span(f"execute_tool {call.name}", attributes=attrs) as span:
            result = await self._tools.call(call)
            if result.is_error:
                tracing.fail(result.content[:500], "tool_error", span)
            return result

    def _check(self, text: str) -> tuple[dict[str, Any] | None, list[SiloChange], list[str]]:
        """The output object, the silo changes it asks for, and every contract problem."""
        try:
            value = extract_json(text)
        except NoJSONFound as exc:
            return None, [], [str(exc)]
        if not isinstance(value, dict):
            return None, [], [f"(root): the reply must be a JSON object, not {type(value).__name__}"]
        changes: list[SiloChange] = []
        problems: list[str] = []
        if "silo_updates" in value:
            changes, problems = plan_silo_updates(value.pop("silo_updates"), self._folders)
        problems += self._output.errors(value)
        return value, changes, problems

    async def _apply(self, changes: list[SiloChange]) -> None:
        async with self._silo_lock:
            try:
                await asyncio.to_thread(apply_silo_changes, changes)
            except OSError as exc:
                raise TaskError(
                    f"silo update failed (nothing applied): {exc}", code="silo_write_failed"
                ) from exc
