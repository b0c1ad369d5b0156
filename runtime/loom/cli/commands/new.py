"""``loom new worker|pipeline``: scaffold a config from answers, asked interactively or given as flags.

Every question has a flag, so the same command is scriptable
(``--non-interactive`` takes defaults for anything not given). Prompts go to
stderr, so ``-o -`` leaves stdout with the YAML alone. The text is loaded with
the same loader as ``loom validate`` before anything is written, and an existing
file is never replaced without ``--force``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TextIO, TypeVar

from loom.api.common import TIER_PATTERN, WORKER_TYPE_PATTERN
from loom.api.loader import LoadError, load_text
from loom.api.pipeline import STAGE_NAME_PATTERN
from loom.cli.common import fail
from loom.scaffold import (
    PipelineAnswers,
    StageAnswers,
    WorkerAnswers,
    default_mapping,
    parse_fields,
    parse_mapping,
    parse_stage,
    render_pipeline,
    render_worker,
)

NAME = "new"
HELP = "Scaffold a Worker or Pipeline config (interactive, or every answer as a flag)."

T = TypeVar("T")


class AnswersEnded(Exception):
    """Input ended before every question was answered."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="KIND", required=True)
    worker = sub.add_parser("worker", help="an LLM or processor worker", description="Scaffold a Worker.")
    worker.add_argument("--name", help="worker type, e.g. entity_extractor")
    worker.add_argument("--description", help="one line saying what it does")
    worker.add_argument("--kind", choices=("llm", "processor"), help="llm (default) or processor")
    worker.add_argument("--system-prompt", help="LLM workers: the prompt (default: generated)")
    worker.add_argument("--backend", help="processor workers: backend class path (pkg.mod.Class)")
    worker.add_argument("--tier", help="default model tier (default local)")
    worker.add_argument("--input-field", dest="inputs", action="append", metavar="FIELDS",
                        help="input fields name[:type][?], comma-separated or repeated (default text:string)")
    worker.add_argument("--output-field", dest="outputs", action="append", metavar="FIELDS",
                        help="output fields, same form (default result:string)")
    worker.add_argument("--timeout", type=float, help="timeout_seconds (default 60)")
    pipeline = sub.add_parser("pipeline", help="a multi-stage pipeline", description="Scaffold a Pipeline.")
    pipeline.add_argument("--name", help="pipeline name (goal subject loom.goals.<name>)")
    pipeline.add_argument("--description", help="one line saying what it does")
    pipeline.add_argument("--stage", dest="stages", action="append", metavar="NAME=WORKER_TYPE[@TIER]",
                          help="a stage, in order (repeat for more)")
    pipeline.add_argument("--map", dest="maps", action="append", metavar="STAGE.FIELD=PATH",
                          help="a stage input, e.g. extract.file_ref=goal.context.file_ref (repeatable); "
                          "stages without any read the goal's text or the previous stage's output")
    pipeline.add_argument("--timeout", type=float, help="timeout_seconds for a whole goal (default 300)")
    for p in (worker, pipeline):
        p.add_argument("--non-interactive", action="store_true", help="ask nothing; use defaults")
        p.add_argument("-o", "--output", dest="output_file", metavar="FILE",
                       help="where to write (default <name>.yaml; '-' for stdout)")
        p.add_argument("--manifest", action="store_true", help="write a loom.dev/v1alpha1 manifest")
        p.add_argument("--namespace", help="metadata.namespace of the manifest")
        p.add_argument("--force", action="store_true", help="replace an existing file")


class Prompter:
    """Asks through ``input()`` with prompts on stderr; in non-interactive mode returns the default."""

    def __init__(self, interactive: bool, err: TextIO = sys.stderr, read: Callable[[], str] = input):
        self.interactive = interactive
        self.err = err
        self.read = read

    def ask(self, question: str, default: str | None, parse: Callable[[str], T]) -> T:
        """Ask until the answer parses; an empty answer takes the default (None: an answer is required)."""
        while True:
            if not self.interactive:
                if default is None:
                    raise ValueError(f"{question}: required (give it as a flag)")
                return parse(default)
            shown = f" [{default}]" if default else ""
            print(f"{question}{shown}: ", end="", file=self.err, flush=True)
            try:
                answer = self.read().strip()
            except EOFError:
                raise AnswersEnded(f"input ended at: {question}") from None
            if not answer:
                if default is None:
                    print("  an answer is required", file=self.err)
                    continue
                answer = default
            try:
                return parse(answer)
            except ValueError as exc:
                print(f"  {exc}", file=self.err)


def _kind(text: str) -> Literal["llm", "processor"]:
    if text == "llm":
        return "llm"
    if text == "processor":
        return "processor"
    raise ValueError("answer llm or processor")


def _matching(pattern: str, what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not re.match(pattern, text):
            raise ValueError(f"{text!r} is not a valid {what} ({pattern})")
        return text
    return parse


_worker_name = _matching(WORKER_TYPE_PATTERN, "worker name")
_pipeline_name = _matching(STAGE_NAME_PATTERN, "pipeline name")
_stage_name = _matching(STAGE_NAME_PATTERN, "stage name")
_tier = _matching(TIER_PATTERN, "tier")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _text(text: str) -> str:
    return text


def worker_answers(args: argparse.Namespace, ask: Prompter) -> WorkerAnswers:
    """Flags first; the prompter asks for the rest."""
    name = args.name or ask.ask("Worker name (e.g. entity_extractor)", None, _worker_name)
    description = args.description if args.description is not None else ask.ask("Description", "", _text)
    kind = _kind(args.kind) if args.kind else ask.ask("Kind (llm or processor)", "llm", _kind)
    backend = args.backend
    if kind == "processor" and not backend:
        backend = ask.ask("Processing backend class (pkg.module.Class)", None, _text)
    tier = args.tier or ask.ask("Default model tier (local, standard, frontier, ...)", "local", _tier)
    inputs = (parse_fields(",".join(args.inputs)) if args.inputs
              else ask.ask("Input fields (name[:type][?], comma-separated)", "text:string", parse_fields))
    outputs = (parse_fields(",".join(args.outputs)) if args.outputs
               else ask.ask("Output fields (name[:type][?], comma-separated)", "result:string", parse_fields))
    prompt = args.system_prompt
    if kind == "llm" and prompt is None:
        prompt = ask.ask("System prompt (one line; empty: generated from the fields)", "", _text) or None
    timeout = args.timeout if args.timeout is not None else ask.ask("Timeout seconds", "60", _positive)
    return WorkerAnswers(
        name=name, kind=kind, description=description, system_prompt=prompt,
        processing_backend=backend, tier=tier, inputs=inputs, outputs=outputs,
        timeout_seconds=timeout,
    )


def _stage_maps(maps: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in maps:
        target, sep, path = item.partition("=")
        stage, dot, key = target.partition(".")
        if not sep or not dot or not stage or not key or not path:
            raise ValueError(f"--map {item!r}: expected STAGE.FIELD=PATH, e.g. a.text=goal.context.text")
        out.setdefault(stage, {})[key] = path
    return out


def pipeline_answers(args: argparse.Namespace, ask: Prompter) -> PipelineAnswers:
    """Flags first; the prompter asks for the rest (stages one by one until an empty name)."""
    name = args.name or ask.ask("Pipeline name (e.g. analysis_pipeline)", None, _pipeline_name)
    description = args.description if args.description is not None else ask.ask("Description", "", _text)
    stages: list[StageAnswers] = []
    if args.stages:
        maps = _stage_maps(args.maps or [])
        for text in args.stages:
            stage = parse_stage(text)
            stage.input_mapping = maps.pop(stage.name, {}) or default_mapping(stages)
            stages.append(stage)
        if maps:
            raise ValueError(f"--map names stages that are not given with --stage: {', '.join(sorted(maps))}")
    elif not ask.interactive:
        raise ValueError("a pipeline needs at least one --stage NAME=WORKER_TYPE[@TIER]")
    else:
        while True:
            n = len(stages) + 1
            stage_name = ask.ask(f"Stage {n} name (empty to finish)" if stages else "Stage 1 name",
                                 "" if stages else None, lambda t: _stage_name(t) if t else t)
            if not stage_name:
                break
            worker_type = ask.ask(f"  worker type for {stage_name}", None, _worker_name)
            tier = ask.ask(f"  tier for {stage_name} (empty: the worker's default)", "",
                           lambda t: _tier(t) if t else t) or None
            default = ", ".join(f"{k}={v}" for k, v in default_mapping(stages).items())
            mapping = ask.ask(f"  input mapping for {stage_name} (field=path, ...)", default, parse_mapping)
            stages.append(StageAnswers(stage_name, worker_type, tier, mapping))
    timeout = args.timeout if args.timeout is not None else ask.ask("Goal timeout seconds", "300", _positive)
    return PipelineAnswers(name=name, stages=stages, description=description, timeout_seconds=timeout)


def run(args: argparse.Namespace) -> int:
    ask = Prompter(interactive=not args.non_interactive)
    try:
        if args.what == "worker":
            w = worker_answers(args, ask)
            name = w.name
            text = render_worker(w, manifest=args.manifest, namespace=args.namespace)
        else:
            p = pipeline_answers(args, ask)
            name = p.name
            text = render_pipeline(p, manifest=args.manifest, namespace=args.namespace)
    except AnswersEnded as exc:
        print(f"\nloom new: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        return fail("loom new", exc)
    target = args.output_file or f"{name}.yaml"
    try:
        resources = load_text(text, target)
    except LoadError as exc:
        return fail("loom new", "these answers do not make a valid config:\n" + "\n".join(exc.problems))
    if target == "-":
        sys.stdout.write(text)
        return 0
    path = Path(target)
    if path.exists() and not args.force:
        return fail("loom new", f"{path} exists; use --force to replace it", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    found = ", ".join(f"{r.kind}/{r.name}" for r in resources)
    print(f"wrote {path} ({found}); check it any time with: loom validate {path}", file=sys.stderr)
    return 0
