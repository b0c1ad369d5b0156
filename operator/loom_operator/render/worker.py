"""Worker → ConfigMap, one Deployment per served tier, a metrics Service, and per-tier ScaledObjects (KEDA).

Each tier's pods get ``LOOM_TIER_CONFIG``: the tier's definition from the namespace's
RouterPolicy (a local-backend default when the namespace has none), with the API key
injected from its Secret by reference. With autoscaling on, ``replicas`` is left out of
the Deployment: KEDA or the built-in scaler owns it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlparse

from loom import subjects
from loom.api import RouterPolicySpec, TierDefinition, WorkerSpec
from loom.api.router_policy import (
    FALLBACK_TIERS_ENV,
    TIER_CONFIG_ENV,
    ModelEndpoints,
    fallback_config,
    worker_tier,
)
from loom.llm.endpoints import ENDPOINTS_ENV
from loom_operator.render.common import (
    Owner,
    RenderError,
    config_hash,
    config_map,
    deployment,
    manifest_text,
    metadata,
    metrics_service,
)
from loom_operator.render.network import worker_network_policy
from loom_operator.settings import Settings

CONFIG_KEY = "worker.yaml"


def deployment_name(worker: str, tier: str) -> str:
    return f"{worker}-{tier}"


def tier_definition(
    tier: str, policy: RouterPolicySpec | None, policy_name: str | None = None
) -> TierDefinition:
    """The tier's definition (:func:`loom.api.router_policy.worker_tier`, as in local mode); raises
    RenderError for a tier the policy does not define."""
    try:
        return worker_tier(policy, tier)
    except KeyError:
        assert policy is not None
        where = f"RouterPolicy {policy_name!r}" if policy_name else "the namespace's RouterPolicy"
        raise RenderError(
            f"tier {tier!r} is not defined by {where} (defined: {', '.join(policy.tier_names)})"
        ) from None


def tier_env(
    tier_def: TierDefinition,
    endpoints: ModelEndpoints | None = None,
    fallbacks: Sequence[TierDefinition] = (),
) -> list[dict[str, Any]]:
    """``LOOM_TIER_CONFIG``, ``LOOM_MODEL_ENDPOINTS`` and the API key from its Secret (never its value);
    with fallback tiers (:meth:`RouterPolicySpec.fallback_tiers`), ``LOOM_FALLBACK_TIERS`` and theirs."""
    env: list[dict[str, Any]] = [
        {"name": TIER_CONFIG_ENV, "value": tier_def.worker_config()},
        {"name": ENDPOINTS_ENV, "value": (endpoints or ModelEndpoints()).env_value()},
    ]
    if fallbacks:
        env.append({"name": FALLBACK_TIERS_ENV, "value": fallback_config(list(fallbacks))})
    return env + key_env((tier_def, *fallbacks))


def key_env(tiers: Iterable[TierDefinition]) -> list[dict[str, Any]]:
    """Each tier's API key from its Secret (never its value), under the variable the runtime reads;
    worker pods and an EvalSuite's judges get their keys by this one rule."""
    env: list[dict[str, Any]] = []
    for tdef in tiers:
        ref = tdef.api_key_secret_ref
        if ref is not None and all(e["name"] != tdef.key_env for e in env):
            key = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
            env.append({"name": tdef.key_env, "valueFrom": key})
    return env


def scaled_object(owner: Owner, spec: WorkerSpec, tier: str, settings: Settings) -> dict[str, Any]:
    """KEDA ScaledObject on the tier's JetStream consumer lag (same semantics as the built-in scaler)."""
    a = spec.autoscaling
    monitor = urlparse(settings.nats_monitor_url.split(",")[0].strip())  # KEDA takes one server
    name = deployment_name(owner.name, tier)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(owner, name, tier),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": a.polling_seconds,
            "cooldownPeriod": a.cooldown_seconds,
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": a.cooldown_seconds}}
                }
            },
            "triggers": [
                {
                    "type": "nats-jetstream",
                    "metadata": {
                        "natsServerMonitoringEndpoint": monitor.netloc or monitor.path,
                        "account": settings.nats_account,
                        "stream": subjects.STREAM_TASKS,
                        "consumer": subjects.worker_consumer(spec.worker_type, tier),
                        "lagThreshold": str(a.target_lag),
                        "activationLagThreshold": str(a.activation_lag),
                        "useHttps": "true" if monitor.scheme == "https" else "false",
                    },
                }
            ],
        },
    }


def render_worker(
    owner: Owner,
    spec: WorkerSpec,
    settings: Settings,
    *,
    policy: RouterPolicySpec | None = None,
    policy_name: str | None = None,
    keda: bool = False,
) -> list[dict[str, Any]]:
    """Every child of a Worker. Raises RenderError when a served tier is unknown to the policy."""
    tier_defs = [tier_definition(t, policy, policy_name) for t in spec.served_tiers]
    if policy is not None:
        used = {t.name for t in tier_defs} | {f for t in tier_defs for f in t.fallback}
        refused = policy.endpoint_problems(local_mode=False, tiers=sorted(used))
        if refused:
            raise RenderError("; ".join(refused))
    cm = config_map(owner, CONFIG_KEY, manifest_text("Worker", owner, spec.to_manifest_dict()))
    hash_ = config_hash(cm["data"])
    scaled = spec.autoscaling.enabled
    extra_env = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    objects: list[dict[str, Any]] = [cm]
    for tier_def in tier_defs:
        tier = tier_def.name
        objects.append(
            deployment(
                owner,
                name=deployment_name(owner.name, tier),
                args=["worker", "--config", f"/etc/loom/{CONFIG_KEY}", "--tier", tier],
                config_key=CONFIG_KEY,
                hash_=hash_,
                resources=spec.resources,
                settings=settings,
                replicas=None if scaled else spec.replicas,
                tier=tier,
                env=[
                    *tier_env(
                        tier_def,
                        policy.model_endpoints if policy else None,
                        policy.fallback_tiers(tier, mounted_keys=True) if policy else (),
                    ),
                    *extra_env,
                ],
                image=spec.image,
            )
        )
    objects.append(metrics_service(owner))
    if settings.network_policy is not None:
        objects += [
            worker_network_policy(
                owner,
                deployment_name(owner.name, t.name),
                t,
                nats_url=settings.nats_url,
                network=settings.network_policy,
                endpoints=policy.model_endpoints if policy else None,
            )
            for t in tier_defs
        ]
    if scaled and keda:
        objects += [scaled_object(owner, spec, t.name, settings) for t in tier_defs]
    return objects
