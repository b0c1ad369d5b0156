"""Pipeline → ConfigMap (``pipeline.yaml``) + Deployment ``<name>-pipeline`` running ``loom pipeline``."""

from __future__ import annotations

from typing import Any

from loom.api import PipelineSpec
from loom_operator.render.common import Owner, config_hash, config_map, deployment, manifest_text
from loom_operator.settings import Settings

CONFIG_KEY = "pipeline.yaml"


def state_store_env(spec: PipelineSpec) -> list[dict[str, Any]]:
    """The Redis URL of a pipeline's state store, from its Secret (never its value)."""
    store = spec.state_store
    if store is None or store.url_secret_ref is None:
        return []
    ref = store.url_secret_ref
    return [{"name": store.url_env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def render_pipeline(owner: Owner, spec: PipelineSpec, settings: Settings) -> list[dict[str, Any]]:
    """Every child of a Pipeline (the spec is already graph-checked by PipelineSpec validation)."""
    cm = config_map(owner, CONFIG_KEY, manifest_text("Pipeline", owner, spec.to_manifest_dict()))
    return [
        cm,
        deployment(
            owner,
            name=f"{owner.name}-pipeline",
            args=["pipeline", "--config", f"/etc/loom/{CONFIG_KEY}"],
            config_key=CONFIG_KEY,
            hash_=config_hash(cm["data"]),
            resources=spec.resources,
            settings=settings,
            replicas=spec.replicas,
            env=state_store_env(spec),
        ),
    ]
