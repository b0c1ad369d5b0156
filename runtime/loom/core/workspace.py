"""Safe file access inside one workspace directory.

Every reference is a relative path; absolute paths, ``..`` components and
symlinks that lead outside the workspace are refused with :class:`WorkspaceError`
(a ``ValueError``, as in the original Loom). Writes are atomic: a temporary file
in the same directory, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any


class WorkspaceError(ValueError):
    """A reference that points outside the workspace, or is not a usable relative path."""


def check_relative(ref: str) -> PurePosixPath:
    """``ref`` as a relative path with no ``..``; raises :class:`WorkspaceError` otherwise."""
    if not isinstance(ref, str) or not ref.strip():
        raise WorkspaceError("a file reference must be a non-empty string")
    if "\x00" in ref:
        raise WorkspaceError(f"file reference {ref!r} contains a NUL byte")
    if ref.startswith(("/", "\\", "~")) or PureWindowsPath(ref).drive or PureWindowsPath(ref).root:
        raise WorkspaceError(f"file reference {ref!r} is absolute; use a path relative to the workspace")
    path = PurePosixPath(ref.replace("\\", "/"))
    if ".." in path.parts:
        raise WorkspaceError(f"file reference {ref!r} leaves the workspace ('..' is not allowed)")
    return path


def confined(root: Path, ref: str) -> Path:
    """The real path of ``ref`` under ``root`` (symlinks followed), refusing anything outside ``root``."""
    rel = check_relative(ref)
    real_root = root.resolve()
    target = (real_root / rel).resolve()
    if target != real_root and not target.is_relative_to(real_root):
        raise WorkspaceError(f"file reference {ref!r} resolves outside the workspace (through a symlink)")
    return target


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WorkspaceManager:
    """Read and write files by workspace-relative reference."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def resolve(self, ref: str) -> Path:
        """The absolute path of ``ref``; raises :class:`WorkspaceError` when it would escape."""
        return confined(self.root, ref)

    def read_text(self, ref: str) -> str:
        """The file's text (UTF-8)."""
        return self.resolve(ref).read_text(encoding="utf-8")

    def read_json(self, ref: str) -> Any:
        """The file parsed as JSON."""
        return json.loads(self.read_text(ref))

    def write_text(self, ref: str, text: str) -> Path:
        """Write text atomically; returns the path written."""
        path = self.resolve(ref)
        atomic_write(path, text.encode("utf-8"))
        return path

    def write_json(self, ref: str, data: Any) -> Path:
        """Write JSON atomically; returns the path written."""
        return self.write_text(ref, json.dumps(data, ensure_ascii=False, indent=2))

    def __repr__(self) -> str:
        return f"WorkspaceManager({str(self.root)!r})"
