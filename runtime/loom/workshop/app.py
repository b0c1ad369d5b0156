"""The Workshop's web app: routes only; loading, editing, forms and runs live in their own modules.

Pages are server-rendered (Jinja2) and made live with htmx (vendored in ``static/``). A model call
never blocks a response: the page gets a run id and polls the run's fragment until it is finished.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from loom.evals.store import SqliteRunStore, StoreError, default_store_path
from loom.evals.suite import SuiteError, load_suite
from loom.workshop import edits, forms
from loom.workshop.impact import impact
from loom.workshop.project import ConfinementError, Project, Snapshot, WorkerEntry, schema_summary
from loom.workshop.runs import EmbeddedModel, Runs
from loom.workshop.security import CSRF_FIELD, TOKEN_COOKIE, access_problem, csrf_problem

HERE = Path(__file__).parent


@dataclass
class Settings:
    """What ``loom workshop`` was started with."""

    project: Project
    token: str | None = None
    local_llm_url: str | None = None
    nats_url: str | None = None


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def create_app(settings: Settings) -> Starlette:
    """The Workshop app for one project."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pretty"] = _pretty
    templates.env.globals["schema_summary"] = schema_summary
    csrf = secrets.token_urlsafe(32)
    project = settings.project
    versions = edits.Versions(project.root)
    runs = Runs(EmbeddedModel(settings.local_llm_url))

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.update(request=request, csrf=csrf, csrf_field=CSRF_FIELD, root=str(project.root))
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def problems(request: Request, items: list[str], status: int = 400) -> HTMLResponse:
        return page(request, "_problems.html", status, problems=items)

    def entry(snap: Snapshot, name: str) -> WorkerEntry:
        try:
            return snap.worker(name)
        except KeyError:
            raise LookupError(f"no Worker {name!r} in the project") from None

    async def home(request: Request) -> Response:
        return RedirectResponse("/workers", status_code=303)

    async def workers(request: Request) -> Response:
        snap = project.load()
        return page(request, "workers.html", snap=snap, workers=snap.workers(), tab="workers")

    async def worker(request: Request) -> Response:
        snap = project.load()
        e = entry(snap, request.path_params["name"])
        rel = snap.relative(e.resource.source)
        boxes = edits.current(project.read(rel), rel, e.name)
        return page(
            request,
            "worker.html",
            snap=snap,
            w=e,
            rel=rel,
            fields=forms.form_fields(e.spec.input_schema),
            tiers=e.spec.served_tiers if e.spec.worker_kind == "llm" else snap.tiers()[:1] or ["local"],
            boxes=boxes,
            versions=list(reversed(versions.list(rel))),
            uses=impact(snap.resources, e.name, e.spec),
            tab="workers",
        )

    async def test(request: Request) -> Response:
        snap = project.load()
        e = entry(snap, request.path_params["name"])
        form = await request.form()
        values = {k: str(v) for k, v in form.items()}
        tier = values.get("tier") or e.spec.default_model_tier
        if e.spec.worker_kind == "llm" and tier not in e.spec.served_tiers:
            return problems(request, [f"worker {e.name!r} does not serve tier {tier!r}"])
        if values.get("mode") == "json":
            payload, bad = forms.payload_from_json(values.get("raw_json", ""))
        else:
            payload, bad = forms.payload_from_form(forms.form_fields(e.spec.input_schema) or [], values)
        if bad:
            return problems(request, bad)
        policy, policy_problems = snap.policy()
        if policy_problems:
            return problems(request, policy_problems)
        run = runs.test(e.resource, policy, tier, payload)
        return page(request, "_run.html", run=run, w=e)

    async def run_state(request: Request) -> Response:
        try:
            run = runs.get(request.path_params["id"])
        except KeyError:
            return PlainTextResponse("no such run", status_code=404)
        return page(request, "_run.html", run=run)

    def _edit_from(values: dict[str, str]) -> edits.WorkerEdit:
        return edits.WorkerEdit(
            system_prompt=values.get("system_prompt", ""),
            input_schema=values.get("input_schema", ""),
            output_schema=values.get("output_schema", ""),
        )

    async def _proposed(request: Request) -> tuple[Snapshot, WorkerEntry, str, str, str, Any]:
        snap = project.load()
        e = entry(snap, request.path_params["name"])
        rel = snap.relative(e.resource.source)
        old = project.read(rel)
        values = {k: str(v) for k, v in (await request.form()).items()}
        new, res = edits.apply_edit(old, rel, e.name, _edit_from(values))
        return snap, e, rel, old, new, res

    async def preview(request: Request) -> Response:
        try:
            snap, entry_, rel, old, new, res = await _proposed(request)
        except edits.EditError as exc:
            return problems(request, exc.problems, status=422)
        others = [r for r in snap.resources if r.source != entry_.resource.source]
        return page(
            request,
            "_preview.html",
            diff=edits.unified_diff(old, new, rel),
            uses=impact(others, entry_.name, res.spec),
        )

    async def save(request: Request) -> Response:
        try:
            _, _e, rel, old, new, _res = await _proposed(request)
        except edits.EditError as exc:
            return problems(request, exc.problems, status=422)
        if new == old:
            return problems(request, ["nothing changed"], status=422)
        version = edits.save(project.root, rel, old, new, versions, "edit")
        return page(request, "_saved.html", rel=rel, version=version, diff=edits.unified_diff(old, new, rel))

    async def restore(request: Request) -> Response:
        snap = project.load()
        e = entry(snap, request.path_params["name"])
        rel = snap.relative(e.resource.source)
        values = {k: str(v) for k, v in (await request.form()).items()}
        try:
            text = versions.read(rel, values.get("version", ""))
            edits.validated(text, rel, e.name)
        except edits.EditError as exc:
            return problems(request, exc.problems, status=422)
        old = project.read(rel)
        version = edits.save(project.root, rel, old, text, versions, f"restore {values['version'][:19]}")
        return page(request, "_saved.html", rel=rel, version=version, diff=edits.unified_diff(old, text, rel))

    async def clone(request: Request) -> Response:
        snap = project.load()
        e = entry(snap, request.path_params["name"])
        rel = snap.relative(e.resource.source)
        new_name = str((await request.form()).get("new_name", "")).strip()
        if any(w.name == new_name for w in snap.workers()):
            return problems(request, [f"a Worker {new_name!r} exists already"], status=422)
        try:
            text = edits.clone_text(project.read(rel), rel, e.name, new_name)
            target = project.root / Path(rel).parent / f"worker-{new_name}.yaml"
            path = edits.confine(project.root, target)
        except (edits.EditError, ConfinementError) as exc:
            return problems(request, getattr(exc, "problems", [str(exc)]), status=422)
        if path.exists():
            return problems(request, [f"{path.relative_to(project.root)} exists already"], status=422)
        edits.write_atomic(path, text)
        response = PlainTextResponse("cloned")
        response.headers["HX-Redirect"] = f"/workers/{new_name}"
        return response

    # -- evals -----------------------------------------------------------------------------------

    def _suites(snap: Snapshot) -> list[tuple[str, Any, list[str]]]:
        """(relative file, suite or None, problems) of every eval suite file in the project."""
        out: list[tuple[str, Any, list[str]]] = []
        files = {r.source for r in snap.of_kind("EvalSuite")}
        for source in sorted(files):
            rel = snap.relative(source)
            try:
                out.append((rel, load_suite(source), []))
            except SuiteError as exc:
                out.append((rel, None, exc.problems))
        return out

    def _suite(snap: Snapshot, name: str) -> tuple[str, Any]:
        for rel, suite, _ in _suites(snap):
            if suite is not None and suite.name == name:
                return rel, suite
        raise LookupError(f"no eval suite {name!r} in the project")

    async def evals(request: Request) -> Response:
        snap = project.load()
        return page(request, "evals.html", suites=_suites(snap), snap=snap, tab="evals")

    async def eval_page(request: Request) -> Response:
        snap = project.load()
        rel, suite = _suite(snap, request.path_params["suite"])
        store = SqliteRunStore(default_store_path(project.root / rel))
        past = store.runs(suite.name, limit=10) if store.path.exists() else []
        baselines = store.baselines(suite.name) if store.path.exists() else {}
        w = next((x for x in snap.workers() if x.name == suite.worker), None)
        return page(
            request,
            "eval.html",
            rel=rel,
            suite=suite,
            past=past,
            baselines=baselines,
            w=w,
            tiers=w.spec.served_tiers if w else [],
            tab="evals",
        )

    async def eval_run(request: Request) -> Response:
        snap = project.load()
        rel, suite = _suite(snap, request.path_params["suite"])
        values = {k: str(v) for k, v in (await request.form()).items()}
        try:
            w = snap.worker(suite.worker)
        except KeyError:
            return problems(
                request, [f"suite {suite.name!r} names Worker {suite.worker!r}, not in the project"]
            )
        tier = values.get("tier") or suite.tier or w.spec.default_model_tier
        policy, policy_problems = snap.policy()
        if policy_problems:
            return problems(request, policy_problems)
        baseline = values.get("baseline") or None
        run = runs.evaluate(suite, project.root / rel, w.resource, policy, tier, baseline)
        return page(request, "_run.html", run=run)

    async def eval_baseline(request: Request) -> Response:
        snap = project.load()
        rel, suite = _suite(snap, request.path_params["suite"])
        values = {k: str(v) for k, v in (await request.form()).items()}
        name = values.get("name", "").strip()
        if not name:
            return problems(request, ["a baseline needs a name"], status=422)
        store = SqliteRunStore(default_store_path(project.root / rel))
        try:
            store.save_baseline(suite.name, name, values.get("run_id", ""))
        except StoreError as exc:
            return problems(request, [str(exc)], status=422)
        return HTMLResponse(
            f'<p class="ok" id="baseline-saved">Saved run {values.get("run_id")} as baseline '
            f"<b>{_esc(name)}</b>.</p>"
        )

    routes = [
        Route("/", home),
        Route("/workers", workers),
        Route("/workers/{name}", worker),
        Route("/workers/{name}/test", test, methods=["POST"]),
        Route("/workers/{name}/preview", preview, methods=["POST"]),
        Route("/workers/{name}/save", save, methods=["POST"]),
        Route("/workers/{name}/restore", restore, methods=["POST"]),
        Route("/workers/{name}/clone", clone, methods=["POST"]),
        Route("/runs/{id}", run_state),
        Route("/evals", evals),
        Route("/evals/{suite}", eval_page),
        Route("/evals/{suite}/run", eval_run, methods=["POST"]),
        Route("/evals/{suite}/baseline", eval_baseline, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await runs.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        return page(request, "_problems.html", 404, problems=[str(exc).strip("'\"")])

    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=settings.token, csrf=csrf)],
        exception_handlers={LookupError: not_found},
        lifespan=lifespan,
    )


def _esc(text: str) -> str:
    from html import escape

    return escape(text)


class Guard(BaseHTTPMiddleware):
    """Access token (when set) on every request; CSRF token and Origin on every state change."""

    def __init__(self, app: Any, *, token: str | None, csrf: str):
        super().__init__(app)
        self.token = token
        self.csrf = csrf

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
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
        if request.method == "POST" and "x-loom-csrf" not in request.headers:
            form_token = str((await request.form()).get(CSRF_FIELD, "")) or None
        refused = csrf_problem(request.method, request.headers, form_token, self.csrf)
        if refused:
            return PlainTextResponse(refused, status_code=403)
        response = await call_next(request)
        if self.token and query:
            response.set_cookie(TOKEN_COOKIE, query, httponly=True, samesite="strict")
        return response
