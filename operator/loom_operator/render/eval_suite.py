"""EvalSuite → ConfigMap ``<name>-eval-config`` (the suite and the Worker it tests) + Job
``<name>-eval-<hash>`` running ``loom eval`` through the namespace's router.

The Job tests the deployed system: its cases go to the router as tasks of the suite's tenant, with
the EvalSuite's own bus identity (role ``eval``: a submitter of that tenant, nothing more). The
Worker's manifest rides along in the ConfigMap because ``loom eval`` checks outputs against the
worker's schema and tiers. The Job's name carries a hash of its whole rendered template, so a
changed suite, a changed Worker or a new image gives a new Job (a Job's template is immutable) and
an unchanged one is never run twice. ``loom eval --summary-file /dev/termination-log`` leaves the
verdict in the pod's termination message, where the operator reads it (:mod:`loom_operator.evals`).

A suite with judge scorers also gets the namespace's RouterPolicy in the ConfigMap (``loom eval``
builds each judge's model client from it, as it does on a laptop) and the judge tiers' API keys from
their Secrets, by the rule worker pods get theirs (:func:`loom_operator.render.worker.key_env`). A
judge on the embedded model (tier backend ``local`` without ``baseUrl``) cannot run in a Job: it
stalls and says so.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from typing import Any, Protocol

from loom.api.eval_suite import EvalSuiteSpec
from loom.api.kinds import EVAL_JOB_HASH_LENGTH
from loom.api.router_policy import RouterPolicySpec, TierDefinition
from loom.api.worker import WorkerSpec
from loom_operator.render.common import (
    BUS_CLIENT_LABEL,
    CONFIG_DIR,
    CONFIG_HASH_ANNOTATION,
    CONTAINER_SECURITY,
    POD_HARDENING,
    Owner,
    RenderError,
    config_hash,
    labels,
    manifest_text,
    metadata,
    nats_env,
    nats_files,
)
from loom_operator.render.worker import key_env
from loom_operator.settings import Settings

SUITE_KEY = "suite.yaml"
WORKER_KEY = "worker.yaml"
POLICY_KEY = "router-policy.yaml"
MOUNT = f"{CONFIG_DIR}/eval"
#: Where Kubernetes reads a container's termination message from.
TERMINATION_LOG = "/dev/termination-log"
#: How long a Job keeps trying its generated NATS identity: the operator adds the user to the
#: server's list when it renders the Job, and the kubelet brings the Secret to the NATS pod (which then
#: reloads) up to a sync period later.
IDENTITY_GRACE_SECONDS = 300
#: The label the Job's pods carry naming their Job (set here, before the Job controller adds its own).
JOB_LABEL = "loom.dev/eval-job"


class WorkerRef(Protocol):
    """A Worker of the namespace as the index sees it (``reconcile.WorkerEntry``)."""

    @property
    def name(self) -> str: ...

    @property
    def worker_type(self) -> str: ...

    @property
    def spec(self) -> WorkerSpec: ...


def config_map_name(owner: Owner) -> str:
    """``<name>-eval-config``: not ``<name>-config``, which a Worker of the same name (a suite is
    often named after its worker) already has."""
    return f"{owner.name}-eval-config"


def job_name(owner: Owner, job: dict[str, Any]) -> str:
    """``<name>-eval-<hash of the Job's spec without its name>``."""
    blob = json.dumps(_unnamed(job), sort_keys=True, separators=(",", ":")).encode()
    return f"{owner.name}-eval-{hashlib.sha256(blob).hexdigest()[:EVAL_JOB_HASH_LENGTH]}"


def _unnamed(job: dict[str, Any]) -> dict[str, Any]:
    template = job["spec"]["template"]
    pod_labels = {k: v for k, v in template["metadata"]["labels"].items() if k != JOB_LABEL}
    return {
        **job["spec"],
        "template": {**template, "metadata": {**template["metadata"], "labels": pod_labels}},
    }


def name_jobs(owner: Owner, objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Name each Job by its hash (after the bus identity is wired in, so it counts too)."""
    out = []
    for obj in objects:
        if obj["kind"] == "Job":
            name = job_name(owner, obj)
            template = obj["spec"]["template"]
            pod_meta = {**template["metadata"], "labels": {**template["metadata"]["labels"], JOB_LABEL: name}}
            obj = {
                **obj,
                "metadata": {**obj["metadata"], "name": name},
                "spec": {**obj["spec"], "template": {**template, "metadata": pod_meta}},
            }
        out.append(obj)
    return out


def render_eval_suite(
    owner: Owner,
    spec: EvalSuiteSpec,
    settings: Settings,
    *,
    workers: Sequence[WorkerRef],
    policy: RouterPolicySpec | None = None,
    policy_name: str | None = None,
) -> list[dict[str, Any]]:
    """The ConfigMap and the (still unnamed) Job of an EvalSuite."""
    worker = next((w for w in sorted(workers, key=lambda w: w.name) if w.worker_type == spec.worker), None)
    if worker is None:  # missing_references reports this first; kept for direct callers
        raise RenderError(f"worker {spec.worker!r} is not served by any Worker of this namespace")
    tier = spec.tier or worker.spec.default_model_tier
    if tier not in worker.spec.served_tiers:
        raise RenderError(
            f"tier {tier!r} is not served by Worker {worker.name!r} "
            f"(serves: {', '.join(worker.spec.served_tiers)})"
        )
    worker_owner = Owner("Worker", worker.name, owner.namespace)
    data = {
        SUITE_KEY: manifest_text("EvalSuite", owner, spec.to_manifest_dict()),
        WORKER_KEY: manifest_text("Worker", worker_owner, worker.spec.to_manifest_dict()),
    }
    judge_env: list[dict[str, Any]] = []
    if spec.judges_on(tier):
        if policy is None:
            raise RenderError(
                "judge scorers need the namespace's RouterPolicy (it defines the judges' tiers)"
            )
        judge_env = _judge_keys(spec, tier, policy)
        policy_owner = Owner("RouterPolicy", policy_name or "default", owner.namespace)
        data[POLICY_KEY] = manifest_text("RouterPolicy", policy_owner, policy.to_manifest_dict())
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, config_map_name(owner)),
        "data": data,
    }
    return [cm, _job(owner, spec, settings, config_hash(data), sorted(data), judge_env)]


def _judge_keys(spec: EvalSuiteSpec, tier: str, policy: RouterPolicySpec) -> list[dict[str, Any]]:
    """The judge tiers' API keys; RenderError when a judge tier cannot run in a Job."""
    tiers: list[TierDefinition] = []
    for name in sorted(spec.judges_on(tier)):
        if name not in policy.tier_names:
            raise RenderError(
                f"judge tier {name!r} is not defined by the RouterPolicy "
                f"(defined: {', '.join(policy.tier_names)})"
            )
        tdef = policy.tier(name)
        if tdef.backend == "local" and not tdef.base_url:
            raise RenderError(
                f"judge tier {name!r} is the embedded local model, which runs only in local mode; "
                "give the tier a baseUrl (a model server the Job can reach) or judge on another tier"
            )
        clash = next(
            (
                t
                for t in tiers
                if t.key_env == tdef.key_env and t.api_key_secret_ref != tdef.api_key_secret_ref
            ),
            None,
        )
        if clash is not None and tdef.api_key_secret_ref is not None:
            raise RenderError(
                f"judge tiers {clash.name!r} and {name!r} read different keys from {tdef.key_env}; "
                "give one of them its own apiKeyEnv"
            )
        tiers.append(tdef)
    return key_env(tiers)


def _job(
    owner: Owner,
    spec: EvalSuiteSpec,
    settings: Settings,
    hash_: str,
    files: Sequence[str],
    judge_env: list[dict[str, Any]],
) -> dict[str, Any]:
    nats_mounts, nats_volumes = nats_files(settings)
    container: dict[str, Any] = {
        "name": "eval",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["loom"],
        "args": [
            "eval",
            f"{MOUNT}/{SUITE_KEY}",
            *(f"{MOUNT}/{f}" for f in files if f != SUITE_KEY),
            "--nats-url",
            "$(LOOM_NATS_URL)",
            "--store",
            "/tmp/runs.sqlite",
            "--summary-file",
            TERMINATION_LOG,
            *(
                ("--retry-refused", "--connect-timeout", str(IDENTITY_GRACE_SECONDS))
                if settings.nats_auth == "generated"
                else ()
            ),
        ],
        "env": [*nats_env(settings), {"name": "LOOM_LOG_JSON", "value": "1"}, *judge_env],
        "resources": spec.resources.to_manifest_dict(),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "terminationMessagePath": TERMINATION_LOG,
        # Exit 2 (bad input) writes no summary: the log's tail then says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "config", "mountPath": MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *nats_mounts,
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, f"{owner.name}-eval"),
        "spec": {
            # A failed eval is a verdict, not a crash: never retried.
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": {**labels(owner), BUS_CLIENT_LABEL: "true"},
                    "annotations": {CONFIG_HASH_ANNOTATION: hash_},
                },
                "spec": {
                    **copy.deepcopy(POD_HARDENING),
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": config_map_name(owner)}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                        *nats_volumes,
                    ],
                },
            },
        },
    }
