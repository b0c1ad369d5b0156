"""Apps: install a ZIP bundle of manifests under ``apps/<name>/``, list, restore and remove apps."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loom.workshop.bundles import MAX_ARCHIVE_BYTES, App, Apps, BundleError, app_name
from loom.workshop.project import Project
from loom.workshop.web import Ctx


def live_command(project: Project, app: str) -> str:
    """The ``loom up`` that runs the project with this app: the Workshop's paths, plus the app's folder
    when none of them holds it."""
    folder = project.root / "apps" / app
    paths = list(project.paths)
    if not any(folder == p or p in folder.parents for p in paths):
        paths.append(folder)
    return "loom up " + " ".join(shlex.quote(str(p)) for p in paths)


def routes(ctx: Ctx) -> list[Route]:
    project = ctx.project
    apps = Apps(project.root)

    def listing(
        request: Request, *, done: App | None = None, note: str = "", problems: list[str] | None = None
    ) -> Response:
        return ctx.page(
            request,
            "_apps.html",
            status=400 if problems else 200,
            apps=apps.list(),
            done=done,
            note=note,
            problems=problems or [],
            command=live_command(project, done.name) if done else "",
        )

    async def index(request: Request) -> Response:
        return ctx.page(request, "apps.html", apps=apps.list(), done=None, note="", problems=[], tab="apps")

    async def install(request: Request) -> Response:
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > MAX_ARCHIVE_BYTES + 64 * 1024:
            return listing(
                request, problems=[f"the upload has {size} bytes; an archive has at most {MAX_ARCHIVE_BYTES}"]
            )
        values = await request.form(max_files=1)
        upload = values.get("bundle")
        if not isinstance(upload, UploadFile) or not upload.filename:
            return listing(request, problems=["choose a .zip archive of Loom manifests"])
        data = await upload.read(MAX_ARCHIVE_BYTES + 1)
        try:
            name = str(values.get("name") or "")
            app = await asyncio.to_thread(apps.install, app_name(upload.filename, name), data)
        except BundleError as exc:
            return listing(
                request, problems=[f"{Path(upload.filename).name} refused, nothing written:", *exc.problems]
            )
        return listing(request, done=app, note=f"installed {app.name}")

    async def remove(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            await asyncio.to_thread(apps.remove, name)
        except BundleError as exc:
            return listing(request, problems=exc.problems)
        return listing(request, note=f"removed {name} (its archives are kept: restore it below)")

    async def restore(request: Request) -> Response:
        name = request.path_params["name"]
        archive = str((await request.form()).get("archive", ""))
        try:
            app = await asyncio.to_thread(apps.restore, name, archive)
        except BundleError as exc:
            return listing(request, problems=exc.problems)
        return listing(request, done=app, note=f"restored {name} from the archive installed at {archive}")

    return [
        Route("/apps", index),
        Route("/apps/install", install, methods=["POST"]),
        Route("/apps/{name}/remove", remove, methods=["POST"]),
        Route("/apps/{name}/restore", restore, methods=["POST"]),
    ]
