"""The Workshop's web app: the guard and the route groups (workers, evals, pipelines, retrieval, RAG
stores, apps, dead letters).

Pages are server-rendered (Jinja2) and made live with htmx (vendored in ``static/``). A model call
never blocks a response: the page gets a run id and polls the run's fragment until it is finished.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from loom.settings import NatsSettings
from loom.workshop import (
    routes_apps,
    routes_dead_letters,
    routes_evals,
    routes_pipelines,
    routes_rag,
    routes_retrieval,
    routes_workers,
)
from loom.workshop.connection import Connection, NotConnected
from loom.workshop.edits import Versions
from loom.workshop.project import Project
from loom.workshop.runs import EmbeddedModel, Runs
from loom.workshop.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    TOKEN_COOKIE,
    access_problem,
    csrf_problem,
    host_allowed,
)
from loom.workshop.web import HERE, Ctx, templates


@dataclass
class Settings:
    """What ``loom workshop`` was started with."""

    project: Project
    token: str | None = None
    local_llm_url: str | None = None
    nats: NatsSettings | None = None


def create_app(settings: Settings) -> Starlette:
    """The Workshop app for one project."""
    csrf = secrets.token_urlsafe(32)
    ctx = Ctx(
        project=settings.project,
        templates=templates(),
        versions=Versions(settings.project.root),
        runs=Runs(EmbeddedModel(settings.local_llm_url)),
        connection=Connection(settings.nats),
        csrf=csrf,
    )
    routes = [
        *routes_workers.routes(ctx),
        *routes_evals.routes(ctx),
        *routes_pipelines.routes(ctx),
        *routes_retrieval.routes(ctx),
        *routes_rag.routes(ctx),
        *routes_apps.routes(ctx),
        *routes_dead_letters.routes(ctx),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await ctx.runs.close()
        await ctx.connection.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        return ctx.problems(request, [str(exc).strip("'\"")], status=404)

    async def not_connected(request: Request, exc: Exception) -> Response:
        return ctx.problems(request, [str(exc)], status=409)

    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=settings.token, csrf=csrf)],
        exception_handlers={LookupError: not_found, NotConnected: not_connected},
        lifespan=lifespan,
    )


class Guard(BaseHTTPMiddleware):
    """Host (loopback names unless a token is set) and access token on every request; CSRF token and
    Origin on every state change."""

    def __init__(self, app: Any, *, token: str | None, csrf: str):
        super().__init__(app)
        self.token = token
        self.csrf = csrf

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not host_allowed(request.headers.get("host"), self.token):
            return PlainTextResponse("this Workshop answers to loopback host names only", status_code=421)
        auth = request.headers.get("authorization", "")
        query = request.query_params.get("token")
        denied = access_problem(
            self.token,
            bearer=auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None,
            cookie=request.cookies.get(TOKEN_COOKIE),
            query=query,
        )
        if denied:
            return PlainTextResponse(denied, status_code=401)
        form_token = None
        if request.method == "POST" and CSRF_HEADER not in request.headers:
            form_token = str((await request.form()).get(CSRF_FIELD, "")) or None
        refused = csrf_problem(request.method, request.headers, form_token, self.csrf)
        if refused:
            return PlainTextResponse(refused, status_code=403)
        response = await call_next(request)
        if self.token and query:
            response.set_cookie(TOKEN_COOKIE, query, httponly=True, samesite="strict")
        return response
