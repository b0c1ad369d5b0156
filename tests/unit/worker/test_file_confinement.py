"""Files are judged by what they are, not by a link's name: MCP resource patterns match the real
path inside the workspace, and knowledge folders never read through a link out of the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loom.core.workspace import WorkspaceError, WorkspaceManager
from loom.mcp.workspace import Workspace, file_uri
from loom.worker.knowledge import FolderSilo


def test_resource_patterns_match_the_link_target_not_the_link_name(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "private").mkdir(parents=True)
    (root / "private" / "notes.md").write_text("hidden notes")
    (root / "report.json").write_text("{}")
    os.symlink(root / "private" / "notes.md", root / "disguised.json")  # a .json name for a hidden file
    os.symlink("report.json", root / "alias.json")  # a link to a published file stays published
    ws = Workspace(root, ["*.json"])
    assert [f.ref for f in ws.files()] == ["alias.json", "report.json"]
    with pytest.raises(WorkspaceError, match="not one of the published"):
        ws.read(file_uri("disguised.json"))
    assert ws.read(file_uri("alias.json")) == ("application/json", b"{}")


def test_hidden_files_do_not_reveal_whether_they_exist(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "notes.md").write_text("x")
    ws = Workspace(root, ["*.json"])
    for ref in ("notes.md", "absent.md"):
        with pytest.raises(WorkspaceError, match="not one of the published"):
            ws.read(file_uri(ref))


def test_knowledge_folders_do_not_follow_links_out(tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("inside")
    (tmp_path / "secret.md").write_text("outside secret")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "b.md").write_text("outside dir")
    os.symlink(tmp_path / "secret.md", folder / "leak.md")
    os.symlink(tmp_path / "outdir", folder / "sub" / "linked")
    os.symlink(folder / "a.md", folder / "same.md")  # inside the folder: fine
    text = FolderSilo("kb", folder, writable=False).read()
    assert dict(text.files) == {"a.md": "inside", "same.md": "inside"}


def test_writes_never_go_through_a_link_out(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "target.txt").write_text("untouched")
    os.symlink(tmp_path / "target.txt", root / "out.txt")
    ws = WorkspaceManager(root)
    ws.write_text("out.txt", "new")  # the link itself is replaced by a file in the workspace
    assert (tmp_path / "target.txt").read_text() == "untouched"
    assert not (root / "out.txt").is_symlink() and (root / "out.txt").read_text() == "new"
    ws.write_text("deep/er/file.txt", "made")
    assert ws.read_text("deep/er/file.txt") == "made"
