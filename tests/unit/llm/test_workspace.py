from __future__ import annotations

import os
from pathlib import Path

import pytest

from loom.core.workspace import WorkspaceError, WorkspaceManager


@pytest.fixture
def ws(tmp_path: Path) -> WorkspaceManager:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "doc.json").write_text('{"pages": 3}')
    (root / "sub").mkdir()
    (root / "sub" / "note.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("outside")
    return WorkspaceManager(root)


def test_reads_and_writes_inside(ws: WorkspaceManager) -> None:
    assert ws.read_json("doc.json") == {"pages": 3}
    assert ws.read_text("sub/note.txt") == "hello"
    path = ws.write_json("out/result.json", {"ok": True})
    assert path == ws.root.resolve() / "out" / "result.json"
    assert ws.read_json("out/result.json") == {"ok": True}
    ws.write_text("sub/note.txt", "changed")
    assert ws.read_text("sub/note.txt") == "changed"
    assert [p.name for p in (ws.root / "sub").iterdir()] == ["note.txt"]  # no temp files left


@pytest.mark.parametrize(
    "ref",
    [
        "../secret.txt",
        "sub/../../secret.txt",
        "/etc/passwd",
        "~/x",
        "C:\\x",
        "\\\\server\\share",
        "",
        "a\x00b",
    ],
)
def test_refuses_traversal_and_absolute_paths(ws: WorkspaceManager, ref: str) -> None:
    with pytest.raises(WorkspaceError):
        ws.resolve(ref)
    with pytest.raises(ValueError):
        ws.write_text(ref, "x")


def test_refuses_symlinks_that_escape(ws: WorkspaceManager, tmp_path: Path) -> None:
    os.symlink(tmp_path / "secret.txt", ws.root / "link.txt")
    os.symlink(tmp_path, ws.root / "outdir")
    with pytest.raises(WorkspaceError, match="symlink"):
        ws.read_text("link.txt")
    with pytest.raises(WorkspaceError, match="symlink"):
        ws.write_text("outdir/new.txt", "x")
    assert not (tmp_path / "new.txt").exists()
    assert (tmp_path / "secret.txt").read_text() == "outside"


def test_symlinks_inside_the_workspace_are_fine(ws: WorkspaceManager) -> None:
    os.symlink(ws.root / "sub" / "note.txt", ws.root / "alias.txt")
    assert ws.read_text("alias.txt") == "hello"


def test_original_import_path() -> None:
    from loom.core import workspace

    assert workspace.WorkspaceManager is WorkspaceManager
