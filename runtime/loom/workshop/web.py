"""What every page handler shares: the project, templates, runs, the connection, and the responses."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from loom.api.loader import Resource
from loom.workshop.connection import Connection
from loom.workshop.edits import Versions, save, unified_diff
from loom.workshop.project import Project, Snapshot, schema_summary
from loom.workshop.runs import Runs
from loom.workshop.security import CSRF_FIELD

HERE = Path(__file__).parent


def pretty(value: Any) -> str:
    """JSON for people: indented, non-ASCII kept."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def size(n: int) -> str:
    """A byte count for people (``12.3 MiB``)."""
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def utc(seconds: float) -> str:
    """An epoch time as people read it, in UTC."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters["pretty"] = pretty
    t.env.filters["size"] = size
    t.env.filters["utc"] = utc
    t.env.globals["schema_summary"] = schema_summary
    return t


@dataclass
class Ctx:
    """The Workshop's state, handed to each group of routes."""

    project: Project
    templates: Jinja2Templates
    versions: Versions
    runs: Runs
    connection: Connection
    csrf: str

    def page(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.update(
            request=request,
            csrf=self.csrf,
            csrf_field=CSRF_FIELD,
            root=str(self.project.root),
            connected=self.connection.configured,
        )
        return self.templates.TemplateResponse(request, name, ctx, status_code=status)

    def problems(self, request: Request, items: list[str], status: int = 400) -> HTMLResponse:
        return self.page(request, "_problems.html", status, problems=items)

    def saved(
        self, request: Request, rel: str, old: str, new: str, note: str, name: str = "_saved.html", **ctx: Any
    ) -> HTMLResponse:
        """Write ``new`` to the project file ``rel`` (its versions kept), then show the version and diff."""
        version = save(self.project.root, rel, old, new, self.versions, note)
        return self.page(request, name, rel=rel, version=version, diff=unified_diff(old, new, rel), **ctx)

    def test(
        self, request: Request, snap: Snapshot, res: Resource, tier: str, payload: dict[str, Any], kind: str
    ) -> HTMLResponse:
        """Start a ``kind`` run of the worker ``res`` (refused while the RouterPolicy is unusable)."""
        policy, problems = snap.policy()
        if problems:
            return self.problems(request, problems)
        return self.page(request, "_run.html", run=self.runs.test(res, policy, tier, payload, kind))


async def form(request: Request) -> dict[str, str]:
    """The submitted form as plain strings."""
    return {k: str(v) for k, v in (await request.form()).items()}
