"""Dead letters of a running system (``--nats-url``): list and filter by reason, the original and
its reason, edit the payload and replay it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from loom.bus import BusError, StoredDeadLetter
from loom.messages import DeadLetterReason
from loom.subjects import STREAM_DEAD_LETTER
from loom.workshop.dead_letters import ReplayError, corrected_body, editable
from loom.workshop.web import Ctx, form


def routes(ctx: Ctx) -> list[Route]:
    async def find(dead_letter_id: str) -> StoredDeadLetter:
        found = await (await ctx.connection.bus()).find_dead_letter(dead_letter_id)
        if found is None:
            raise LookupError(f"no dead letter {dead_letter_id!r}")
        return found

    async def index(request: Request) -> Response:
        reason = request.query_params.get("reason") or ""
        items: list[StoredDeadLetter] = []
        if ctx.connection.configured:
            items = [
                s
                for s in await (await ctx.connection.bus()).dead_letters()
                if not reason or s.dead_letter.reason.value == reason
            ]
        return ctx.page(
            request,
            "dead_letters.html",
            items=items,
            reason=reason,
            reasons=[r.value for r in DeadLetterReason],
            tab="dead-letters",
        )

    async def show(request: Request) -> Response:
        stored = await find(request.path_params["id"])
        return ctx.page(
            request,
            "dead_letter.html",
            s=stored,
            dl=stored.dead_letter,
            body=editable(stored.dead_letter),
            tab="dead-letters",
        )

    async def replay(request: Request) -> Response:
        stored = await find(request.path_params["id"])
        values = await form(request)
        try:
            body = corrected_body(stored.dead_letter, values.get("body", ""))
            bus = await ctx.connection.bus()
            await bus.replay_dead_letter(stored, keep=values.get("keep") == "on", body=body)
        except (ReplayError, BusError) as exc:
            return ctx.problems(request, [str(exc)], status=422)
        what = "the original message" if body is None else "the edited message"
        return HTMLResponse(
            f'<p class="ok" id="replayed">Replayed {what} to {stored.dead_letter.subject}.</p>'
        )

    async def remove(request: Request) -> Response:
        stored = await find(request.path_params["id"])
        gone = await (await ctx.connection.bus()).delete_stream_message(STREAM_DEAD_LETTER, stored.seq)
        note = "Removed" if gone else "Already removed:"
        return HTMLResponse(
            f'<p class="ok" id="removed">{note} dead letter {stored.dead_letter.dead_letter_id}.</p>'
        )

    return [
        Route("/dead-letters", index),
        Route("/dead-letters/{id}/remove", remove, methods=["POST"]),
        Route("/dead-letters/{id}", show),
        Route("/dead-letters/{id}/replay", replay, methods=["POST"]),
    ]
