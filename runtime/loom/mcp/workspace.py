"""Workspace files as MCP resources: ``workspace:///<relative path>`` URIs, glob-filtered, confined.

Patterns use gitignore semantics (``*.json`` matches at any depth, ``reports/*.md``
below ``reports/``) and are matched on the file's real path inside the workspace, so
a link named ``x.json`` to a hidden ``notes.md`` stays hidden. A URI that leaves the
workspace (``..``, an absolute path, a symlink pointing out) or names a file the
patterns hide is refused. Files are opened by an ``O_NOFOLLOW`` walk
(:func:`loom.core.workspace.open_in`), never checked first and opened later.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pathspec

from loom.core.workspace import WorkspaceError, open_in, read_bytes_in

SCHEME = "workspace"


@dataclass(frozen=True)
class WorkspaceFile:
    """One visible file."""

    ref: str  # POSIX path relative to the workspace
    size: int
    mtime_ns: int

    @property
    def uri(self) -> str:
        return file_uri(self.ref)

    @property
    def mime_type(self) -> str:
        return guess_mime(self.ref)


def file_uri(ref: str) -> str:
    """The resource URI of a workspace-relative path."""
    return f"{SCHEME}:///{quote(ref)}"


def uri_ref(uri: str) -> str:
    """The workspace-relative path a ``workspace:///`` URI names; WorkspaceError if it is not one."""
    parts = urlsplit(uri)
    if parts.scheme != SCHEME:
        raise WorkspaceError(f"{uri!r} is not a {SCHEME}:/// URI")
    if parts.netloc:
        raise WorkspaceError(f"{uri!r} has a host; use {SCHEME}:///<path>")
    ref = unquote(parts.path).removeprefix("/")
    if not ref:
        raise WorkspaceError(f"{uri!r} names no file")
    return ref


def guess_mime(ref: str) -> str:
    """A MIME type from the file name (``application/octet-stream`` when unknown)."""
    return mimetypes.guess_type(ref)[0] or "application/octet-stream"


class Workspace:
    """The files of one directory that match the configured patterns."""

    def __init__(self, root: Path, patterns: Sequence[str] = ("*",)):
        self.root = root
        self.spec = pathspec.GitIgnoreSpec.from_lines(list(patterns) or ["*"])

    def visible(self, ref: str) -> bool:
        """Whether a relative path matches the patterns."""
        return bool(self.spec.match_file(ref))

    def files(self) -> list[WorkspaceFile]:
        """Every visible regular file, sorted by path (symlinks out of the workspace skipped; a link
        inside is listed under its name when its target's real path is visible)."""
        root = self.root.resolve()
        out: list[WorkspaceFile] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath).relative_to(root)
            for name in sorted(filenames):
                ref = (base / name).as_posix()
                try:
                    fd, real = open_in(root, ref, os.O_RDONLY | os.O_NONBLOCK)
                except (WorkspaceError, OSError):
                    continue
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                if stat.S_ISREG(st.st_mode) and self.visible(real):
                    out.append(WorkspaceFile(ref, st.st_size, st.st_mtime_ns))
        return sorted(out, key=lambda f: f.ref)
    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Path -> (size, mtime): compared after tool calls to notice new and changed files."""
        return {f.ref: (f.size, f.mtime_ns) for f in self.files()}

    def read(self, uri: str) -> tuple[str, bytes]:
        """(MIME type, bytes) of the file a URI names; WorkspaceError when refused or absent."""
        ref = uri_ref(uri)
        if not self.visible(ref):  # refused before looking, so a hidden file's existence is not revealed
            raise WorkspaceError(f"{uri!r} is not one of the published workspace files")
        try:
            data, real = read_bytes_in(self.root, ref)
        except FileNotFoundError:
            raise WorkspaceError(f"{uri!r}: no such file in the workspace") from None
        except OSError as exc:
            raise WorkspaceError(f"{uri!r}: cannot be read ({exc.strerror})") from None
        if not self.visible(real):
            raise WorkspaceError(f"{uri!r} is not one of the published workspace files")
        return guess_mime(ref), data


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> tuple[bool, list[str]]:
    """(whether the file list changed, refs of files that exist in both and were modified)."""
    return set(before) != set(after), sorted(r for r in after.keys() & before.keys() if after[r] != before[r])
