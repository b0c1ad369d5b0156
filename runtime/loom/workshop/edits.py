"""Editing a worker's file in place (round-trip YAML: formatting and comments kept), and its versions.

An edit is applied to the parsed document with ruamel.yaml's round-trip mode, so only the edited
values change in the file; a multi-line prompt stays a block scalar. The result is validated with
the loader ``loom up`` uses before anything is written, so an invalid edit never reaches the disk.
Every text written (and the file as it was before the first save) is kept under
``.loom/workshop/versions/`` in the project and can be restored.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString

from loom.api.loader import LoadError, Resource, load_text
from loom.workshop.project import confine

VERSIONS_DIR = Path(".loom") / "workshop" / "versions"
#: A kept text's suffix: not ``.yaml``, so ``loom up DIR`` (which reads every YAML file under DIR)
#: never loads a kept version as a second definition. ``.yaml`` is still read (versions kept before).
KEPT = ".kept"
_KEPT_SUFFIXES = (KEPT, ".yaml")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


class EditError(ValueError):
    """The edit is refused; ``problems`` says why (nothing was written)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never fold long lines the file did not fold
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _load_all(text: str) -> list[Any]:
    try:
        return list(_yaml().load_all(text))
    except YAMLError as exc:
        raise EditError([f"invalid YAML: {exc}"]) from None


def _dump_all(docs: list[Any]) -> str:
    out = io.StringIO()
    _yaml().dump_all(docs, out)
    return out.getvalue()


def _body(doc: Any) -> tuple[CommentedMap, bool]:
    """The mapping holding the worker's fields (``spec`` of a manifest) and whether keys are camelCase."""
    if "apiVersion" in doc:
        return doc["spec"], True
    return doc, not any(k in doc for k in ("system_prompt", "input_schema", "output_schema", "worker_kind"))


def _defines(doc: Any, kind: str, name: str) -> bool:
    """Whether ``doc`` is the Worker or Pipeline ``name``: a manifest, or a plain file (a plain
    pipeline has its stages)."""
    if not isinstance(doc, dict):
        return False
    if "apiVersion" in doc:
        if doc.get("kind") != kind or not isinstance(doc.get("spec"), dict):
            return False
        return name in (doc["spec"].get("name"), (doc.get("metadata") or {}).get("name"))
    has_stages = any(k in doc for k in ("pipeline_stages", "pipelineStages"))
    return doc.get("name") == name and (kind == "Worker" or has_stages)


def _doc(docs: list[Any], source: str, kind: str, name: str) -> Any:
    """The document of the Worker or Pipeline ``name``; EditError when the file has none."""
    doc = next((d for d in docs if _defines(d, kind, name)), None)
    if doc is None:
        raise EditError([f"{source}: no {kind} {name!r} in this file"])
    return doc


def _key(body: CommentedMap, camel: bool, snake: str) -> str:
    head, *rest = snake.split("_")
    camel_key = head + "".join(p.title() for p in rest)
    for k in (snake, camel_key):
        if k in body:
            return k
    return camel_key if camel else snake


def _set(body: CommentedMap, camel: bool, snake: str, value: Any) -> None:
    """Set a field (None removes it); an unchanged value keeps its exact text."""
    key = _key(body, camel, snake)
    if value is None:
        body.pop(key, None)
    elif _plain(body.get(key)) != _plain(value):
        body[key] = value


def parse_schema(text: str, label: str) -> Any:
    """A schema typed in the page (YAML or JSON) as round-trip data; empty text means no schema."""
    if not text.strip():
        return None
    try:
        value = _yaml().load(text)
    except YAMLError as exc:
        raise EditError([f"{label}: invalid YAML/JSON: {exc}"]) from None
    if not isinstance(value, dict):
        raise EditError([f"{label}: must be a mapping (a JSON Schema object)"])
    return value


def schema_text(schema: Any) -> str:
    """A schema as YAML for the edit box."""
    return "" if schema is None else _dump_all([schema])


@dataclass(frozen=True)
class WorkerEdit:
    """What the page lets one change: the system prompt and the two schemas (YAML or JSON text)."""

    system_prompt: str
    input_schema: str
    output_schema: str


def current(text: str, source: str, worker: str) -> WorkerEdit:
    """The edit boxes' starting texts, taken from the file's own nodes (flow style and comments kept)."""
    body, camel = _body(_doc(_load_all(text), source, "Worker", worker))
    return WorkerEdit(
        system_prompt=str(body.get(_key(body, camel, "system_prompt")) or ""),
        input_schema=schema_text(body.get(_key(body, camel, "input_schema"))),
        output_schema=schema_text(body.get(_key(body, camel, "output_schema"))),
    )


def apply_edit(text: str, source: str, worker: str, edit: WorkerEdit) -> tuple[str, Resource]:
    """The file's new text with the edit applied, and the worker as it then loads; EditError if invalid."""
    docs = _load_all(text)
    body, camel = _body(_doc(docs, source, "Worker", worker))
    prompt = edit.system_prompt.replace("\r\n", "\n")
    pkey = _key(body, camel, "system_prompt")
    if prompt.strip():
        body[pkey] = (
            LiteralScalarString(prompt if prompt.endswith("\n") else prompt + "\n")
            if "\n" in prompt.strip()
            else prompt
        )
    elif pkey in body:
        del body[pkey]
    _set(body, camel, "input_schema", parse_schema(edit.input_schema, "input schema"))
    _set(body, camel, "output_schema", parse_schema(edit.output_schema, "output schema"))
    new_text = _dump_all(docs)
    return new_text, validated(new_text, source, worker)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _loaded(text: str, source: str, kind: str, name: str, matches: Callable[[Resource], bool]) -> Resource:
    """The ``kind`` the new text loads as that ``matches``, or EditError with every problem of the file."""
    try:
        resources = load_text(text, source)
    except LoadError as exc:
        raise EditError(exc.problems) from None
    found = next((r for r in resources if r.kind == kind and matches(r)), None)
    if found is None:
        raise EditError([f"{source}: the edit leaves no {kind} {name!r}"])
    return found


def validated(text: str, source: str, worker: str) -> Resource:
    """The worker as the new text loads, or EditError with every problem of the file."""
    return _loaded(text, source, "Worker", worker, lambda r: worker in (r.spec.worker_type, r.name))


def unified_diff(old: str, new: str, label: str) -> str:
    """The edit as a unified diff of the file (empty when nothing changes)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{label}", f"b/{label}"
        )
    )


def clone_text(text: str, source: str, worker: str, new_name: str) -> str:
    """The worker's document alone, renamed to ``new_name`` (comments kept), validated."""
    if not NAME_RE.match(new_name):
        raise EditError([f"{new_name!r} is not a valid worker name (lowercase letters, digits, - and _)"])
    doc = _doc(_load_all(text), source, "Worker", worker)
    if "apiVersion" in doc:
        doc["metadata"]["name"] = new_name.replace("_", "-")
        if "name" in doc["spec"]:
            doc["spec"]["name"] = new_name
    else:
        doc["name"] = new_name
    new_text = _dump_all([doc])
    validated(new_text, source, new_name if "apiVersion" not in doc else doc["metadata"]["name"])
    return new_text


# -- pipeline stages ----------------------------------------------------------------------------


def _stage_index(stages: Any, source: str, pipeline: str, stage: str) -> int:
    index = next((i for i, s in enumerate(stages) if isinstance(s, dict) and s.get("name") == stage), None)
    if index is None:
        raise EditError([f"{source}: Pipeline {pipeline!r} has no stage {stage!r}"])
    return index


def _stage_node(docs: list[Any], source: str, pipeline: str, stage: str) -> tuple[Any, bool]:
    body, camel = _body(_doc(docs, source, "Pipeline", pipeline))
    stages = body.get(_key(body, camel, "pipeline_stages")) or []
    node = stages[_stage_index(stages, source, pipeline, stage)]
    return node, camel or any(k in node for k in ("workerType", "inputMapping", "dependsOn"))


@dataclass(frozen=True)
class StageEdit:
    """What the page lets one change in a stage (texts as typed; empty means unset)."""

    worker_type: str
    tier: str
    input_mapping: str
    depends_on: str
    condition: str
    timeout_seconds: str


def current_stage(text: str, source: str, pipeline: str, stage: str) -> StageEdit:
    """The stage's edit boxes from the file's own nodes."""
    node, camel = _stage_node(_load_all(text), source, pipeline, stage)

    def get(snake: str) -> Any:
        return node.get(_key(node, camel, snake))

    deps = get("depends_on")
    return StageEdit(
        worker_type=str(get("worker_type") or ""),
        tier=str(get("tier") or ""),
        input_mapping=schema_text(get("input_mapping")),
        depends_on="" if deps is None else ", ".join(map(str, deps)),
        condition=str(get("condition") or ""),
        timeout_seconds="" if get("timeout_seconds") is None else str(get("timeout_seconds")),
    )


def apply_stage_edit(
    text: str, source: str, pipeline: str, stage: str, edit: StageEdit
) -> tuple[str, Resource]:
    """The file's new text with the stage edited, and the pipeline as it then loads; EditError if invalid."""
    docs = _load_all(text)
    node, camel = _stage_node(docs, source, pipeline, stage)
    mapping = parse_schema(edit.input_mapping, "input mapping")
    timeout: float | None = None
    if edit.timeout_seconds.strip():
        try:
            timeout = float(edit.timeout_seconds)
        except ValueError:
            raise EditError([f"timeout: {edit.timeout_seconds!r} is not a number"]) from None
    deps = [d.strip() for d in edit.depends_on.split(",") if d.strip()] if edit.depends_on.strip() else None
    values: dict[str, Any] = {
        "worker_type": edit.worker_type.strip() or None,
        "tier": edit.tier.strip() or None,
        "input_mapping": mapping,
        "depends_on": deps,
        "condition": edit.condition.strip() or None,
        "timeout_seconds": (int(timeout) if timeout is not None and timeout.is_integer() else timeout),
    }
    for snake, value in values.items():
        _set(node, camel, snake, value)
    return _validated_pipeline(docs, source, pipeline)


def _stages(docs: list[Any], source: str, pipeline: str) -> Any:
    body, camel = _body(_doc(docs, source, "Pipeline", pipeline))
    return body[_key(body, camel, "pipeline_stages")]


def _validated_pipeline(docs: list[Any], source: str, pipeline: str) -> tuple[str, Resource]:
    """The edited documents' text, and the pipeline as it then loads."""
    text = _dump_all(docs)
    return text, _loaded(text, source, "Pipeline", pipeline, lambda r: r.spec.pipeline_name == pipeline)


def insert_stage(
    text: str, source: str, pipeline: str, stage_yaml: str, after: str | None
) -> tuple[str, Resource]:
    """A new stage (typed as YAML) after ``after`` (or last); EditError if the pipeline then breaks.

    A stage that reads only ``goal.*`` paths is a new parallel branch."""
    docs = _load_all(text)
    stages = _stages(docs, source, pipeline)
    stage = parse_schema(stage_yaml, "stage")
    if stage is None:
        raise EditError(["stage: type the new stage as YAML (name, workerType, inputMapping, ...)"])
    names = [str(s.get("name")) for s in stages if isinstance(s, dict)]
    if after and after not in names:
        raise EditError([f"no stage {after!r} to insert after"])
    stages.insert(names.index(after) + 1 if after else len(stages), stage)
    return _validated_pipeline(docs, source, pipeline)


def remove_stage(text: str, source: str, pipeline: str, stage: str) -> tuple[str, Resource]:
    """The pipeline without ``stage``; EditError when another stage still reads or depends on it."""
    docs = _load_all(text)
    stages = _stages(docs, source, pipeline)
    del stages[_stage_index(stages, source, pipeline, stage)]
    return _validated_pipeline(docs, source, pipeline)


# -- files and versions --------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.workshop-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Version:
    """One kept text of a file."""

    id: str
    saved_at: float
    note: str


class Versions:
    """Every text the Workshop wrote to a project file, newest last, under the project's ``.loom``."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def _dir(self, rel: str) -> Path:
        confine(self.root, rel)
        return confine(self.root, VERSIONS_DIR / rel)

    def keep(self, rel: str, text: str, note: str) -> Version:
        directory = self._dir(rel)
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.time_ns()
        slug = re.sub(r"[^a-z0-9]+", "-", note.lower()).strip("-")[:40] or "save"
        vid = f"{stamp}-{slug}"
        (directory / f"{vid}{KEPT}").write_text(text, encoding="utf-8")
        return Version(vid, stamp / 1e9, note)

    def list(self, rel: str) -> list[Version]:
        directory = self._dir(rel)
        if not directory.is_dir():
            return []
        out = []
        kept = [f for f in directory.iterdir() if f.suffix in _KEPT_SUFFIXES and f.is_file()]
        for f in sorted(kept, key=lambda p: int(p.stem.split("-", 1)[0])):
            stamp, _, slug = f.stem.partition("-")
            out.append(Version(f.stem, int(stamp) / 1e9, slug.replace("-", " ")))
        return out

    def read(self, rel: str, vid: str) -> str:
        if not re.fullmatch(r"\d+-[a-z0-9-]+", vid):
            raise EditError([f"no version {vid!r}"])
        for suffix in _KEPT_SUFFIXES:
            path = self._dir(rel) / f"{vid}{suffix}"
            if path.is_file():
                return path.read_text(encoding="utf-8")
        raise EditError([f"no version {vid!r} of {rel}"])


def save(root: Path, rel: str, old: str, new: str, versions: Versions, note: str) -> Version:
    """Write ``new`` to the project file ``rel``, keeping the text it replaces the first time."""
    path = confine(root, rel)
    if not versions.list(rel):
        versions.keep(rel, old, "original")
    write_atomic(path, new)
    return versions.keep(rel, new, note)
