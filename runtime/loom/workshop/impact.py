"""Impact of a worker change on the pipelines that use it (pure).

Which stages run the worker, and which mappings its new schemas would break: a stage that no longer
supplies a required input field (or supplies one a closed schema refuses), and a later stage or
condition that reads an output field the new output schema no longer has. Stage dependencies come
from :mod:`loom.api.pipeline`, the same rules the pipeline runs by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loom.api.loader import Resource
from loom.api.pipeline import CONDITION_RE, PipelineSpec, mapping_source_stage
from loom.api.worker import WorkerSpec


@dataclass
class StageUse:
    """One stage running the worker, and what the new schemas break around it."""

    pipeline: str
    stage: str
    breaks: list[str] = field(default_factory=list)


def _fields(schema: dict[str, Any] | None) -> set[str] | None:
    """Declared top-level fields, or None when the schema does not restrict them."""
    if not schema or not isinstance(schema.get("properties"), dict):
        return None
    return set(schema["properties"])


def _output_field(path: str) -> str | None:
    """``stage.output.field[.more]`` → ``field`` (None for the whole output)."""
    parts = path.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "output" else None


def impact(resources: Sequence[Resource], worker: str, new: WorkerSpec) -> list[StageUse]:
    """Every stage using ``worker`` with the mappings ``new`` would break."""
    uses: list[StageUse] = []
    outputs = _fields(new.output_schema)
    required = set((new.input_schema or {}).get("required") or [])
    inputs = _fields(new.input_schema)
    closed = (new.input_schema or {}).get("additionalProperties") is False
    for res in (r for r in resources if r.kind == "Pipeline"):
        spec: PipelineSpec = res.spec
        by_stage = {
            s.name: StageUse(spec.pipeline_name, s.name)
            for s in spec.pipeline_stages
            if s.worker_type == worker
        }
        for stage in spec.pipeline_stages:
            if stage.name in by_stage:
                use = by_stage[stage.name]
                for missing in sorted(required - set(stage.input_mapping)):
                    use.breaks.append(f"inputMapping lacks required input field {missing!r}")
                if closed and inputs is not None:
                    for extra in sorted(set(stage.input_mapping) - inputs):
                        use.breaks.append(f"inputMapping.{extra}: not a field of the input schema")
            paths = [(f"stage {stage.name}: inputMapping.{k}", p) for k, p in stage.input_mapping.items()]
            if stage.condition and (m := CONDITION_RE.match(stage.condition)):
                paths.append((f"stage {stage.name}: condition", m.group("path")))
            for where, path in paths:
                source = mapping_source_stage(path)
                name = _output_field(path)
                if source in by_stage and outputs is not None and name is not None and name not in outputs:
                    by_stage[source].breaks.append(f"{where} reads {path!r}: no field {name!r} in the output")
        uses += by_stage.values()
    return uses
