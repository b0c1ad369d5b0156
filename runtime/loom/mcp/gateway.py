"""The MCP gateway: an MCP server whose tools submit tasks and goals over NATS.

A call subscribes to ``loom.results.<id>`` before it publishes (a fast result is
never missed), waits up to the tool's timeout, and returns the output as JSON
text plus structured content. A failed result comes back as a tool error carrying
the error text, so the calling model sees why. Query tools run their backend here,
in the gateway process, and need no NATS. Workspace files are resources.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from loom import tracing
from loom.backends import BackendError
from loom.bus import Bus, BusError
from loom.core.workspace import WorkspaceError
from loom.mcp.config import GatewayPlan, ToolDef, argument_problems, argument_validator, tool_message_fields
from loom.mcp.http_security import HttpSecurity, StaticTokenVerifier
from loom.mcp.workspace import Workspace, changed, file_uri
from loom.messages import (
    GoalMessage,
    GoalResult,
    TaskMessage,
    TaskResult,
    TaskStatus,
    describe_validation_error,
)
from loom.settings import NatsSettings

log = logging.getLogger(__name__)

#: JSON-RPC "invalid params": what a refused resource URI is.
INVALID_PARAMS = -32602


def _text_result(text: str, *, error: bool = False, structured: Any = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=text)], is_error=error, structured_content=structured
    )


class _GatewayServer(Server[Any]):
    """The SDK's low-level server, advertising resource change notifications when resources exist."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        if notification_options is None and "resources/list" in self._request_handlers:
            notification_options = NotificationOptions(resources_changed=True)
        return super().create_initialization_options(
            notification_options, experimental_capabilities, extensions
        )


class Gateway:
    """Tools and resources of one gateway config, served over a connected Bus."""

    def __init__(
        self, plan: GatewayPlan, bus: Bus | None, *, version: str = "", nats: NatsSettings | None = None
    ):
        """``bus`` is a connected Bus, or None to connect with ``nats`` at the first worker or pipeline
        call (a gateway of query tools alone never connects)."""
        self.plan = plan
        self.bus = bus
        self._nats = nats
        self._connect_lock = asyncio.Lock()
        self._owns_bus = False
        self.workspace = (
            Workspace(plan.workspace_dir, plan.patterns) if plan.workspace_dir is not None else None
        )
        self._snapshot = self.workspace.snapshot() if self.workspace is not None else {}
        self._snapshot_lock = asyncio.Lock()
        self._validators = {name: argument_validator(tool) for name, tool in plan.tools.items()}
        has_resources = self.workspace is not None
        self.server: Server[Any] = _GatewayServer(
            plan.config.name,
            version=version,
            description=plan.config.description or None,
            instructions=plan.config.description or None,
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources if has_resources else None,
            on_read_resource=self._read_resource if has_resources else None,
        )

    # -- tools ------------------------------------------------------------------------------------------

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        tool = self.plan.tools.get(name)
        return tool.input_schema if tool else None

    def list_tools(self) -> list[types.Tool]:
        """The MCP tools, in config order."""
        return [
            types.Tool(name=t.name, description=t.description, input_schema=t.input_schema)
            for t in self.plan.tools.values()
        ]

    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.list_tools())

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        result = await self.call(params.name, dict(params.arguments or {}), client=_client_name(ctx))
        if self.workspace is not None:
            await self._notify_workspace_changes(ctx)
        return result

    async def call(
        self, name: str, arguments: dict[str, Any], *, client: str | None = None
    ) -> types.CallToolResult:
        """Run one tool call: validate, submit over NATS, wait for the result. ``client`` is the MCP
        client's name (from its initialize request), recorded as the submitter."""
        tool = self.plan.tools.get(name)
        if tool is None:
            return _text_result(f"unknown tool {name!r}; known: {', '.join(self.plan.tools)}", error=True)
        problems = argument_problems(tool, arguments, self._validators[name])
        if problems:
            return _text_result(f"invalid arguments for {name}: " + "; ".join(problems), error=True)
        if tool.kind == "query":
            return await self._run_query(tool, arguments)
        try:
            submitter = f"mcp:{self.plan.config.name}" + (f"/{client}" if client else "")
            if tool.kind == "worker":
                return await self._run_task(tool, arguments, submitter)
            return await self._run_goal(tool, arguments, submitter)
        except ValidationError as exc:  # e.g. a target or tier that cannot be a subject token
            problem = describe_validation_error(exc)
            return _text_result(f"cannot build the message for {name}: {problem}", error=True)
        except (TimeoutError, BusError, OSError) as exc:
            log.warning("tool %s: cannot submit: %s", name, exc)
            return _text_result(f"could not submit to Loom over NATS: {exc}", error=True)

    async def _run_query(self, tool: ToolDef, arguments: dict[str, Any]) -> types.CallToolResult:
        """Run a query backend's action in this process; its BackendError is the tool error text."""
        assert tool.backend_index is not None
        backend = self.plan.backends[tool.backend_index]
        try:
            result = await backend.process({**arguments, "action": tool.target}, {})
        except BackendError as exc:
            return _text_result(f"{tool.name} failed [{exc.code}]: {exc}", error=True)
        output = result.get("output") if isinstance(result, dict) else None
        if not isinstance(output, dict):
            return _text_result(f"{tool.name}: the backend returned no output object", error=True)
        return _text_result(json.dumps(output, ensure_ascii=False, default=str), structured=output)

    async def _connected(self) -> Bus:
        """The bus, connected at the first call that needs it when none was given."""
        async with self._connect_lock:
            if self.bus is None:
                if self._nats is None:
                    raise BusError("this gateway has no NATS connection configured")
                self.bus = await Bus.connect(self._nats, connect_timeout=30)
                self._owns_bus = True
            return self.bus

    async def close(self) -> None:
        """Close the query backends and a bus this gateway connected itself."""
        for backend in self.plan.backends:
            await backend.close()
        if self._owns_bus and self.bus is not None:
            await self.bus.close()
            self.bus, self._owns_bus = None, False

    async def _run_task(
        self, tool: ToolDef, arguments: dict[str, Any], submitter: str
    ) -> types.CallToolResult:
        task = TaskMessage(
            worker_type=tool.target, payload=arguments, model_tier=tool.tier, tenant=self.plan.config.tenant,
            metadata={"source": "mcp", "mcp_server": self.plan.config.name, "mcp_tool": tool.name},
        )
        bus = await self._connected()
        sub = await bus.subscribe_results(task.result_key, task.tenant)
        try:
            with tracing.root(f"mcp {tool.name}", submitted_by=submitter):
                await bus.publish_task(task)
            try:
                data = await sub.get(timeout=tool.timeout_seconds)
            except TimeoutError:
                waited = f"within {tool.timeout_seconds:g}s"
                return _text_result(f"no result for task {task.task_id} ({tool.target}) {waited}", error=True)
        finally:
            await sub.close()
        try:
            result = TaskResult.from_bytes(data)
        except ValidationError as exc:
            return _text_result(f"malformed result for task {task.task_id}: {exc}", error=True)
        if result.status != TaskStatus.COMPLETED:
            code = f" [{result.error_code}]" if result.error_code else ""
            return _text_result(f"{tool.target} failed{code}: {result.error or 'no error text'}", error=True)
        output = result.output or {}
        return _text_result(json.dumps(output, ensure_ascii=False), structured=output)

    async def _run_goal(
        self, tool: ToolDef, arguments: dict[str, Any], submitter: str
    ) -> types.CallToolResult:
        instruction, context = tool_message_fields(tool, arguments)
        goal = GoalMessage(
            pipeline=tool.target, instruction=instruction, context=context, tenant=self.plan.config.tenant,
            metadata={"source": "mcp", "mcp_server": self.plan.config.name, "mcp_tool": tool.name},
        )
        bus = await self._connected()
        sub = await bus.subscribe_results(goal.goal_id, goal.tenant)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + tool.timeout_seconds
        try:
            with tracing.root(f"mcp {tool.name}", submitted_by=submitter):
                await bus.publish_goal(goal)
            while True:
                try:
                    data = await sub.get(timeout=max(0.0, deadline - loop.time()))
                except TimeoutError:
                    return _text_result(
                        f"no result for goal {goal.goal_id} ({tool.target}) within {tool.timeout_seconds:g}s",
                        error=True,
                    )
                try:
                    result = GoalResult.from_bytes(data)
                except ValidationError:
                    continue  # a stage's task result on the goal's subject, not the goal's result
                break
        finally:
            await sub.close()
        if result.status != TaskStatus.COMPLETED:
            failed = [f"{s.name}: {s.error}" for s in result.stages if s.error]
            detail = f" ({'; '.join(failed)})" if failed else ""
            return _text_result(
                f"pipeline {tool.target} failed: {result.error or 'no error text'}{detail}", error=True
            )
        output = result.output or {}
        return _text_result(json.dumps(output, ensure_ascii=False), structured=output)

    # -- resources ----------------------------------------------------------------------------------------

    def list_resources(self) -> list[types.Resource]:
        """Workspace files as resources."""
        assert self.workspace is not None
        return [
            types.Resource(name=f.ref, uri=f.uri, mime_type=f.mime_type, size=f.size)
            for f in self.workspace.files()
        ]

    async def _list_resources(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=await asyncio.to_thread(self.list_resources))

    def read_resource(self, uri: str) -> types.ReadResourceResult:
        """One workspace file: text when it is UTF-8, base64 otherwise; refused outside the workspace."""
        assert self.workspace is not None
        try:
            mime, data = self.workspace.read(uri)
        except (WorkspaceError, OSError) as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from None
        contents: types.TextResourceContents | types.BlobResourceContents
        try:
            contents = types.TextResourceContents(uri=uri, mime_type=mime, text=data.decode("utf-8"))
        except UnicodeDecodeError:
            blob = base64.b64encode(data).decode()
            contents = types.BlobResourceContents(uri=uri, mime_type=mime, blob=blob)
        return types.ReadResourceResult(contents=[contents])

    async def _read_resource(
        self, ctx: Any, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await asyncio.to_thread(self.read_resource, str(params.uri))

    async def _notify_workspace_changes(self, ctx: Any) -> None:
        """After a call: tell a handshake-era client about new, removed or modified workspace files.

        Clients on the 2026-07-28+ protocol receive change notifications only through
        ``subscriptions/listen``, which this gateway does not serve, so they re-list instead.
        """
        assert self.workspace is not None
        async with self._snapshot_lock:
            after = await asyncio.to_thread(self.workspace.snapshot)
            list_changed, modified = changed(self._snapshot, after)
            self._snapshot = after
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS or not (list_changed or modified):
            return
        if list_changed:
            await ctx.session.send_notification(types.ResourceListChangedNotification(), ctx.request_id)
        for ref in modified:
            params = types.ResourceUpdatedNotificationParams(uri=file_uri(ref))
            note = types.ResourceUpdatedNotification(params=params)
            await ctx.session.send_notification(note, ctx.request_id)


# -- transports -------------------------------------------------------------------------------------------


async def serve_stdio(gateway: Gateway) -> None:
    """Serve one client over stdin/stdout until it disconnects."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await gateway.server.run(read_stream, write_stream, gateway.server.create_initialization_options())


async def serve_streamable_http(
    gateway: Gateway,
    host: str,
    port: int,
    security: HttpSecurity,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve MCP at ``http://host:port/mcp`` until SIGTERM/SIGINT, with Host/Origin checks always on and
    the bearer token (when given) checked by the SDK's auth middleware."""
    import uvicorn
    from mcp.server.auth.settings import AuthSettings

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready(f"http://{host}:{port}/mcp")

    auth: dict[str, Any] = {}
    if security.token is not None:
        # Resource-server mode with a local verifier: no OAuth routes, no metadata; the issuer URL
        # is required by the settings model and names this server.
        auth = {
            "auth": AuthSettings(issuer_url=f"http://{host}:{port}", resource_server_url=None),
            "token_verifier": StaticTokenVerifier(security.token),
        }
    app = gateway.server.streamable_http_app(
        host=host, transport_security=security.transport_security(), **auth
    )
    await _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")).serve()


def _client_name(ctx: Any) -> str | None:
    """The calling MCP client's name as it introduced itself (``clientInfo.name``), when it did."""
    params = getattr(getattr(ctx, "session", None), "client_params", None)
    info = getattr(params, "client_info", None)
    name = getattr(info, "name", None)
    return name if isinstance(name, str) and name else None
