from __future__ import annotations

import os
from pathlib import Path

import pytest

from loom.worker.knowledge import (
    FolderSilo,
    KnowledgeError,
    apply_silo_changes,
    load_few_shot,
    load_reference,
    plan_silo_updates,
)


def test_reference_and_few_shot(tmp_path: Path) -> None:
    (tmp_path / "terms.md").write_text("# Terms\n")
    assert load_reference(tmp_path / "terms.md").title == "terms.md"
    (tmp_path / "ex.yaml").write_text("- input: a\n  output: b\n- input: {x: 1}\n  output: [1]\n")
    assert [(e.input, e.output) for e in load_few_shot(tmp_path / "ex.yaml")] == [("a", "b"), ({"x": 1}, [1])]
    (tmp_path / "ex.jsonl").write_text('{"input": "q", "output": {"y": 2}}\n\n{"input": 1, "output": 2}\n')
    assert [(e.input, e.output) for e in load_few_shot(tmp_path / "ex.jsonl")] == [("q", {"y": 2}), (1, 2)]
    (tmp_path / "bad.yaml").write_text("- input: a\n")
    with pytest.raises(KnowledgeError, match="example 1 needs"):
        load_few_shot(tmp_path / "bad.yaml")
    with pytest.raises(KnowledgeError, match=r"missing\.md"):
        load_reference(tmp_path / "missing.md")


def test_folder_silo_honours_siloignore(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    (root / "__pycache__").mkdir(parents=True)
    (root / "deep").mkdir()
    (root / "a.md").write_text("A")
    (root / "deep" / "b.md").write_text("B")
    (root / "deep" / "scratch.tmp").write_text("T")
    (root / "__pycache__" / "x.md").write_text("X")
    (root / "keep.tmp").write_text("K")
    (root / ".siloignore").write_text("# comment\n*.tmp\n!keep.tmp\n__pycache__/\n")
    text = FolderSilo("rules", root, False).read()
    assert text.files == (("a.md", "A"), ("deep/b.md", "B"), ("keep.tmp", "K"))


@pytest.fixture
def silos(tmp_path: Path) -> dict[str, FolderSilo]:
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "old.md").write_text("old")
    (rw / "gone.md").write_text("bye")
    return {"rw": FolderSilo("rw", rw, True), "ro": FolderSilo("ro", ro, False)}


def test_updates_applied_together(silos: dict[str, FolderSilo]) -> None:
    changes, problems = plan_silo_updates(
        [
            {"silo": "rw", "action": "add", "filename": "new/pattern.md", "content": "P"},
            {"silo": "rw", "action": "modify", "filename": "old.md", "content": "new"},
            {"silo": "rw", "action": "delete", "filename": "gone.md"},
        ],
        silos,
    )
    assert problems == []
    apply_silo_changes(changes)
    root = silos["rw"].root
    assert (root / "new" / "pattern.md").read_text() == "P"
    assert (root / "old.md").read_text() == "new"
    assert not (root / "gone.md").exists()
    assert sorted(p.name for p in root.rglob("*")) == ["new", "old.md", "pattern.md"]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"silo": "rw", "action": "add", "filename": "../escape.md", "content": "x"}, "'..' is not allowed"),
        ({"silo": "rw", "action": "add", "filename": "/tmp/abs.md", "content": "x"}, "absolute"),
        ({"silo": "ro", "action": "add", "filename": "a.md", "content": "x"}, "read-only"),
        ({"silo": "nope", "action": "add", "filename": "a.md", "content": "x"}, "unknown silo"),
        ({"silo": "rw", "action": "rename", "filename": "a.md"}, "action must be"),
        ({"silo": "rw", "action": "modify", "filename": "missing.md", "content": "x"}, "no such file"),
        ({"silo": "rw", "action": "add", "filename": "a.md"}, "needs string content"),
        ({"silo": "rw", "action": "add", "filename": ".siloignore", "content": "*"}, "not a writable file"),
    ],
)
def test_bad_updates_are_refused(silos: dict[str, FolderSilo], update: dict[str, str], message: str) -> None:
    changes, problems = plan_silo_updates(
        [{"silo": "rw", "action": "delete", "filename": "gone.md"}, update], silos
    )
    assert changes == []
    assert len(problems) == 1 and message in problems[0]
    assert (silos["rw"].root / "gone.md").exists()


def test_symlink_escape_is_refused(silos: dict[str, FolderSilo], tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, silos["rw"].root / "link")
    _, problems = plan_silo_updates(
        [{"silo": "rw", "action": "add", "filename": "link/evil.md", "content": "x"}], silos
    )
    assert problems and "outside" in problems[0]
    assert list(outside.iterdir()) == []


def test_batch_is_all_or_nothing(silos: dict[str, FolderSilo]) -> None:
    root = silos["rw"].root
    (root / "blocker").write_text("a file where a folder is needed")
    changes, problems = plan_silo_updates(
        [
            {"silo": "rw", "action": "modify", "filename": "old.md", "content": "changed"},
            {"silo": "rw", "action": "delete", "filename": "gone.md"},
            {"silo": "rw", "action": "add", "filename": "blocker/x.md", "content": "x"},
        ],
        silos,
    )
    assert problems == []
    with pytest.raises(OSError):
        apply_silo_changes(changes)
    assert (root / "old.md").read_text() == "old"
    assert (root / "gone.md").read_text() == "bye"
    assert sorted(p.name for p in root.iterdir()) == ["blocker", "gone.md", "old.md"]
