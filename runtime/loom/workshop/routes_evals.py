"""Evals: the suites of the project, a run with per-case scores, baselines and the comparison."""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from loom.evals.store import SqliteRunStore, StoreError, default_store_path
from loom.evals.suite import SuiteError, load_suite
from loom.workshop.edits import write_atomic
from loom.workshop.project import ConfinementError, Snapshot, confine
from loom.workshop.suites import SuiteForm, suite_document, suite_text
from loom.workshop.web import Ctx, form

#: Where a suite made in the page is written, inside the project.
NEW_SUITES_DIR = "evals"


def suites(snap: Snapshot) -> list[tuple[str, Any, list[str]]]:
    """(relative file, suite or None, problems) of every eval suite file in the project."""
    out: list[tuple[str, Any, list[str]]] = []
    for source in sorted({r.source for r in snap.of_kind("EvalSuite")}):
        rel = snap.relative(source)
        try:
            out.append((rel, load_suite(source), []))
        except SuiteError as exc:
            out.append((rel, None, exc.problems))
    return out


def routes(ctx: Ctx) -> list[Route]:
    project = ctx.project

    def find(request: Request) -> tuple[Snapshot, str, Any]:
        """The project, and the file and suite the path names."""
        snap = project.load()
        name = request.path_params["suite"]
        for rel, suite, _ in suites(snap):
            if suite is not None and suite.name == name:
                return snap, rel, suite
        raise LookupError(f"no eval suite {name!r} in the project")

    def store_of(rel: str) -> SqliteRunStore:
        return SqliteRunStore(default_store_path(project.root / rel))

    async def index(request: Request) -> Response:
        snap = project.load()
        return ctx.page(
            request,
            "evals.html",
            suites=suites(snap),
            snap=snap,
            workers=snap.workers(),
            chosen=request.query_params.get("worker", ""),
            tab="evals",
        )

    async def create(request: Request) -> Response:
        snap = project.load()
        values = await form(request)
        raw = await request.form()
        spec = SuiteForm(
            name=values.get("name", "").strip(),
            worker=values.get("worker", ""),
            threshold=values.get("threshold", ""),
            scorers=tuple(str(v) for v in raw.getlist("scorer")),
            judge_rubric=values.get("judge_rubric", ""),
            judge_tier=values.get("judge_tier", ""),
            cases=values.get("cases", ""),
        )
        if not any(w.name == spec.worker for w in snap.workers()):
            return ctx.problems(request, [f"worker: no Worker {spec.worker!r} in the project"], status=422)
        try:
            doc, suite = suite_document(spec)
            if any(s is not None and s.name == suite.name for _, s, _ in suites(snap)):
                raise SuiteError([f"an eval suite {suite.name!r} exists already"])
            path = confine(project.root, f"{NEW_SUITES_DIR}/{suite.name}.yaml")
        except SuiteError as exc:
            return ctx.problems(request, exc.problems, status=422)
        except ConfinementError as exc:
            return ctx.problems(request, [str(exc)], status=422)
        if path.exists():
            return ctx.problems(request, [f"{path.relative_to(project.root)} exists already"], status=422)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, suite_text(doc))
        return HTMLResponse("created", headers={"HX-Redirect": f"/evals/{suite.name}"})

    async def suite_page(request: Request) -> Response:
        snap, rel, suite = find(request)
        store = store_of(rel)
        known = store.path.exists()
        w = next((x for x in snap.workers() if x.name == suite.worker), None)
        return ctx.page(
            request,
            "eval.html",
            rel=rel,
            suite=suite,
            past=store.runs(suite.name, limit=10) if known else [],
            baselines=store.baselines(suite.name) if known else {},
            w=w,
            tiers=w.spec.served_tiers if w else [],
            tab="evals",
        )

    async def run(request: Request) -> Response:
        snap, rel, suite = find(request)
        values = await form(request)
        try:
            w = snap.worker(suite.worker)
        except KeyError:
            return ctx.problems(
                request, [f"suite {suite.name!r} names Worker {suite.worker!r}, not in the project"]
            )
        tier = values.get("tier") or suite.tier or w.spec.default_model_tier
        policy, policy_problems = snap.policy()
        if policy_problems:
            return ctx.problems(request, policy_problems)
        baseline = values.get("baseline") or None
        started = ctx.runs.evaluate(suite, project.root / rel, w.resource, policy, tier, baseline)
        return ctx.page(request, "_run.html", run=started)

    async def baseline(request: Request) -> Response:
        _, rel, suite = find(request)
        values = await form(request)
        name = values.get("name", "").strip()
        if not name:
            return ctx.problems(request, ["a baseline needs a name"], status=422)
        try:
            store_of(rel).save_baseline(suite.name, name, values.get("run_id", ""))
        except StoreError as exc:
            return ctx.problems(request, [str(exc)], status=422)
        return HTMLResponse(
            f'<p class="ok" id="baseline-saved">Saved run {escape(values.get("run_id", ""))} as baseline '
            f"<b>{escape(name)}</b>.</p>"
        )

    async def remove_baseline(request: Request) -> Response:
        _, rel, suite = find(request)
        name = (await form(request)).get("name", "")
        try:
            store_of(rel).remove_baseline(suite.name, name)
        except StoreError as exc:
            return ctx.problems(request, [str(exc)], status=422)
        return HTMLResponse("removed", headers={"HX-Redirect": f"/evals/{suite.name}"})

    return [
        Route("/evals", index),
        Route("/evals/new", create, methods=["POST"]),
        Route("/evals/{suite}", suite_page),
        Route("/evals/{suite}/run", run, methods=["POST"]),
        Route("/evals/{suite}/baseline", baseline, methods=["POST"]),
        Route("/evals/{suite}/baseline/remove", remove_baseline, methods=["POST"]),
    ]
