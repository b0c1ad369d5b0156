"""RAG: the project's vector stores, the workers and pipelines on each, and each store's statistics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loom.workshop.rag import STATS_QUERY, stores
from loom.workshop.web import Ctx, form


def routes(ctx: Ctx) -> list[Route]:
    project = ctx.project

    async def index(request: Request) -> Response:
        return ctx.page(request, "rag.html", stores=stores(project.load().resources), tab="rag")

    async def stats(request: Request) -> Response:
        """Ask a store's ``RagStoreBackend`` worker for its statistics (a background run the page polls)."""
        snap = project.load()
        name = (await form(request)).get("worker")
        store = next((s for s in stores(snap.resources) if s.reporter == name), None)
        if store is None:
            return ctx.problems(
                request, [f"no RAG store worker {name!r} (on RagStoreBackend) in the project"]
            )
        worker = snap.worker(str(name))
        tier = worker.spec.default_model_tier
        return ctx.test(request, snap, worker.resource, tier, dict(STATS_QUERY), "rag-stats")

    return [Route("/rag", index), Route("/rag/stats", stats, methods=["POST"])]
