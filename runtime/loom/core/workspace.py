"""Safe file access inside one workspace directory.

Every reference is a relative path; absolute paths, ``..`` components and
symlinks that lead outside the workspace are refused with :class:`WorkspaceError`
(a ``ValueError``, as in the original Loom). Writes are atomic: a temporary file
in the same directory, then ``os.replace``.

Files are opened by walking the path one component at a time from a directory
file descriptor (``openat`` with ``O_NOFOLLOW``), so what is checked is what is
opened: a directory swapped for a symlink between a check and an open cannot
redirect a read or write outside. Symlinks are followed only by this walk, and
only while they stay inside the root (what ``openat2``'s ``RESOLVE_IN_ROOT`` does).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import uuid
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


#: Symlinks followed in one walk before giving up (the kernel's own limit).
MAX_SYMLINKS = 40
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_in(
    root: Path, ref: str, flags: int = os.O_RDONLY, *, parent_only: bool = False, make_dirs: bool = False
) -> tuple[int, str]:
    """Open ``ref`` below ``root`` by walking it with ``openat`` + ``O_NOFOLLOW``; returns (fd, real ref).

    The real ref is the path inside ``root`` that was opened, symlinks resolved. With
    ``parent_only`` the fd is the directory that holds the last component (its name is
    the real ref's last part), for creating or replacing it there. ``make_dirs`` creates
    missing directories on the way. Raises :class:`WorkspaceError` for anything that
    leaves ``root``, OSError (e.g. FileNotFoundError) otherwise.
    """
    rel = check_relative(ref)
    pending = [p for p in rel.parts if p not in ("", ".")]
    if not pending:
        raise WorkspaceError(f"file reference {ref!r} names the workspace itself")
    root_real = os.path.realpath(root)
    root_fd = os.open(root_real, _DIR)
    stack: list[int] = []  # directories entered below the root (each an open fd)
    where: list[str] = []  # their names: the real path so far
    links = 0
    outside = WorkspaceError(f"file reference {ref!r} resolves outside the workspace (through a symlink)")
    try:
        while pending:
            name = pending.pop(0)
            cur = stack[-1] if stack else root_fd
            if name == "..":
                if not stack:
                    raise outside
                os.close(stack.pop())
                where.pop()
                continue
            last = not pending
            if last and parent_only:  # a symlink in the last place is replaced by the rename, not followed
                return os.dup(cur), "/".join([*where, name])
            try:
                fd = os.open(name, (flags | _NOFOLLOW) if last else _DIR, dir_fd=cur)
            except OSError as exc:
                if make_dirs and not last and exc.errno == errno.ENOENT:
                    os.mkdir(name, dir_fd=cur)
                    pending.insert(0, name)
                    continue
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) or not _is_link(name, cur):
                    raise
                links += 1
                if links > MAX_SYMLINKS:
                    raise WorkspaceError(f"file reference {ref!r}: too many symlinks") from None
                target = os.readlink(name, dir_fd=cur)
                if os.path.isabs(target):
                    if target != root_real and not target.startswith(root_real.rstrip(os.sep) + os.sep):
                        raise outside from None
                    while stack:
                        os.close(stack.pop())
                    where.clear()
                    target = os.path.relpath(target, root_real)
                pending[:0] = [p for p in PurePosixPath(target).parts if p not in ("", ".")]
                continue
            if last:
                return fd, "/".join([*where, name])
            stack.append(fd)
            where.append(name)
        raise WorkspaceError(f"file reference {ref!r} names the workspace itself")
    finally:
        for fd in stack:
            os.close(fd)
        os.close(root_fd)


def read_bytes_in(root: Path, ref: str) -> tuple[bytes, str]:
    """(content, real ref) of a regular file below ``root``, opened without a check-then-open race."""
    fd, real = open_in(root, ref, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise WorkspaceError(f"file reference {ref!r} is not a regular file")
        return handle.read(), real


def write_bytes_in(root: Path, ref: str, data: bytes) -> str:
    """Write a file below ``root`` atomically (temporary file + rename in the same directory fd);
    returns the real ref written. A symlink in its place is replaced, not written through."""
    dir_fd, real = open_in(root, ref, parent_only=True, make_dirs=True)
    name = real.rsplit("/", 1)[-1]
    tmp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
    return real


class WorkspaceManager:
    """Read and write files by workspace-relative reference."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def resolve(self, ref: str) -> Path:
        """The absolute path of ``ref``; raises :class:`WorkspaceError` when it would escape."""
        return confined(self.root, ref)

    def read_text(self, ref: str) -> str:
        """The file's text (UTF-8)."""
        return read_bytes_in(self.root, ref)[0].decode("utf-8")

    def read_json(self, ref: str) -> Any:
        """The file parsed as JSON."""
        return json.loads(self.read_text(ref))

    def write_text(self, ref: str, text: str) -> Path:
        """Write text atomically; returns the path written."""
        real = write_bytes_in(self.root, ref, text.encode("utf-8"))
        return Path(os.path.realpath(self.root)) / real

    def write_json(self, ref: str, data: Any) -> Path:
        """Write JSON atomically; returns the path written."""
        return self.write_text(ref, json.dumps(data, ensure_ascii=False, indent=2))

    def __repr__(self) -> str:
        return f"WorkspaceManager({str(self.root)!r})"
