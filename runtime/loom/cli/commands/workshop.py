"""``loom workshop``: the web UI to test, edit and evaluate the workers of a project folder.

It reads the same manifests as ``loom up`` and needs no NATS: a test runs the worker's engine in
this process on the tier's real provider. ``--nats-url`` connects it to a running system for the
pages that need one (a pipeline run, dead letters), as that system's admin when it was started by
``loom up``. Loopback only unless ``--token`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loom.cli.common import add_local_credentials_option, add_nats_options, client_nats_settings, fail

NAME = "workshop"
HELP = "Web UI to test, edit and evaluate workers (loopback by default)."

DEFAULT_PORT = 8765


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="DIR|FILE",
        help="manifests to serve, as `loom up` reads them (default: the project folder)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="project folder: nothing outside it is read or written (default: the one DIR given, "
        "else the current directory)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding the access token (at least 16 characters), required to bind a non-loopback "
        "address; open the UI with ?token=TOKEN",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("LOOM_WORKSHOP_TOKEN"),
        help="the access token itself (env LOOM_WORKSHOP_TOKEN); other local users can read a command "
        "line, so prefer --token-file or the environment",
    )
    parser.add_argument(
        "--local-llm-url",
        default=os.environ.get("LOOM_LOCAL_LLM_URL"),
        help="OpenAI-compatible URL for tiers on backend local without baseUrl (default: start the "
        "embedded model on first use); env LOOM_LOCAL_LLM_URL",
    )
    add_nats_options(parser)
    add_local_credentials_option(parser)
    # the Workshop connects to a running system only when --nats-url is given on the command line
    parser.set_defaults(nats_url=None)


def project_root(paths: list[str], root: Path | None) -> Path:
    """The folder the Workshop confines itself to."""
    if root is not None:
        return root
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0])
    return Path.cwd()


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from loom.local.credentials import LocalCredentialsError
    from loom.workshop.app import Settings, create_app
    from loom.workshop.project import ConfinementError, Project
    from loom.workshop.security import BindError, check_bind

    try:
        token = args.token
        if args.token_file is not None:
            try:
                token = args.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise BindError(f"--token-file {args.token_file}: {exc.strerror or exc}") from None
        check_bind(args.host, token)
        root = project_root(args.paths, args.root)
        if not root.is_dir():
            raise ConfinementError(f"{root}: not a directory")
        project = Project(root, args.paths)
        nats = client_nats_settings(args, "loom-workshop", tenant=None) if args.nats_url else None
    except (BindError, ConfinementError, LocalCredentialsError) as exc:
        return fail("loom workshop", exc)
    app = create_app(Settings(project=project, token=token, local_llm_url=args.local_llm_url, nats=nats))
    print(f"loom workshop: serving {project.root} on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
