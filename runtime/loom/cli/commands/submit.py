"""``loom submit``: a task to the router, or a goal to a pipeline or the orchestrator.

``--wait`` subscribes to the result before publishing and prints it. Against the bus of a
``loom up``, the command connects as that run's identity of ``--tenant`` (found in its run dir).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from functools import partial
from typing import Any

from pydantic import ValidationError

from loom import tracing
from loom.api.router_policy import DEFAULT_MAX_PAYLOAD_BYTES
from loom.bus import Bus
from loom.cli.common import add_local_credentials_option, add_runtime_options, fail, run_client
from loom.logs import setup_logging
from loom.messages import (
    GoalMessage,
    GoalResult,
    TaskMessage,
    TaskResult,
    TaskStatus,
    describe_validation_error,
)
from loom.quotas import MAX_PAYLOAD_ENV, payload_problem
from loom.settings import NatsSettings
from loom.subjects import GOALS_INCOMING, STREAM_GOALS

NAME = "submit"
HELP = "Submit a task (--worker-type) or a goal (an instruction); --wait prints the result."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instruction", nargs="?", help="goal instruction (omit when submitting a task)")
    parser.add_argument("--worker-type", help="submit a task for this worker type")
    parser.add_argument("--tier", help="model tier for the task")
    parser.add_argument("--payload", default="{}", help="task payload as JSON (or @file.json)")
    parser.add_argument(
        "--pipeline",
        help="pipeline for the goal (default: the dynamic orchestrator when one has run, else the only "
        "pipeline that has; with several and no orchestrator, submit says which to name)",
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="goal context entry; VALUE is JSON when it parses, @FILE reads a file as text (repeatable)",
    )
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--priority", default="normal", help="low, normal, high, critical or 0-3")
    parser.add_argument("--id", dest="message_id", help="task_id / goal_id (default: generated)")
    parser.add_argument("--wait", action="store_true", help="wait for the result and print it")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait with --wait")
    parser.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds to wait for the NATS connection"
    )
    parser.add_argument(
        "--max-payload-bytes",
        type=int,
        default=os.environ.get(MAX_PAYLOAD_ENV) or str(DEFAULT_MAX_PAYLOAD_BYTES),  # goes through ``type``
        metavar="BYTES",
        help="refuse a task or goal message larger than this before sending it (the router dead-letters "
        f"tasks over its RouterPolicy maxPayloadBytes as too_large); env {MAX_PAYLOAD_ENV}, "
        f"default {DEFAULT_MAX_PAYLOAD_BYTES}",
    )
    add_runtime_options(parser, metrics=False)
    add_local_credentials_option(parser)


def _json_arg(text: str) -> Any:
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as fh:
            return json.load(fh)
    return json.loads(text)


def _context(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--context expects KEY=VALUE, got {pair!r}")
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as fh:
                out[key] = fh.read()
            continue
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def build_message(args: argparse.Namespace) -> TaskMessage | GoalMessage:
    """The task or goal the options describe (raises ValueError with a clear message)."""
    ids = {"task_id": args.message_id} if args.message_id else {}
    if args.worker_type:
        if args.instruction:
            raise ValueError("give either --worker-type (a task) or an instruction (a goal), not both")
        payload = _json_arg(args.payload)
        if not isinstance(payload, dict):
            raise ValueError("--payload must be a JSON object")
        return TaskMessage(
            worker_type=args.worker_type,
            model_tier=args.tier,
            payload=payload,
            tenant=args.tenant,
            priority=args.priority,
            **ids,
        )
    if not args.instruction:
        raise ValueError("nothing to submit: give an instruction (a goal) or --worker-type (a task)")
    gids = {"goal_id": args.message_id} if args.message_id else {}
    return GoalMessage(
        instruction=args.instruction,
        context=_context(args.context),
        pipeline=args.pipeline,
        tenant=args.tenant,
        priority=args.priority,
        **gids,
    )


def print_result(data: bytes, out: Any = sys.stdout) -> bool:
    """Print a result (JSON, plus the stage timeline for a goal); True when it completed."""
    doc = json.loads(data)
    print(json.dumps(doc, indent=2, sort_keys=True), file=out)
    if "goal_id" in doc and "task_id" not in doc:
        result = GoalResult.model_validate(doc)
        if result.stages:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=f"goal {result.goal_id} ({result.status.value})")
            for col in ("stage", "worker", "status", "attempts", "duration ms", "error"):
                table.add_column(col)
            for s in result.stages:
                table.add_row(
                    s.name, s.worker_type, s.status, str(s.attempts), f"{s.duration_ms:.1f}", s.error or ""
                )
            Console(file=out, width=120).print(table)
        return result.status == TaskStatus.COMPLETED
    return TaskResult.model_validate(doc).status == TaskStatus.COMPLETED


def is_own_result(data: bytes, msg: TaskMessage | GoalMessage) -> bool:
    """Whether a message on the result subject answers ``msg`` itself.

    A pipeline's stage results share the goal's result subject; only the goal's own
    result (``goal_id`` and no ``task_id``) ends the wait for a goal.
    """
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    if isinstance(msg, GoalMessage):
        return doc.get("goal_id") == msg.goal_id and "task_id" not in doc
    return doc.get("task_id") == msg.task_id


async def _own_result(sub: Any, msg: TaskMessage | GoalMessage, wait_seconds: float) -> bytes:
    """The first result on the subscription that answers ``msg``; TimeoutError after ``wait_seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        data: bytes = await sub.get(timeout=remaining)
        if is_own_result(data, msg):
            return data


class NoGoalTarget(ValueError):
    """A goal without ``--pipeline`` that nothing would run."""


def goal_target(goal_filters: list[str]) -> str | None:
    """Where a goal without ``--pipeline`` goes, from the filter subjects of the goal consumers.

    The dynamic orchestrator (``loom.goals.incoming``) when one has run; else the one
    pipeline that has; else raises :class:`NoGoalTarget` saying what to type instead.
    Returns the pipeline name, or None for the orchestrator.
    """
    if GOALS_INCOMING in goal_filters:
        return None
    prefix = GOALS_INCOMING.rsplit(".", 1)[0] + "."
    pipelines = sorted({f.removeprefix(prefix) for f in goal_filters if f.startswith(prefix)})
    if len(pipelines) == 1:
        return pipelines[0]
    if pipelines:
        raise NoGoalTarget(
            "no --pipeline given and no orchestrator runs; pipelines: "
            + ", ".join(pipelines)
            + f'. Say which: loom submit "..." --pipeline {pipelines[0]}'
        )
    raise NoGoalTarget(
        "no --pipeline given, and no orchestrator or pipeline has run on this NATS: start one "
        "(loom pipeline --config FILE, or loom orchestrator --config FILE), or give --pipeline NAME "
        "to queue the goal for a pipeline that starts later"
    )


async def _main(args: argparse.Namespace, msg: TaskMessage | GoalMessage, settings: NatsSettings) -> int:
    bus = await Bus.connect(settings, connect_timeout=args.connect_timeout)
    try:
        if isinstance(msg, GoalMessage) and msg.pipeline is None:
            try:
                target = goal_target(list((await bus.consumer_filters(STREAM_GOALS)).values()))
            except NoGoalTarget as exc:
                return fail("loom submit", exc)
            if target is not None:
                print(
                    f"no --pipeline given: sending the goal to pipeline {target!r}, the only one",
                    file=sys.stderr,
                )
                msg = msg.model_copy(update={"pipeline": target})
        with tracing.root("submit", submitted_by=submitter(settings), attributes={"loom.tenant": msg.tenant}):
            return await _submit(args, bus, msg)
    finally:
        await bus.close()
        tracing.flush()


def submitter(settings: NatsSettings) -> str | None:
    """Who submits, as the audit trail records it: the NATS user (or the credentials file)."""
    if settings.user:
        return settings.user
    return f"creds:{os.path.basename(settings.creds_file)}" if settings.creds_file else None


async def _submit(args: argparse.Namespace, bus: Bus, msg: TaskMessage | GoalMessage) -> int:
    key = msg.goal_id if isinstance(msg, GoalMessage) else msg.result_key
    sub = await bus.subscribe_results(key, msg.tenant) if args.wait else None
    if isinstance(msg, GoalMessage):
        await bus.publish_goal(msg)
    else:
        await bus.publish_task(msg)
    sent = msg.goal_id if isinstance(msg, GoalMessage) else msg.task_id
    print(f"submitted {'goal' if isinstance(msg, GoalMessage) else 'task'} {sent}", file=sys.stderr)
    print(f"trace {tracing.current_trace_id()}", file=sys.stderr)
    if sub is None:
        return 0
    try:
        data = await _own_result(sub, msg, args.timeout)
    except TimeoutError:
        print(f"no result within {args.timeout:g}s", file=sys.stderr)
        return 3
    finally:
        await sub.close()
    return 0 if print_result(data) else 1


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    tracing.setup("loom-submit")
    try:
        msg = build_message(args)
    except ValidationError as exc:
        return fail("loom submit", describe_validation_error(exc))
    except (ValueError, OSError) as exc:
        return fail("loom submit", exc)
    what = "goal" if isinstance(msg, GoalMessage) else "task"
    too_large = payload_problem(len(msg.to_bytes()), args.max_payload_bytes, what, "--max-payload-bytes")
    if too_large is not None:
        return fail("loom submit", too_large)
    return run_client(args, "loom submit", partial(_main, args, msg), tenant=msg.tenant, bus_error=2)
