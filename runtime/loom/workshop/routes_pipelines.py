"""Pipelines: the stage graph, stage edits (validated, versioned, the graph redrawn), and a goal run
on a running system with its stage timeline."""

from __future__ import annotations

from dataclasses import fields

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loom.api.loader import Resource
from loom.workshop import edits, forms
from loom.workshop.graph import layout
from loom.workshop.project import Snapshot
from loom.workshop.web import Ctx, form


def find(snap: Snapshot, name: str) -> Resource:
    for res in snap.of_kind("Pipeline"):
        if res.spec.pipeline_name == name:
            return res
    raise LookupError(f"no Pipeline {name!r} in the project")


def unknown_workers(snap: Snapshot, res: Resource) -> list[str]:
    """Stages whose worker type is not among the project's Workers (they may be deployed elsewhere)."""
    known = {w.name for w in snap.workers()}
    return [
        f"stage {s.name}: worker type {s.worker_type!r} is not in the project"
        for s in res.spec.pipeline_stages
        if s.worker_type not in known
    ]


def routes(ctx: Ctx) -> list[Route]:
    project = ctx.project

    async def index(request: Request) -> Response:
        snap = project.load()
        items = [(r, layout(r.spec), snap.relative(r.source)) for r in snap.of_kind("Pipeline")]
        return ctx.page(request, "pipelines.html", items=items, snap=snap, tab="pipelines")

    def opened(request: Request) -> tuple[Snapshot, Resource, str, str]:
        """The project, the pipeline the path names, and its file: path (relative) and text."""
        snap = project.load()
        res = find(snap, request.path_params["name"])
        rel = snap.relative(res.source)
        return snap, res, rel, project.read(rel)

    async def pipeline(request: Request) -> Response:
        snap, res, rel, text = opened(request)
        name = res.spec.pipeline_name
        stages = [(s, edits.current_stage(text, rel, name, s.name)) for s in res.spec.pipeline_stages]
        return ctx.page(
            request,
            "pipeline.html",
            p=res,
            rel=rel,
            g=layout(res.spec),
            stages=stages,
            warnings=unknown_workers(snap, res),
            tab="pipelines",
        )

    def saved(request: Request, rel: str, old: str, new: str, edited: Resource, note: str) -> Response:
        """Keep the edited file (and its version), then show the diff and the new graph."""
        return ctx.saved(request, rel, old, new, note, "_stage_saved.html", g=layout(edited.spec))

    async def edit_stage(request: Request) -> Response:
        _, res, rel, old = opened(request)
        values = await form(request)
        edit = edits.StageEdit(**{f.name: values.get(f.name, "") for f in fields(edits.StageEdit)})
        stage = request.path_params["stage"]
        try:
            new, edited = edits.apply_stage_edit(old, rel, res.spec.pipeline_name, stage, edit)
        except edits.EditError as exc:
            return ctx.problems(request, exc.problems, status=422)
        if new == old:
            return ctx.problems(request, ["nothing changed"], status=422)
        return saved(request, rel, old, new, edited, f"stage {stage}")

    async def change(request: Request) -> Response:
        """Add a stage (after one, or last) or remove one; saved like a stage edit."""
        _, res, rel, old = opened(request)
        values = await form(request)
        name = res.spec.pipeline_name
        try:
            action = request.path_params["action"]
            if action not in ("add", "remove"):
                raise LookupError(f"no page /pipelines/{name}/{action}-stage")
            if action == "add":
                new, edited = edits.insert_stage(
                    old, rel, name, values.get("stage_yaml", ""), values.get("after") or None
                )
                note = "add stage"
            else:
                new, edited = edits.remove_stage(old, rel, name, values.get("stage", ""))
                note = f"remove stage {values.get('stage', '')}"
        except edits.EditError as exc:
            return ctx.problems(request, exc.problems, status=422)
        return saved(request, rel, old, new, edited, note)

    async def run_goal(request: Request) -> Response:
        res = find(project.load(), request.path_params["name"])
        values = await form(request)
        context, bad = forms.payload_from_json(values.get("context", "") or "{}")
        try:
            timeout = float(values.get("timeout") or res.spec.timeout_seconds)
        except ValueError:
            bad.append(f"timeout: {values.get('timeout')!r} is not a number")
            timeout = 0.0
        if bad:
            return ctx.problems(request, bad)
        await ctx.connection.bus()  # NotConnected is shown before anything starts
        started = ctx.runs.goal(ctx.connection, res.spec.pipeline_name, context, timeout)
        return ctx.page(request, "_run.html", run=started)

    return [
        Route("/pipelines", index),
        Route("/pipelines/{name}", pipeline),
        Route("/pipelines/{name}/stages/{stage}", edit_stage, methods=["POST"]),
        Route("/pipelines/{name}/run", run_goal, methods=["POST"]),
        Route("/pipelines/{name}/{action:str}-stage", change, methods=["POST"]),
    ]
