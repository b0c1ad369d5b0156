"""The project folder: confinement of every path, file-by-file loading, the workers' validation state,
and the impact of a schema change on pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loom.workshop.impact import impact
from loom.workshop.project import ConfinementError, Project, confine, schema_summary

ROOT = Path(__file__).resolve().parents[3]


def test_confine_refuses_every_way_out(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "secret.yaml").write_text("x: 1")
    os.symlink(tmp_path / "secret.yaml", tmp_path / "p" / "link.yaml")
    root = tmp_path / "p"
    assert confine(root, "a/b.yaml") == root.resolve() / "a" / "b.yaml"
    assert confine(root, root / "x.yaml") == root.resolve() / "x.yaml"
    for bad in (
        "../secret.yaml",
        "a/../../secret.yaml",
        str(tmp_path / "secret.yaml"),
        "/etc/passwd",
        "link.yaml",
    ):
        with pytest.raises(ConfinementError, match="outside the project folder"):
            confine(root, bad)
    with pytest.raises(ConfinementError):
        Project(root, [str(tmp_path)])


def test_samples_load_with_state_and_a_broken_file_is_listed(tmp_path: Path) -> None:
    for f in (ROOT / "config" / "samples").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "bad.yaml").write_text("name: x\nsystem_prompt: hi\nsystem_promt: typo\n")
    off = tmp_path / "worker-off-tier.yaml"
    off.write_text(
        (tmp_path / "worker-doc-summarizer.yaml")
        .read_text()
        .replace("doc-summarizer", "off-tier")
        .replace("tiers: [local]", "tiers: [local, gold]")
    )
    (tmp_path / ".loom" / "workshop" / "versions").mkdir(parents=True)
    (tmp_path / ".loom" / "workshop" / "versions" / "old.yaml").write_text("{broken")  # never loaded
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "any.yaml").write_text("{broken")  # hidden folders are not searched
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "pkg.yaml").write_text("{broken")
    assert [f.name for f in Project(tmp_path, [tmp_path / ".venv"]).files()] == ["any.yaml"]  # named: read
    snap = Project(tmp_path).load()
    workers = {w.name: w for w in snap.workers()}
    assert sorted(workers) == [
        "doc-classifier",
        "doc-extractor",
        "doc-summarizer",
        "off-tier",
        "report-assembler",
    ]
    assert workers["doc-classifier"].problems == []
    assert workers["off-tier"].problems == ["tier 'gold' is not defined by the RouterPolicy"]
    assert list(snap.broken) == ["bad.yaml"] and "unknown key 'system_promt'" in snap.broken["bad.yaml"][0]
    assert snap.tiers() == ["local", "standard"]
    assert schema_summary(workers["doc-classifier"].spec.input_schema) == "title: string, text*: string"
    assert schema_summary(workers["doc-classifier"].spec.output_schema) == "category*: enum"


def test_impact_names_the_stages_and_the_mappings_a_change_breaks() -> None:
    snap = Project(ROOT / "config" / "samples").load()
    extractor = snap.worker("doc-extractor").spec
    [use] = impact(snap.resources, "doc-extractor", extractor)
    assert (use.pipeline, use.stage, use.breaks) == ("doc-analysis", "extract", [])
    changed = extractor.model_copy(
        update={
            "output_schema": {"type": "object", "properties": {"title": {}, "summary": {}}},
            "input_schema": {
                "type": "object",
                "required": ["text", "lang"],
                "additionalProperties": False,
                "properties": {"lang": {}},
            },
        }
    )
    [use] = impact(snap.resources, "doc-extractor", changed)
    assert use.breaks == [
        "inputMapping lacks required input field 'lang'",
        "inputMapping.text: not a field of the input schema",
        "stage classify: inputMapping.text reads 'extract.output.excerpt': no field 'excerpt' in the output",
        "stage summarise: inputMapping.text reads 'extract.output.excerpt': no field 'excerpt' in the output",
    ]  # report reads the whole output (extract.output): no field to lose


def test_yaml_that_is_not_for_loom_is_not_listed(tmp_path: Path) -> None:
    (tmp_path / "ci.yaml").write_text("name: CI\non: push\njobs: {test: {runs-on: ubuntu}}\n")
    (tmp_path / "crd.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    (tmp_path / "typo.yaml").write_text("name: w\nsystem_prompt: [unclosed\n")  # unparsable: shown
    (tmp_path / "worker.yaml").write_text(
        "name: w\nsystem_prompt: hi\nsystem_promt: typo\n"
    )  # a Loom key: shown
    snap = Project(tmp_path).load()
    assert sorted(snap.broken) == ["typo.yaml", "worker.yaml"]
