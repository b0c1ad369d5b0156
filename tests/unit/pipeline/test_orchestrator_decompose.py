"""Plan checking, summaries and merging of the goal orchestrator (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loom.api.loader import LoadError
from loom.api.worker import WorkerSpec
from loom.messages import GoalMessage
from loom.orchestrator import decompose as dc
from loom.orchestrator.config import load_config

CATALOG = {
    "summarizer": WorkerSpec.model_validate(
        {
            "name": "summarizer",
            "system_prompt": "s",
            "tiers": ["local", "standard"],
            "default_model_tier": "local",
            "input_schema": {
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string", "minLength": 1}},
            },
        }
    ),
    "counter": WorkerSpec.model_validate(
        {
            "name": "counter",
            "worker_kind": "processor",
            "processing_backend": "a.B",
            "input_schema": {
                "type": "object",
                "required": ["items"],
                "properties": {"items": {"type": "array"}},
            },
        }
    ),
}


def test_valid_subtasks_pass_and_invalid_ones_say_why() -> None:
    reply = (
        "Here is the plan:\n```json\n"
        + json.dumps(
            {
                "subtasks": [
                    {"id": "a b", "worker_type": "summarizer", "payload": {"text": "x"}, "tier": "standard"},
                    {"id": "a b", "worker_type": "summarizer", "payload": {"text": "y"}, "tier": "frontier"},
                    {"worker_type": "summarizer", "payload": {"text": ""}},
                    {"worker_type": "counter", "payload": {"items": "not a list"}},
                    {"worker_type": "ghost", "payload": {}},
                    "junk",
                ],
                "decisions": ["do it"],
            }
        )
        + "\n```"
    )
    check = dc.check_plan(reply, CATALOG, max_subtasks=5)
    assert [(s.id, s.tier) for s in check.subtasks] == [("a-b", "standard"), ("a-b-2", None)]
    reasons = {r.index: r.reason for r in check.rejected}
    assert "input schema" in reasons[2] and "non-empty" in reasons[2]
    assert "'not a list' is not of type 'array'" in reasons[3]
    assert "unknown worker_type 'ghost'" in reasons[4]
    assert "must be an object" in reasons[5]
    assert check.decisions == ["do it"]


def test_plan_limits_and_unparseable_replies() -> None:
    many = {"subtasks": [{"worker_type": "counter", "payload": {"items": []}} for _ in range(4)]}
    check = dc.check_plan(json.dumps(many), CATALOG, max_subtasks=2)
    assert len(check.subtasks) == 2 and len(check.rejected) == 2
    assert "more than 2" in check.rejected[0].reason
    assert "no JSON" in dc.check_plan("I cannot help", CATALOG, 3).rejected[0].reason
    assert "subtasks" in dc.check_plan('{"plan": []}', CATALOG, 3).rejected[0].reason


def test_feedback_names_every_problem() -> None:
    text = dc.feedback_prompt([dc.Rejected(0, "counter", "bad items"), dc.Rejected(2, None, "no worker")])
    assert "subtask 0 (counter): bad items" in text and "subtask 2 (no worker): no worker" in text


def test_executive_summary_folds_and_bounds() -> None:
    goal = GoalMessage(instruction="research")
    first = dc.executive_summary(goal, "", [dc.result_line("a", "w", "completed", {"x": 1})], pending=2)
    assert (
        first.startswith("Goal: research") and "[a] w completed" in first and "Pending subtasks: 2" in first
    )
    second = dc.executive_summary(goal, first, [dc.result_line("b", "w", "failed", "boom")], pending=1)
    assert second.count("Goal: research") == 1 and "[a]" in second and "[b] w failed" in second
    huge = dc.executive_summary(goal, "", ["x" * 10_000], pending=0, limit=500)
    assert len(huge) <= 500 and huge.startswith("Goal: research")
    assert dc.result_line("a", "w", "completed", {"t": "y" * 1000}, limit=50).endswith("...")


def test_merge_is_deterministic() -> None:
    merged = dc.merge({"b": {"v": 2}, "a": {"v": 1}}, {"c": "timeout"}, [{"index": 3, "reason": "r"}])
    assert list(merged["results"]) == ["a", "b"]
    assert merged["failed"] == {"c": "timeout"} and merged["rejected"] == [{"index": 3, "reason": "r"}]


def test_config_loads_workers_from_files_and_inline(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "counter.yaml").write_text(
        "name: counter\nworker_kind: processor\nprocessing_backend: a.B\n"
        "input_schema: {type: object, required: [items]}\n"
    )
    (tmp_path / "o.yaml").write_text(
        "name: brain\nworkers:\n  - workers/counter.yaml\n"
        "  - {name: summarizer, system_prompt: s, input_schema: {type: object}}\n"
        "decomposer: {tier: {name: planner, backend: openai, model: m}}\n"
        "checkpoint: {backend: redis, url: 'redis://127.0.0.1:6379/0', token_threshold: 100}\n"
    )
    config, catalog = load_config(tmp_path / "o.yaml")
    assert sorted(catalog) == ["counter", "summarizer"]
    assert config.checkpoint.backend == "redis" and config.synthesis == "merge"


def test_config_problems_are_reported(tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text(
        "workers: [missing.yaml]\ndecomposer: {tier: {name: planner}}\ncheckpoint: {backend: redis}\n"
    )
    with pytest.raises(LoadError, match="redis needs url"):
        load_config(tmp_path / "o.yaml")
    (tmp_path / "o.yaml").write_text("workers: [missing.yaml]\ndecomposer: {tier: {name: planner}}\n")
    with pytest.raises(LoadError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "o.yaml")
