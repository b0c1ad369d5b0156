"""``knowledge_problems``: what ``loom validate`` reports and ``loom worker`` refuses to start on."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.api.worker import WorkerSpec
from loom.worker.knowledge import knowledge_problems


def _worker(**fields: object) -> WorkerSpec:
    return WorkerSpec.model_validate({"name": "w", "system_prompt": "p", **fields})


def test_present_files_and_folders_pass(tmp_path: Path) -> None:
    (tmp_path / "terms.md").write_text("# Terms\n")
    (tmp_path / "ex.yaml").write_text("- {input: a, output: b}\n")
    (tmp_path / "rules").mkdir()
    spec = _worker(
        knowledge_sources=[
            {"path": "terms.md"},
            {"path": str(tmp_path / "ex.yaml"), "inject_as": "few_shot"},
        ],
        knowledge_silos=[{"name": "r", "type": "folder", "path": "rules"}],
    )
    assert knowledge_problems(spec, tmp_path) == []


def test_a_missing_file_names_the_path_and_the_folder_relative_paths_start_from(tmp_path: Path) -> None:
    spec = _worker(
        knowledge_sources=[{"path": "knowledge/terms.md"}],
        knowledge_silos=[{"name": "r", "type": "folder", "path": "rules"}],
    )
    assert knowledge_problems(spec, tmp_path) == [
        f"knowledgeSources[0].path 'knowledge/terms.md': no such file: {tmp_path / 'knowledge/terms.md'} "
        f"(relative paths are read from {tmp_path})",
        f"knowledgeSilos[0] (r).path 'rules': no such folder: {tmp_path / 'rules'} "
        f"(relative paths are read from {tmp_path})",
    ]


def test_a_path_written_from_the_current_directory_gets_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "configs" / "knowledge").mkdir(parents=True)
    (tmp_path / "configs" / "workers").mkdir()
    (tmp_path / "configs" / "knowledge" / "terms.md").write_text("T")
    monkeypatch.chdir(tmp_path)  # the original's guide runs from the project root
    spec = _worker(knowledge_sources=[{"path": "configs/knowledge/terms.md"}])
    (problem,) = knowledge_problems(spec, tmp_path / "configs" / "workers")
    assert f"it exists relative to the current directory: pass --base-dir {tmp_path}" in problem


def test_a_malformed_few_shot_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "ex.yaml").write_text("- input: a\n")
    spec = _worker(knowledge_sources=[{"path": "ex.yaml", "inject_as": "few_shot"}])
    (problem,) = knowledge_problems(spec, tmp_path)
    assert "example 1 needs 'input' and 'output'" in problem


def test_processor_workers_load_no_knowledge(tmp_path: Path) -> None:
    spec = WorkerSpec.model_validate(
        {
            "name": "p",
            "worker_kind": "processor",
            "processing_backend": "loom.contrib.noop.EchoBackend",
            "knowledge_sources": [{"path": "nowhere.md"}],
        }
    )
    assert knowledge_problems(spec, tmp_path) == []
