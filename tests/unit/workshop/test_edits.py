"""Round-trip edits of worker files: comments, block scalars and other text kept; invalid edits refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.api.loader import load_paths
from loom.workshop.edits import (
    EditError,
    Versions,
    WorkerEdit,
    apply_edit,
    clone_text,
    current,
    save,
    unified_diff,
)
from loom.workshop.project import ConfinementError

ROOT = Path(__file__).resolve().parents[3]

PLAIN = """\
# plain original-style worker file
name: summarizer
worker_kind: llm
system_prompt: Summarise.   # one line
input_schema:
  type: object
  properties:
    text: {type: string}
output_schema:
  type: object
  required: [summary]
  properties:
    summary: {type: string}
"""

OTHER = """\
apiVersion: loom.dev/v1alpha1
kind: RouterPolicy
metadata:
  name: default
spec:
  tiers:
    - name: local
      backend: local
"""


def test_unchanged_edit_gives_back_every_sample_file_byte_for_byte() -> None:
    for path in sorted((ROOT / "config" / "samples").glob("worker-*.yaml")):
        text = path.read_text()
        name = next(line.split(":")[1].strip() for line in text.splitlines() if line.startswith("  name:"))
        new, _ = apply_edit(text, path.name, name, current(text, path.name, name))
        assert new == text, path.name


def test_prompt_edit_keeps_comments_and_keys_of_a_plain_file() -> None:
    boxes = current(PLAIN, "w.yaml", "summarizer")
    new, res = apply_edit(
        PLAIN,
        "w.yaml",
        "summarizer",
        WorkerEdit("Summarise.\nBe short.", boxes.input_schema, boxes.output_schema),
    )
    assert res.spec.system_prompt == "Summarise.\nBe short.\n"  # a multi-line prompt stays a block scalar
    assert "system_prompt: |\n  Summarise.\n  Be short.\n" in new
    assert "# plain original-style worker file" in new and "# one line" in new
    assert new.endswith(PLAIN[PLAIN.index("input_schema:") :])


def test_schema_edit_replaces_only_that_schema() -> None:
    boxes = current(PLAIN, "w.yaml", "summarizer")
    out = boxes.output_schema.replace("[summary]", "[summary, title]").replace(
        "summary: {type: string}", "summary: {type: string}\n  title: {type: string}"
    )
    new, res = apply_edit(
        PLAIN, "w.yaml", "summarizer", WorkerEdit(boxes.system_prompt, boxes.input_schema, out)
    )
    assert res.spec.output_schema["required"] == ["summary", "title"]
    diff = unified_diff(PLAIN, new, "w.yaml")
    assert [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        "-  required: [summary]",
        "+  required: [summary, title]",
        "+    title: {type: string}",
    ]


@pytest.mark.parametrize(
    ("output_schema", "expected"),
    [
        ("type: objekt\n", "outputSchema: type: 'objekt' is not valid"),
        ("[1, 2]\n", "output schema: must be a mapping"),
        ("type: {\n", "output schema: invalid YAML/JSON"),
    ],
)
def test_invalid_edits_are_refused_with_the_reason(output_schema: str, expected: str) -> None:
    boxes = current(PLAIN, "w.yaml", "summarizer")
    with pytest.raises(EditError) as err:
        apply_edit(
            PLAIN, "w.yaml", "summarizer", WorkerEdit(boxes.system_prompt, boxes.input_schema, output_schema)
        )
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_the_edited_worker_is_found_among_other_documents() -> None:
    text = OTHER + "---\n" + PLAIN
    boxes = current(text, "all.yaml", "summarizer")
    new, _ = apply_edit(
        text, "all.yaml", "summarizer", WorkerEdit("New.", boxes.input_schema, boxes.output_schema)
    )
    assert new.startswith(OTHER + "---\n") and "\nsystem_prompt: New.         # one line\n" in new
    with pytest.raises(EditError, match="no Worker 'nobody'"):
        current(text, "all.yaml", "nobody")


def test_clone_renames_and_keeps_comments() -> None:
    clone = clone_text(PLAIN, "w.yaml", "summarizer", "summarizer-two")
    assert clone.startswith("# plain original-style worker file\nname: summarizer-two\n")
    with pytest.raises(EditError, match="not a valid worker name"):
        clone_text(PLAIN, "w.yaml", "summarizer", "../evil")


def test_versions_keep_the_original_and_every_save(tmp_path: Path) -> None:
    (tmp_path / "w.yaml").write_text(PLAIN)
    versions = Versions(tmp_path)
    save(tmp_path, "w.yaml", PLAIN, PLAIN + "# one\n", versions, "edit")
    save(tmp_path, "w.yaml", PLAIN + "# one\n", PLAIN + "# two\n", versions, "edit")
    kept = versions.list("w.yaml")
    assert [v.note for v in kept] == ["original", "edit", "edit"]
    assert [versions.read("w.yaml", v.id) for v in kept] == [PLAIN, PLAIN + "# one\n", PLAIN + "# two\n"]
    assert (tmp_path / "w.yaml").read_text() == PLAIN + "# two\n"
    assert (tmp_path / ".loom" / "workshop" / "versions" / "w.yaml").is_dir()
    # the kept texts are not YAML files: `loom up` of the folder still finds one worker
    assert [r.source for r in load_paths([tmp_path])] == [str(tmp_path / "w.yaml")]
    legacy = tmp_path / ".loom" / "workshop" / "versions" / "w.yaml" / "1-older.yaml"  # kept as .yaml before
    legacy.write_text(PLAIN + "# zero\n")
    assert versions.list("w.yaml")[0].note == "older"
    assert versions.read("w.yaml", "1-older") == PLAIN + "# zero\n"
    with pytest.raises(EditError, match="no version"):
        versions.read("w.yaml", "../../w")
    with pytest.raises(ConfinementError):
        save(tmp_path, "../outside.yaml", "", "x", versions, "edit")
    assert not (tmp_path.parent / "outside.yaml").exists()


PIPELINE = """\
# the pipeline
name: flow
pipeline_stages:
  - name: a
    worker_type: w
    input_mapping: {text: goal.context.text}
  - name: b
    worker_type: w
    input_mapping: {text: a.output.text}   # reads a
"""


def test_stages_added_and_removed_keep_the_file_and_check_the_graph() -> None:
    from loom.workshop.edits import insert_stage, remove_stage

    new, res = insert_stage(
        PIPELINE, "p.yaml", "flow", "name: c\nworker_type: w\ninput_mapping: {x: b.output.y}\n", "a"
    )
    assert [s.name for s in res.spec.pipeline_stages] == ["a", "c", "b"]
    assert new.startswith("# the pipeline\n") and "# reads a" in new
    with pytest.raises(EditError, match="reads unknown stage 'a'"):
        remove_stage(PIPELINE, "p.yaml", "flow", "a")
    _, res = remove_stage(PIPELINE, "p.yaml", "flow", "b")
    assert [s.name for s in res.spec.pipeline_stages] == ["a"]
    with pytest.raises(EditError, match="no stage 'zz' to insert after"):
        insert_stage(PIPELINE, "p.yaml", "flow", "name: c\nworker_type: w\n", "zz")
    with pytest.raises(EditError, match="type the new stage"):
        insert_stage(PIPELINE, "p.yaml", "flow", "", None)
