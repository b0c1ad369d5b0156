"""``loom audit``: list, filter and export the audit trail (one record per task and goal outcome).

Reading the audit stream is the bus admin's; against the bus of a ``loom up`` the command
connects as that run's admin (found in its run dir). Times are ISO 8601 (``2026-01-31``,
``2026-01-31T12:00:00Z``) or a duration back from now (``15m``, ``2h``, ``7d``).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from functools import partial

from loom.audit import OUTCOMES, AuditFilter, AuditRecord, to_csv
from loom.bus import Bus
from loom.cli.common import add_local_credentials_option, add_runtime_options, fail, run_client
from loom.logs import setup_logging
from loom.settings import NatsSettings

NAME = "audit"
HELP = "List, filter and export audit records (JSONL or CSV)."

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when it names no zone) or ``<n><s|m|h|d>`` ago; ValueError otherwise."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (ISO 8601, or a duration back from now like 15m, 2h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", help="only this tenant")
    parser.add_argument("--since", help="records at or after this time (ISO 8601, or 15m / 2h / 7d ago)")
    parser.add_argument("--until", help="records before this time")
    parser.add_argument("--outcome", choices=OUTCOMES, help="only this outcome")
    parser.add_argument("--worker", dest="worker_type", help="only this worker type")
    parser.add_argument("--pipeline", help="only this pipeline")
    parser.add_argument("--kind", choices=("task", "goal"), help="only task or goal records")
    parser.add_argument(
        "--format", choices=("table", "jsonl", "csv"), default="table", help="output (default table)"
    )
    add_runtime_options(parser, metrics=False)
    add_local_credentials_option(parser)


def _row(r: AuditRecord) -> str:
    who = r.worker_type or r.pipeline or "-"
    tokens = f"{r.tokens_in}+{r.cache_read_tokens}c/{r.tokens_out}"
    return (
        f"{r.at:%Y-%m-%d %H:%M:%S}  {r.kind:<4} {r.outcome:<13} {r.error_kind or '-':<16} {r.tenant:<12} "
        f"{who:<20} {r.tier or '-':<8} {r.model or '-':<20} {tokens:<14} {r.duration_ms:>9.1f}ms  "
        f"{r.trace_id or '-'}"
    )


async def _main(args: argparse.Namespace, flt: AuditFilter, settings: NatsSettings) -> int:
    bus = await Bus.connect(settings, connect_timeout=30, ensure_streams=False)
    try:
        records = [r for r in await bus.audit_records(flt.tenant) if flt.matches(r)]
    finally:
        await bus.close()
    if args.format == "csv":
        sys.stdout.write(to_csv(records))
    else:
        for r in records:
            print(r.model_dump_json(exclude_none=True) if args.format == "jsonl" else _row(r))
    print(f"{len(records)} record{'s' if len(records) != 1 else ''}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    try:
        flt = AuditFilter(
            tenant=args.tenant,
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
            outcome=args.outcome,
            worker_type=args.worker_type,
            pipeline=args.pipeline,
            kind=args.kind,
        )
    except ValueError as exc:
        return fail("loom audit", exc)
    return run_client(args, "loom audit", partial(_main, args, flt))
