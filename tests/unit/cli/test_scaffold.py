"""``loom new``: generated files load and validate; flags and the interactive flow (stdin) both work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loom.api.loader import load_paths
from loom.scaffold import (
    FieldDef,
    PipelineAnswers,
    StageAnswers,
    WorkerAnswers,
    manifest_name,
    object_schema,
    parse_fields,
    parse_mapping,
    parse_stage,
    render_pipeline,
    render_worker,
)


def _loom(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loom.cli.main", *args], input=stdin, capture_output=True, text=True,
        cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=60,
    )


def test_parse_fields_and_schema() -> None:
    fields = parse_fields("text, count:integer, tags:array?, ok:boolean")
    assert fields == [FieldDef("text"), FieldDef("count", "integer"), FieldDef("tags", "array", False),
                      FieldDef("ok", "boolean")]
    schema = object_schema(fields)
    assert schema["required"] == ["text", "count", "ok"]
    assert schema["properties"]["text"] == {"type": "string", "minLength": 1}
    assert schema["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    bads = (("x:float", "type must be one of"), ("1x", "expected name"), ("a, a", "given twice"))
    for bad, message in bads:
        with pytest.raises(ValueError, match=message):
            parse_fields(bad)


def test_parse_stage_and_mapping() -> None:
    assert parse_stage("extract=doc_extractor@local") == StageAnswers("extract", "doc_extractor", "local")
    assert parse_stage("s=w").tier is None
    assert parse_mapping("a=goal.context.a, b = s.output.b") == {"a": "goal.context.a", "b": "s.output.b"}
    with pytest.raises(ValueError):
        parse_stage("nothing")
    with pytest.raises(ValueError):
        parse_mapping("a")


@pytest.mark.parametrize("manifest", [False, True])
def test_rendered_workers_load(tmp_path: Path, manifest: bool) -> None:
    llm = WorkerAnswers(name="entity_extractor", description="Extracts entities.",
                        outputs=parse_fields("people:array, count:integer"))
    proc = WorkerAnswers(name="pdf", kind="processor", processing_backend="loom.contrib.noop.EchoBackend",
                         tier="standard", timeout_seconds=120)
    namespace = "ai" if manifest else None
    (tmp_path / "llm.yaml").write_text(render_worker(llm, manifest=manifest, namespace=namespace))
    (tmp_path / "proc.yaml").write_text(render_worker(proc, manifest=manifest))
    found = {r.name: r for r in load_paths([tmp_path])}
    worker = found["entity-extractor"]  # the same object name from a plain file and a manifest
    assert worker.is_manifest is manifest and worker.spec.worker_type == "entity_extractor"
    assert worker.namespace == ("ai" if manifest else None)
    assert "- text (string)" in worker.spec.system_prompt and '"people": []' in worker.spec.system_prompt
    assert worker.spec.output_schema["required"] == ["people", "count"]
    assert worker.spec.default_model_tier == "local"
    pdf = found["pdf"].spec
    assert (pdf.worker_kind, pdf.processing_backend, pdf.default_model_tier, pdf.timeout_seconds) == (
        "processor", "loom.contrib.noop.EchoBackend", "standard", 120)
    with pytest.raises(ValueError, match="processing backend"):
        render_worker(WorkerAnswers(name="x", kind="processor"))


@pytest.mark.parametrize("manifest", [False, True])
def test_rendered_pipeline_loads(tmp_path: Path, manifest: bool) -> None:
    answers = PipelineAnswers(name="analysis_pipeline", description="Analyse documents.", stages=[
        StageAnswers("extract", "doc_extractor", "local", {"file_ref": "goal.context.file_ref"}),
        StageAnswers("classify", "doc_classifier", None, {"text": "extract.output.text"}),
        StageAnswers("ocr", "ocr_worker", None, {"file_ref": "goal.context.file_ref"},
                     condition="extract.output.needs_ocr == true"),
    ], timeout_seconds=600)
    path = tmp_path / "p.yaml"
    path.write_text(render_pipeline(answers, manifest=manifest))
    [res] = load_paths([path])
    assert res.kind == "Pipeline" and res.spec.pipeline_name == "analysis_pipeline"
    assert res.name == "analysis-pipeline"
    assert [s.name for s in res.spec.pipeline_stages] == ["extract", "classify", "ocr"]
    assert res.spec.pipeline_stages[2].condition == "extract.output.needs_ocr == true"
    assert res.spec.timeout_seconds == 600
    assert manifest_name("Doc_Classifier") == "doc-classifier"


def test_non_interactive_flags_write_a_valid_file_and_never_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "configs" / "summarizer.yaml"
    args = ("new", "worker", "--non-interactive", "--name", "summarizer", "--description", "Summarize text.",
            "--input-field", "text", "--output-field", "summary, key_points:array", "-o", str(out))
    first = _loom(*args)
    assert first.returncode == 0, first.stderr
    assert f"wrote {out} (Worker/summarizer)" in first.stderr
    assert _loom("validate", str(out)).returncode == 0
    original = out.read_text()
    again = _loom(*args[:-2], "--tier", "frontier", "-o", str(out))
    assert again.returncode == 1 and "exists; use --force" in again.stderr
    assert out.read_text() == original
    forced = _loom(*args[:-2], "--tier", "frontier", "-o", str(out), "--force")
    assert forced.returncode == 0 and "default_model_tier: frontier" in out.read_text()

    stdout = _loom("new", "pipeline", "--non-interactive", "--name", "flow", "--manifest",
                   "--stage", "a=extractor@local", "--stage", "b=summarizer",
                   "--map", "a.file_ref=goal.context.file_ref", "-o", "-")
    assert stdout.returncode == 0, stdout.stderr
    assert stdout.stdout.startswith("# Loom pipeline flow") and "kind: Pipeline" in stdout.stdout
    assert "file_ref: goal.context.file_ref" in stdout.stdout and "text: a.output.text" in stdout.stdout

    missing = _loom("new", "pipeline", "--non-interactive", "--name", "flow", "-o", "-")
    assert missing.returncode == 2 and "at least one --stage" in missing.stderr
    no_name = _loom("new", "worker", "--non-interactive", "-o", "-")
    assert no_name.returncode == 2 and "required" in no_name.stderr
    bad = _loom("new", "worker", "--non-interactive", "--name", "Bad Name", "-o", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 2 and "Worker.name" in bad.stderr and not (tmp_path / "bad.yaml").exists()


def test_interactive_worker_through_stdin(tmp_path: Path) -> None:
    answers = "\n".join([
        "Not Valid",                       # worker name: refused, asked again
        "pdf_converter",
        "Converts PDFs to text.",
        "robot",                           # kind: refused, asked again
        "processor",
        "loom.contrib.noop.EchoBackend",
        "",                                # tier: default local
        "file_ref",
        "text, pages:integer",
        "120",
    ]) + "\n"
    result = _loom("new", "worker", stdin=answers, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is not a valid worker name" in result.stderr and "answer llm or processor" in result.stderr
    [res] = load_paths([tmp_path / "pdf_converter.yaml"])
    spec = res.spec
    assert (spec.worker_type, spec.worker_kind, spec.processing_backend) == (
        "pdf_converter", "processor", "loom.contrib.noop.EchoBackend")
    assert spec.description == "Converts PDFs to text." and spec.default_model_tier == "local"
    assert spec.input_schema["required"] == ["file_ref"]
    assert spec.output_schema["properties"]["pages"] == {"type": "integer"}
    assert spec.timeout_seconds == 120


def test_interactive_pipeline_manifest_through_stdin(tmp_path: Path) -> None:
    answers = "\n".join([
        "doc_flow", "",
        "extract", "doc_extractor", "local", "file_ref=goal.context.file_ref",
        "summarize", "summarizer", "", "",  # default mapping: the previous stage's text
        "",                                 # no more stages
        "",                                 # timeout: default
    ]) + "\n"
    out = tmp_path / "flow.yaml"
    result = _loom("new", "pipeline", "--manifest", "-o", str(out), stdin=answers)
    assert result.returncode == 0, result.stderr
    [res] = load_paths([out])
    assert res.is_manifest and res.name == "doc-flow" and res.spec.pipeline_name == "doc_flow"
    stages = res.spec.pipeline_stages
    assert [(s.name, s.worker_type, s.tier) for s in stages] == [
        ("extract", "doc_extractor", "local"), ("summarize", "summarizer", None)]
    assert stages[1].input_mapping == {"text": "extract.output.text"}
    assert _loom("validate", str(out)).returncode == 0


def test_interactive_input_ending_early_writes_nothing(tmp_path: Path) -> None:
    result = _loom("new", "worker", stdin="half_done\n", cwd=tmp_path)
    assert result.returncode == 2 and "input ended at: Description" in result.stderr
    assert list(tmp_path.iterdir()) == []
