"""RouterPolicy → ConfigMap (``router.yaml`` = RouterConfig) + Deployment ``<name>-router``.

The router's catalog (``workers``) lists the namespace's Workers, so adding,
changing or removing a Worker re-renders this ConfigMap and rolls the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loom.api import RouterConfig, RouterPolicySpec
from loom.api.router_policy import WorkerRoute
from loom_operator.render.common import Owner, config_hash, config_map, deployment, to_yaml
from loom_operator.settings import Settings

CONFIG_KEY = "router.yaml"


def router_config(policy: RouterPolicySpec, workers: Mapping[str, WorkerRoute]) -> RouterConfig:
    """The router's runtime configuration: the policy and the catalog, keyed by worker type."""
    return RouterConfig(policy=policy, workers={k: workers[k] for k in sorted(workers)})


def render_router_policy(
    owner: Owner, spec: RouterPolicySpec, settings: Settings, *, workers: Mapping[str, WorkerRoute]
) -> list[dict[str, Any]]:
    """Every child of a RouterPolicy; ``workers`` is the namespace's catalog (worker type → route)."""
    text = to_yaml(router_config(spec, workers).to_manifest_dict())
    cm = config_map(owner, CONFIG_KEY, text)
    return [
        cm,
        deployment(
            owner,
            name=f"{owner.name}-router",
            args=["router", "--config", f"/etc/loom/{CONFIG_KEY}"],
            config_key=CONFIG_KEY,
            hash_=config_hash(cm["data"]),
            resources=spec.resources,
            settings=settings,
            replicas=spec.replicas,
        ),
    ]
