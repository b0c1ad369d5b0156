"""Knowledge for LLM workers: reference files, few-shot examples and folder silos with write-back.

Folder silos honour a ``.siloignore`` (gitignore semantics via ``pathspec``).
A task's ``silo_updates`` are checked first (silo exists and is read-write,
filename confined to the folder) and then applied all-or-nothing: every new
content is written to a temporary file beside its target, replaced ones are
kept aside until the whole batch has landed, and any failure restores them.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pathspec
import yaml

from loom.api.worker import WorkerSpec
from loom.core.workspace import WorkspaceError, confined, read_bytes_in
from loom.llm.prompt import Example, Reference, SiloText

IGNORE_FILE = ".siloignore"
_TMP_MARK = ".loom-silo-"


class KnowledgeError(ValueError):
    """A knowledge file or silo cannot be read or has the wrong shape."""


def resolve_path(path: str, base_dir: Path) -> Path:
    """A knowledge path: absolute as given, relative to ``base_dir`` otherwise."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def knowledge_problems(spec: WorkerSpec, base_dir: Path) -> list[str]:
    """Why the knowledge files and folders of an LLM worker cannot be read (empty when they can).

    What ``loom validate`` reports and ``loom worker`` refuses to start on: each problem names
    the field, the path as written, where it was looked for and, for a relative path, the folder
    relative paths are read from (and a hint when the path exists from the current directory,
    where the original Loom read it).
    """
    if spec.worker_kind != "llm":
        return []
    problems: list[str] = []
    for i, source in enumerate(spec.knowledge_sources):
        path = resolve_path(source.path, base_dir)
        where = f"knowledgeSources[{i}].path {source.path!r}"
        if not path.is_file():
            problems.append(f"{where}: {_missing(source.path, path, base_dir, 'file')}")
            continue
        try:
            load_few_shot(path) if source.inject_as == "few_shot" else load_reference(path)
        except KnowledgeError as exc:
            problems.append(f"{where}: {exc}")
    for i, silo in enumerate(spec.knowledge_silos):
        if silo.type == "folder" and silo.path:
            path = resolve_path(silo.path, base_dir)
            if not path.is_dir():
                where = f"knowledgeSilos[{i}] ({silo.name}).path {silo.path!r}"
                problems.append(f"{where}: {_missing(silo.path, path, base_dir, 'folder')}")
    return problems


def _missing(written: str, path: Path, base_dir: Path, what: str) -> str:
    text = f"{path} is not a {what}" if path.exists() else f"no such {what}: {path}"
    if Path(written).expanduser().is_absolute():
        return text
    text += f" (relative paths are read from {base_dir})"
    from_cwd = Path.cwd() / written
    if from_cwd.exists() and from_cwd.resolve() != path.resolve():
        text += f"; it exists relative to the current directory: pass --base-dir {Path.cwd()}"
    return text


def load_reference(path: Path) -> Reference:
    """A reference file, titled by its name."""
    try:
        return Reference(title=path.name, text=path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KnowledgeError(f"knowledge source {path}: {exc.strerror or exc}") from exc


def load_few_shot(path: Path) -> list[Example]:
    """Examples from a YAML list or JSONL file of ``{input, output}`` objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnowledgeError(f"few-shot file {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".jsonl":
            items: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = yaml.safe_load(text) or []
    except (ValueError, yaml.YAMLError) as exc:
        raise KnowledgeError(f"few-shot file {path}: not valid YAML/JSONL: {exc}") from exc
    if not isinstance(items, list):
        raise KnowledgeError(f"few-shot file {path}: expected a list of {{input, output}} examples")
    examples = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or "input" not in item or "output" not in item:
            raise KnowledgeError(f"few-shot file {path}: example {i} needs 'input' and 'output'")
        examples.append(Example(input=item["input"], output=item["output"]))
    return examples


@dataclass(frozen=True)
class FolderSilo:
    """A folder of knowledge files."""

    name: str
    root: Path
    writable: bool

    def _ignore(self) -> pathspec.PathSpec:
        ignore = self.root / IGNORE_FILE
        lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.is_file() else []
        return pathspec.GitIgnoreSpec.from_lines(lines)

    def read(self) -> SiloText:
        """Every text file not ignored, sorted by relative path."""
        if not self.root.is_dir():
            raise KnowledgeError(f"silo {self.name!r}: folder {self.root} does not exist")
        spec = self._ignore()
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = Path(dirpath).relative_to(self.root)
            dirnames[:] = sorted(d for d in dirnames if not spec.match_file((rel_dir / d).as_posix() + "/"))
            for name in sorted(filenames):
                rel = (rel_dir / name).as_posix()
                if name == IGNORE_FILE or name.startswith(_TMP_MARK) or spec.match_file(rel):
                    continue
                try:  # opened by an O_NOFOLLOW walk: a link out of the folder is never read
                    text = read_bytes_in(self.root, rel)[0].decode("utf-8")
                except (UnicodeDecodeError, OSError, WorkspaceError):
                    continue
                files.append((rel, text))
        return SiloText(name=self.name, writable=self.writable, files=tuple(sorted(files)))


@dataclass(frozen=True)
class SiloChange:
    """One checked update: where, what, and the new content (None for delete)."""

    silo: str
    action: Literal["add", "modify", "delete"]
    filename: str
    target: Path
    content: str | None


def plan_silo_updates(raw: Any, silos: dict[str, FolderSilo]) -> tuple[list[SiloChange], list[str]]:
    """Check a model's ``silo_updates``; returns the changes, or the problems (nothing applied)."""
    if not isinstance(raw, list):
        return [], ["silo_updates: must be an array"]
    changes: list[SiloChange] = []
    problems: list[str] = []
    for i, item in enumerate(raw):
        checked = _check_silo_update(f"silo_updates/{i}", item, silos)
        if isinstance(checked, str):
            problems.append(checked)
        else:
            changes.append(checked)
    return ([], problems) if problems else (changes, [])


def _check_silo_update(where: str, item: Any, silos: dict[str, FolderSilo]) -> SiloChange | str:
    """One update as a change, or the problem with it."""
    if not isinstance(item, dict):
        return f"{where}: must be an object"
    name, action, filename = item.get("silo"), item.get("action"), item.get("filename")
    silo = silos.get(name) if isinstance(name, str) else None
    if silo is None:
        return f"{where}: unknown silo {name!r}"
    if not silo.writable:
        return f"{where}: silo {name!r} is read-only"
    if action not in ("add", "modify", "delete"):
        return f"{where}: action must be add, modify or delete"
    content = item.get("content")
    if action != "delete" and not isinstance(content, str):
        return f"{where}: {action} needs string content"
    try:
        target = confined(silo.root, str(filename))
    except WorkspaceError as exc:
        return f"{where}: {exc}".replace("the workspace", f"silo {name!r}")
    if target == silo.root.resolve() or target.name == IGNORE_FILE or target.is_dir():
        return f"{where}: {filename!r} is not a writable file of silo {name!r}"
    if action == "modify" and not target.is_file():
        return f"{where}: cannot modify {filename!r}: no such file"
    return SiloChange(silo.name, action, str(filename), target, None if action == "delete" else content)


def apply_silo_changes(changes: list[SiloChange]) -> None:
    """Apply a batch all-or-nothing; on failure everything is put back and the error re-raised."""
    tag = uuid.uuid4().hex[:12]
    staged: list[tuple[Path, Path]] = []  # (temporary file with new content, target)
    aside: list[tuple[Path, Path]] = []  # (original moved aside, its home)
    placed: list[Path] = []
    try:
        for change in changes:
            if change.content is not None:
                change.target.parent.mkdir(parents=True, exist_ok=True)
                tmp = change.target.parent / f"{_TMP_MARK}{tag}-{len(staged)}.new"
                tmp.write_text(change.content, encoding="utf-8")
                staged.append((tmp, change.target))
        for change in changes:
            if change.target.exists() and all(home != change.target for _, home in aside):
                backup = change.target.parent / f"{_TMP_MARK}{tag}-{len(aside)}.old"
                os.replace(change.target, backup)
                aside.append((backup, change.target))
        for tmp, target in staged:
            os.replace(tmp, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            target.unlink(missing_ok=True)
        for backup, home in aside:
            os.replace(backup, home)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for backup, _ in aside:
        backup.unlink(missing_ok=True)
