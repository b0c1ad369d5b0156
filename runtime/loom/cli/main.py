"""The ``loom`` command: one subcommand per module.

Subcommands are modules in ``loom.cli.commands`` and entry points in the group
``loom.commands`` (how the operator package adds ``loom operator`` and
``loom render`` without the runtime importing it). Each defines ``NAME``,
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from importlib.metadata import entry_points
from types import ModuleType

from loom import __version__
from loom.cli import commands


def _command_modules() -> list[ModuleType]:
    mods = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    for ep in entry_points(group="loom.commands"):
        try:
            mods.append(ep.load())
        except ImportError as exc:  # a plugin that cannot load must not take the whole CLI down
            print(f"loom: command {ep.name!r} unavailable: {exc}", file=sys.stderr)
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand registered)."""
    parser = argparse.ArgumentParser(
        prog="loom", description="Multi-LLM workflows as stateless workers over NATS."
    )
    parser.add_argument("--version", action="version", version=f"loom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loom`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args._run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
