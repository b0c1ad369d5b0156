"""Spec models: camelCase and snake_case in, camelCase out, cross-field rules with field names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loom.api import PipelineSpec, RouterPolicySpec, ScheduleSpec, WorkerSpec
from loom.api.pipeline import evaluate_condition, execution_levels

WORKER_SNAKE = {
    "name": "entity_extractor",
    "description": "d",
    "system_prompt": "p",
    "default_model_tier": "local",
    "max_output_tokens": 1000,
    "timeout_seconds": 30,
    "reset_after_task": True,
    "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    "knowledge_sources": [{"path": "k.md", "inject_as": "few_shot"}],
}


def test_worker_snake_and_camel_are_the_same_spec() -> None:
    snake = WorkerSpec.model_validate(WORKER_SNAKE)
    camel = WorkerSpec.model_validate(snake.to_manifest_dict())
    assert snake == camel
    out = snake.to_manifest_dict()
    assert out["systemPrompt"] == "p" and out["knowledgeSources"][0]["injectAs"] == "few_shot"
    assert snake.served_tiers == ["local"] and snake.worker_type == "entity_extractor"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"worker_kind": "processor", "system_prompt": None}, "processor workers need processingBackend"),
        ({"system_prompt": None}, "LLM workers need systemPrompt"),
        ({"reset_after_task": False}, "resetAfterTask must be true"),
        ({"resolve_file_refs": ["f"]}, "resolveFileRefs requires workspaceDir"),
        ({"tiers": ["frontier"]}, "defaultModelTier must be one of tiers"),
        ({"input_schema_ref": "a.B"}, "set inputSchema or inputSchemaRef, not both"),
        ({"output_schema": {"type": 5}}, "outputSchema: type: 5 is not valid"),
        ({"timeout_seconds": 0}, "greater than 0"),
        ({"default_model_tier": "Gold"}, "String should match pattern"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_worker_rules(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        WorkerSpec.model_validate({**WORKER_SNAKE, **change})
    assert message in str(err.value)


def test_autoscaling_bounds() -> None:
    with pytest.raises(ValidationError, match="minReplicas must be <= maxReplicas"):
        WorkerSpec.model_validate({**WORKER_SNAKE, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}})


def test_policy_tier_references_checked() -> None:
    with pytest.raises(ValidationError) as err:
        RouterPolicySpec.model_validate(
            {
                "tiers": [{"name": "local"}, {"name": "local"}],
                "rateLimits": {"gold": {}},
                "tierOverrides": {"w": "silver"},
            }
        )
    text = str(err.value)
    assert "tier names must be unique" in text and "rateLimits.gold: unknown tier" in text
    assert "tierOverrides.w: unknown tier 'silver'" in text
    p = RouterPolicySpec()
    assert p.tier_names == ["local", "standard", "frontier"] and p.tier("frontier").backend == "local"
    with pytest.raises(KeyError):
        p.tier("gold")


def test_pipeline_levels_and_conditions() -> None:
    spec = PipelineSpec.model_validate(
        {
            "name": "p",
            "pipeline_stages": [
                {"name": "extract", "worker_type": "x", "input_mapping": {"f": "goal.context.file"}},
                {"name": "classify", "worker_type": "c", "input_mapping": {"t": "extract.output.text"}},
                {
                    "name": "summarize",
                    "worker_type": "s",
                    "input_mapping": {"t": "extract.output.text"},
                    "condition": "classify.output.kind != 'spam'",
                },
            ],
        }
    )
    assert execution_levels(spec) == [["extract"], ["classify"], ["summarize"]]
    assert evaluate_condition("classify.output.kind != 'spam'", {}, {"classify": {"kind": "memo"}})
    assert not evaluate_condition("classify.output.missing == true", {}, {"classify": {}})


def test_schedule_needs_exactly_one_trigger() -> None:
    with pytest.raises(ValidationError, match="set exactly one of cron or intervalSeconds"):
        ScheduleSpec.model_validate({"name": "s", "goal": {"instruction": "x"}})
    s = ScheduleSpec.model_validate({"name": "s", "cron": "*/5 * * * *", "goal": {"pipeline": "p"}})
    assert s.to_manifest_dict()["missedFirePolicy"] == "skip"
