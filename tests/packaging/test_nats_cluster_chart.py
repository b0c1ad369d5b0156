"""The chart and the operator's rendered pods against an external 3-node JetStream cluster (issue 20):
the server list, the stream replicas and every server's monitoring URL reach the operator, and the
replicas reach every pod it renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.api import load_text
from loom_operator.render import Owner, render_worker
from loom_operator.settings import Settings
from tests.support import chart
from tests.support.chart import HelmFailed, env_of, one

SERVERS = ",".join(f"nats://nats-{i}.nats-headless.nats.svc:4222" for i in range(3))
MONITORS = ",".join(f"http://nats-{i}.nats-headless.nats.svc:8222" for i in range(3))
WORKER = """
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata: {name: echo, namespace: team}
spec:
  workerKind: processor
  processingBackend: loom.contrib.noop.EchoBackend
  defaultModelTier: local
"""


def test_external_cluster_values_reach_the_operator_and_its_pods(tmp_path: Path) -> None:
    # (auth none: the generated mode's key comes from a Secret, which Settings.from_env cannot read here)
    values = {"nats": {"url": SERVERS, "monitorUrl": MONITORS, "replicas": 3, "auth": {"mode": "none"}}}
    env = env_of(one(chart.render(values, tmp_path), "Deployment"))
    assert (env["LOOM_NATS_URL"], env["LOOM_NATS_MONITOR_URL"]) == (SERVERS, MONITORS)
    assert env["LOOM_NATS_REPLICAS"] == "3"

    settings = Settings.from_env(env)
    assert settings.nats_replicas == 3
    (resource,) = load_text(WORKER)
    for dep in (
        o
        for o in render_worker(Owner("Worker", "echo", "team"), resource.spec, settings)
        if o["kind"] == "Deployment"
    ):
        pod_env = env_of(dep)
        assert (pod_env["LOOM_NATS_URL"], pod_env["LOOM_NATS_REPLICAS"]) == (SERVERS, "3")


def test_by_default_the_replicas_are_left_as_they_are(tmp_path: Path) -> None:
    env = env_of(one(chart.render({"nats": {"auth": {"mode": "none"}}}, tmp_path), "Deployment"))
    assert "LOOM_NATS_REPLICAS" not in env
    assert Settings.from_env(env).nats_replicas is None


@pytest.mark.parametrize("bad", [6, -1, "three"])
def test_replicas_outside_1_to_5_are_refused(tmp_path: Path, bad: object) -> None:
    with pytest.raises(HelmFailed, match="replicas"):
        chart.render({"nats": {"replicas": bad}}, tmp_path)


def test_the_operator_refuses_a_bad_replicas_setting() -> None:
    with pytest.raises(ValueError, match="LOOM_NATS_REPLICAS"):
        Settings.from_env({"LOOM_NATS_REPLICAS": "7"})
