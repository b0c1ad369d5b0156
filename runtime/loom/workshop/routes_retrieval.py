"""Retrieval: search the vector store of a RAG worker and see the ranked chunks with their scores."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loom.workshop.retrieval import query, searches
from loom.workshop.web import Ctx, form


def routes(ctx: Ctx) -> list[Route]:
    project = ctx.project

    async def index(request: Request) -> Response:
        workers = [w for w in project.load().workers() if searches(w.spec)]
        chosen = request.query_params.get("worker")
        return ctx.page(request, "retrieval.html", workers=workers, chosen=chosen, tab="retrieval")

    async def search(request: Request) -> Response:
        snap = project.load()
        values = await form(request)
        worker = next(
            (w for w in snap.workers() if w.name == values.get("worker") and searches(w.spec)), None
        )
        if worker is None:
            return ctx.problems(request, [f"no retrieval worker {values.get('worker')!r} in the project"])
        question = values.get("question", "").strip()
        try:
            k = int(values.get("k") or 5)
        except ValueError:
            return ctx.problems(request, [f"k: {values.get('k')!r} is not an integer"])
        if not question:
            return ctx.problems(request, ["type a question"])
        payload = query(worker.spec, question, k)
        return ctx.test(request, snap, worker.resource, worker.spec.default_model_tier, payload, "retrieval")

    return [Route("/retrieval", index), Route("/retrieval/search", search, methods=["POST"])]
