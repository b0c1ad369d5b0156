"""``loom dead-letter list|show ID|replay ID|--all``: inspect and replay dead letters.

Only the bus admin may read, remove and replay dead letters; against the bus of a
``loom up`` the command connects as that run's admin (found in its run dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from functools import partial

from loom.bus import Bus, StoredDeadLetter
from loom.cli.common import add_local_credentials_option, add_runtime_options, run_client
from loom.logs import setup_logging
from loom.settings import NatsSettings

NAME = "dead-letter"
HELP = "List, show and replay dead letters."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p_list = sub.add_parser("list", help="list dead letters")
    p_list.add_argument("--reason", help="only this reason")
    p_list.add_argument("--json", action="store_true", help="one JSON object per line")
    p_show = sub.add_parser("show", help="show one dead letter with its original message")
    p_show.add_argument("id", help="dead letter id (a unique prefix is enough)")
    p_replay = sub.add_parser("replay", help="publish the original message again to its subject")
    p_replay.add_argument("id", nargs="?", help="dead letter id (a unique prefix is enough)")
    p_replay.add_argument("--all", action="store_true", help="replay every dead letter (optionally --reason)")
    p_replay.add_argument("--reason", help="with --all: only this reason")
    p_replay.add_argument("--keep", action="store_true", help="keep the dead letter after replaying it")
    for p in (p_list, p_show, p_replay):
        add_runtime_options(p, metrics=False)
        add_local_credentials_option(p)


def _row(s: StoredDeadLetter) -> str:
    d = s.dead_letter
    return (
        f"{d.dead_letter_id}  {d.at:%Y-%m-%d %H:%M:%S}  {d.reason.value:<19} {d.worker_type or '-':<20} "
        f"{d.model_tier or '-':<10} {d.task_id or '-':<32}  {d.detail[:80]}"
    )


async def _of_reason(bus: Bus, reason: str | None) -> list[StoredDeadLetter]:
    return [s for s in await bus.dead_letters() if not reason or s.dead_letter.reason.value == reason]


async def _main(args: argparse.Namespace, settings: NatsSettings) -> int:
    bus = await Bus.connect(settings, connect_timeout=30)
    try:
        if args.action == "list":
            items = await _of_reason(bus, args.reason)
            for s in items:
                print(s.dead_letter.model_dump_json() if args.json else _row(s))
            if not args.json:
                print(f"{len(items)} dead letter{'s' if len(items) != 1 else ''}", file=sys.stderr)
            return 0
        if args.action == "show":
            found = await bus.find_dead_letter(args.id)
            if found is None:
                print(f"no dead letter {args.id!r}", file=sys.stderr)
                return 1
            doc = found.dead_letter.model_dump(mode="json")
            with contextlib.suppress(ValueError):
                doc["original"] = json.loads(doc["original"])
            print(json.dumps(doc, indent=2))
            return 0
        # replay
        if args.all == bool(args.id):
            print("replay needs an ID or --all (not both)", file=sys.stderr)
            return 2
        if args.all:
            targets = await _of_reason(bus, args.reason)
            kept = [s for s in targets if s.dead_letter.replayable]
            if len(kept) < len(targets):
                print(f"skipping {len(targets) - len(kept)} without a kept body (too_large)", file=sys.stderr)
            targets = kept
        else:
            one = await bus.find_dead_letter(args.id)
            if one is None:
                print(f"no dead letter {args.id!r}", file=sys.stderr)
                return 1
            targets = [one]
        for s in targets:
            await bus.replay_dead_letter(s, keep=args.keep)
            print(f"replayed {s.dead_letter.dead_letter_id} to {s.dead_letter.subject}")
        print(f"{len(targets)} replayed", file=sys.stderr)
        return 0
    finally:
        await bus.close()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    return run_client(args, "loom dead-letter", partial(_main, args))
