"""Workers: the list, a test run, edits with preview and impact, versions and clones."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from loom.workshop import edits, forms
from loom.workshop.impact import impact
from loom.workshop.project import ConfinementError, Snapshot, WorkerEntry, confine
from loom.workshop.web import Ctx, form


def entry(snap: Snapshot, name: str) -> WorkerEntry:
    try:
        return snap.worker(name)
    except KeyError:
        raise LookupError(f"no Worker {name!r} in the project") from None


def routes(ctx: Ctx) -> list[Route]:
    project = ctx.project

    async def home(request: Request) -> Response:
        return RedirectResponse("/workers", status_code=303)

    async def workers(request: Request) -> Response:
        snap = project.load()
        return ctx.page(request, "workers.html", snap=snap, workers=snap.workers(), tab="workers")

    def located(request: Request) -> tuple[Snapshot, WorkerEntry, str]:
        """The project, the worker the path names, and its file relative to the project."""
        snap = project.load()
        e = entry(snap, request.path_params["name"])
        return snap, e, snap.relative(e.resource.source)

    async def worker(request: Request) -> Response:
        snap, e, rel = located(request)
        return ctx.page(
            request,
            "worker.html",
            snap=snap,
            w=e,
            rel=rel,
            boxes=edits.current(project.read(rel), rel, e.name),
            fields=forms.form_fields(e.spec.input_schema),
            tiers=e.spec.served_tiers if e.spec.worker_kind == "llm" else snap.tiers()[:1] or ["local"],
            versions=list(reversed(ctx.versions.list(rel))),
            uses=impact(snap.resources, e.name, e.spec),
            tab="workers",
        )

    async def test(request: Request) -> Response:
        snap, e, _ = located(request)
        values = await form(request)
        tier = values.get("tier") or e.spec.default_model_tier
        if e.spec.worker_kind == "llm" and tier not in e.spec.served_tiers:
            return ctx.problems(request, [f"worker {e.name!r} does not serve tier {tier!r}"])
        if values.get("mode") == "json":
            payload, bad = forms.payload_from_json(values.get("raw_json", ""))
        else:
            payload, bad = forms.payload_from_form(forms.form_fields(e.spec.input_schema) or [], values)
        if bad:
            return ctx.problems(request, bad)
        return ctx.test(request, snap, e.resource, tier, payload, "test")

    async def run_state(request: Request) -> Response:
        try:
            run = ctx.runs.get(request.path_params["id"])
        except KeyError:
            return PlainTextResponse("no such run", status_code=404)
        return ctx.page(request, "_run.html", run=run)

    async def proposed(request: Request) -> tuple[Snapshot, WorkerEntry, str, str, str, Any]:
        snap, e, rel = located(request)
        old = project.read(rel)
        values = await form(request)
        edit = edits.WorkerEdit(**{f.name: values.get(f.name, "") for f in fields(edits.WorkerEdit)})
        new, res = edits.apply_edit(old, rel, e.name, edit)
        return snap, e, rel, old, new, res

    async def preview(request: Request) -> Response:
        try:
            snap, e, rel, old, new, res = await proposed(request)
        except edits.EditError as exc:
            return ctx.problems(request, exc.problems, status=422)
        others = [r for r in snap.resources if r.source != e.resource.source]
        return ctx.page(
            request,
            "_preview.html",
            diff=edits.unified_diff(old, new, rel),
            uses=impact(others, e.name, res.spec),
        )

    async def save(request: Request) -> Response:
        try:
            _, _e, rel, old, new, _res = await proposed(request)
        except edits.EditError as exc:
            return ctx.problems(request, exc.problems, status=422)
        if new == old:
            return ctx.problems(request, ["nothing changed"], status=422)
        return ctx.saved(request, rel, old, new, "edit")

    async def restore(request: Request) -> Response:
        _, e, rel = located(request)
        vid = (await form(request)).get("version", "")
        try:
            text = ctx.versions.read(rel, vid)
            edits.validated(text, rel, e.name)
        except edits.EditError as exc:
            return ctx.problems(request, exc.problems, status=422)
        return ctx.saved(request, rel, project.read(rel), text, f"restore {vid[:19]}")

    async def clone(request: Request) -> Response:
        snap, e, rel = located(request)
        new_name = (await form(request)).get("new_name", "").strip()
        if any(w.name == new_name for w in snap.workers()):
            return ctx.problems(request, [f"a Worker {new_name!r} exists already"], status=422)
        try:
            text = edits.clone_text(project.read(rel), rel, e.name, new_name)
            path = confine(project.root, Path(rel).parent / f"worker-{new_name}.yaml")
        except edits.EditError as exc:
            return ctx.problems(request, exc.problems, status=422)
        except ConfinementError as exc:
            return ctx.problems(request, [str(exc)], status=422)
        if path.exists():
            return ctx.problems(request, [f"{path.relative_to(project.root)} exists already"], status=422)
        edits.write_atomic(path, text)
        return PlainTextResponse("cloned", headers={"HX-Redirect": f"/workers/{new_name}"})

    return [
        Route("/", home),
        Route("/workers", workers),
        Route("/workers/{name}", worker),
        Route("/workers/{name}/test", test, methods=["POST"]),
        Route("/workers/{name}/preview", preview, methods=["POST"]),
        Route("/workers/{name}/save", save, methods=["POST"]),
        Route("/workers/{name}/restore", restore, methods=["POST"]),
        Route("/workers/{name}/clone", clone, methods=["POST"]),
        Route("/runs/{id}", run_state),
    ]
