"""App bundles: a ZIP archive of Loom manifests, checked and validated whole, then installed under the
project's ``apps/<name>/``.

Nothing is written until every entry is safe (no absolute path, ``..``, drive letter, backslash or
symlink; YAML manifests only; at most :data:`MAX_FILES` files and :data:`MAX_BYTES` bytes as the
entries declare them, which is all zipfile will read of each) and every file loads with the loader ``loom up``
uses, without defining a Worker, Pipeline or Schedule the rest of the project already defines. An
install goes to a folder beside the app and replaces it with one rename; every archive installed is
kept under ``.loom/workshop/apps/<name>/`` (not YAML, so ``loom up`` never reads it), so an earlier
version can be installed again and a removed app restored.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import stat
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from loom.api.loader import LoadError, Resource, load_text
from loom.workshop.project import Project, Snapshot, confine, is_loom_file

APPS_DIR = "apps"
ARCHIVES_DIR = Path(".loom") / "workshop" / "apps"
STAGING_DIR = Path(".loom") / "workshop" / "staging"
MAX_FILES = 200
#: Uncompressed bytes of all files together.
MAX_BYTES = 5 * 1024 * 1024
#: Bytes of the uploaded archive itself.
MAX_ARCHIVE_BYTES = 10 * 1024 * 1024
SUFFIXES = (".yaml", ".yml")
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DRIVE = re.compile(r"^[A-Za-z]:")
#: Kinds whose names must be unique across what ``loom up`` runs together.
_NAMED = {"Worker": "worker_type", "Pipeline": "pipeline_name", "Schedule": "schedule_name"}


class BundleError(ValueError):
    """A bundle refused, with every reason."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class BundleFile:
    """One manifest of a bundle: its path inside the app folder and its text."""

    path: str
    text: str


def app_name(filename: str, given: str = "") -> str:
    """The app's folder name: ``given``, else the archive's file name without ``.zip``."""
    name = given.strip() or PurePosixPath(filename.replace("\\", "/")).name.removesuffix(".zip")
    if not _NAME.fullmatch(name):
        rule = "use lower-case letters, digits and '-' (at most 63, no leading or trailing '-')"
        raise BundleError([f"app name {name!r}: {rule}"])
    return name


def entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one archive entry cannot be installed, or ``None`` (pure)."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return f"{name}: a symbolic link (links are refused)"
    if "\\" in name:
        return f"{name}: a backslash in the path"
    if name.startswith("/") or _DRIVE.match(name):
        return f"{name}: an absolute path"
    if ".." in PurePosixPath(name).parts:
        return f"{name}: '..' leaves the app folder"
    if info.is_dir():
        return None
    if any(part.startswith(".") for part in PurePosixPath(name).parts):
        return f"{name}: a hidden file or folder"
    if not name.endswith(SUFFIXES):
        return f"{name}: not a manifest (only {', '.join(SUFFIXES)} files)"
    return None


def _common_folder(paths: Sequence[str]) -> str:
    """The one top folder every path is in (an archive made by zipping a folder), or ``""``."""
    tops = {PurePosixPath(p).parts[0] for p in paths}
    if len(tops) == 1 and all(len(PurePosixPath(p).parts) > 1 for p in paths):
        return tops.pop()
    return ""


def read_bundle(data: bytes, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> list[BundleFile]:
    """The manifests of a ZIP archive, each entry checked; every problem is reported at once."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BundleError([f"the archive is larger than {MAX_ARCHIVE_BYTES} bytes"])
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BundleError(["not a ZIP archive"]) from None
    with archive:
        infos = archive.infolist()
        problems = [p for p in map(entry_problem, infos) if p]
        files = [i for i in infos if not i.is_dir()]
        if len(files) > max_files:
            problems.append(f"{len(files)} files; a bundle holds at most {max_files}")
        declared = sum(i.file_size for i in files)
        if declared > max_bytes:
            problems.append(f"{declared} bytes uncompressed; a bundle holds at most {max_bytes}")
        if problems:
            raise BundleError(problems)
        out: list[tuple[str, str]] = []
        for info in files:
            try:  # zipfile reads no more than an entry declares, and checks its CRC
                raw = archive.read(info)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
                problems.append(f"{info.filename}: cannot be read ({exc})")
                continue
            try:
                out.append((info.filename, raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                problems.append(f"{info.filename}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    if not out and not problems:
        problems.append("no manifests in the archive")
    if problems:
        raise BundleError(problems)
    top = _common_folder([p for p, _ in out])
    strip = len(top) + 1 if top else 0
    return [BundleFile(p[strip:], t) for p, t in sorted(out)]


def validate(files: Sequence[BundleFile], name: str) -> list[Resource]:
    """Every file loaded as ``loom up`` loads it; a file that is not Loom's is refused too."""
    resources: list[Resource] = []
    problems: list[str] = []
    for f in files:
        where = f"{APPS_DIR}/{name}/{f.path}"
        if not is_loom_file(f.text):
            problems.append(
                f"{where}: not a Loom manifest (no loom.dev apiVersion and no key of a Loom kind)"
            )
            continue
        try:
            resources += load_text(f.text, where)
        except LoadError as exc:
            problems += exc.problems
    if problems:
        raise BundleError(problems)
    return resources


def clashes(app: Sequence[Resource], others: Sequence[Resource]) -> list[str]:
    """Names the app would define a second time beside the rest of the project (pure)."""
    problems = []
    for kind, attr in _NAMED.items():
        taken = {getattr(r.spec, attr): r.source for r in others if r.kind == kind}
        for r in app:
            ident = getattr(r.spec, attr) if r.kind == kind else None
            if ident is not None and ident in taken:
                problems.append(f"{r.source}: {kind} {ident!r} is already defined by {taken[ident]}")
    if any(r.kind == "RouterPolicy" for r in app) and any(r.kind == "RouterPolicy" for r in others):
        problems.append("the bundle holds a RouterPolicy and the project has one: local mode runs one")
    return problems


def split(snap: Snapshot, prefix: str) -> tuple[list[Resource], list[Resource]]:
    """The project's resources in files under ``prefix`` and the others, named by relative path."""
    inside: list[Resource] = []
    outside: list[Resource] = []
    for r in snap.resources:
        rel = snap.relative(r.source)
        (inside if rel.startswith(prefix) else outside).append(dataclasses.replace(r, source=rel))
    return inside, outside


@dataclass
class Archive:
    """One installed archive of an app, kept so it can be installed again."""

    id: str
    installed_at: float


@dataclass
class App:
    """An app as the page lists it: its files, what they define and whether they are valid."""

    name: str
    installed: bool
    files: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    pipelines: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    archives: list[Archive] = field(default_factory=list)


class Apps:
    """The apps of one project folder."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def folder(self, name: str) -> Path:
        return confine(self.root, Path(APPS_DIR) / app_name("", name))

    def _archives(self, name: str) -> Path:
        return confine(self.root, ARCHIVES_DIR / app_name("", name))

    def archives(self, name: str) -> list[Archive]:
        directory = self._archives(name)
        if not directory.is_dir():
            return []
        stamps = sorted(int(p.stem) for p in directory.glob("*.zip") if p.stem.isdigit())
        return [Archive(str(s), s / 1e9) for s in stamps]

    def names(self) -> list[str]:
        """Apps installed, and removed ones whose archives are kept."""
        found = set()
        for base in (self.root / APPS_DIR, self.root / ARCHIVES_DIR):
            if base.is_dir():
                found |= {p.name for p in base.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)}
        return sorted(found)

    def list(self) -> list[App]:
        snap = Project(self.root).load()
        return [self.describe(name, snap) for name in self.names()]

    def describe(self, name: str, snap: Snapshot) -> App:
        folder = self.folder(name)
        app = App(name, folder.is_dir(), archives=self.archives(name))
        if not app.installed:
            return app
        prefix = f"{APPS_DIR}/{name}/"
        app.files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        mine, others = split(snap, prefix)
        for w in snap.workers():
            if snap.relative(w.resource.source).startswith(prefix):
                app.workers.append(w.name)
                app.problems += [f"worker {w.name}: {p}" for p in w.problems]
        app.pipelines = sorted(r.spec.pipeline_name for r in mine if r.kind == "Pipeline")
        app.others = sorted(f"{r.kind} {r.name}" for r in mine if r.kind not in ("Worker", "Pipeline"))
        app.problems += [f"{f}: {p}" for f, ps in snap.broken.items() if f.startswith(prefix) for p in ps]
        app.problems += clashes(mine, others)
        return app

    def install(self, name: str, data: bytes) -> App:
        """Check, validate and install an archive as ``apps/<name>/`` (replacing the installed version)."""
        folder = self.folder(name)
        files = read_bundle(data)
        problems = clashes(validate(files, name), split(Project(self.root).load(), f"{APPS_DIR}/{name}/")[1])
        if problems:
            raise BundleError(problems)
        stamp = time.time_ns()
        staging = confine(self.root, STAGING_DIR / f"{name}-{stamp}")
        replaced = confine(self.root, STAGING_DIR / f"{name}-{stamp}-replaced")
        try:
            for f in files:
                target = confine(staging, f.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f.text, encoding="utf-8")
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                folder.rename(replaced)
            try:
                staging.rename(folder)
            except OSError:
                if replaced.exists():
                    replaced.rename(folder)  # the installed version stays as it was
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)
        archives = self._archives(name)
        archives.mkdir(parents=True, exist_ok=True)
        (archives / f"{stamp}.zip").write_bytes(data)
        return self.describe(name, Project(self.root).load())

    def restore(self, name: str, archive_id: str) -> App:
        """Install a kept archive again (an earlier version, or a removed app)."""
        if not archive_id.isdigit() or not (path := self._archives(name) / f"{archive_id}.zip").is_file():
            raise BundleError([f"no archive {archive_id!r} of app {name!r}"])
        return self.install(name, path.read_bytes())

    def remove(self, name: str) -> None:
        """Delete ``apps/<name>/``; its archives stay, so it can be restored."""
        folder = self.folder(name)
        if not folder.is_dir():
            raise BundleError([f"app {name!r} is not installed"])
        shutil.rmtree(folder)
