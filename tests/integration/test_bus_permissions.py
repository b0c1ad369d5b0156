"""Identity on the bus: a real nats-server with the permissions :mod:`loom.bus_auth` renders.

Tenant b (user ``bob``) tries what an attacker with bus access would; each attempt is
refused by the server. The normal flow runs under the same permissions: a real router
and worker process, a pipeline, a schedule and a dead-letter replay by the admin.

Each test runs twice: with identities made directly, and with what the operator renders
for a RouterPolicy, a Worker, a Pipeline and a Schedule (the server's user list from the
authorization Secret, each role's user and password from its resource's Secret, tenants'
and the admin's from theirs).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.nats_server import NatsServer
from tests.support.pipelines import running_service
from tests.support.processes import LoomProcesses, echo_worker, poll, write_yaml

from loom.api import load_paths
from loom.api.pipeline import PipelineSpec
from loom.api.schedule import ScheduleSpec
from loom.bus import Bus, BusError, BusPermissionError
from loom.bus_auth import Credential, Identity, Role, new_credential, server_authorization
from loom.messages import DeadLetterReason, GoalMessage, GoalResult, TaskMessage, TaskResult, TaskStatus
from loom.pipeline.service import PipelineService
from loom.scheduler.service import Scheduler
from loom.settings import NatsSettings
from loom.subjects import STREAM_DEAD_LETTER, STREAM_TASKS

pytestmark = pytest.mark.integration

IDENTITIES = [
    Identity("admin", Role.ADMIN),
    Identity("router", Role.ROUTER),
    Identity("echo", Role.WORKER, worker_type="echo", tiers=("local",)),
    Identity("pipe", Role.PIPELINE, pipeline="twice"),
    Identity("scheduler", Role.SCHEDULER),
    Identity("alice", Role.TENANT, tenant="a"),
    Identity("bob", Role.TENANT, tenant="b"),
]

PIPELINE: dict[str, Any] = {
    "name": "twice",
    "pipeline_stages": [
        {"name": "one", "worker_type": "echo", "input_mapping": {"v": "goal.context.v"}},
        {"name": "two", "worker_type": "echo", "input_mapping": {"v": "one.output.echo.v"}},
    ],
}
SCHEDULE: dict[str, Any] = {
    "name": "tick",
    "interval_seconds": 60,
    "dispatch_type": "task",
    "tenant": "a",
    "task": {"worker_type": "echo", "payload": {"s": 1}},
}
ROUTER_POLICY: dict[str, Any] = {
    "apiVersion": "loom.dev/v1alpha1",
    "kind": "RouterPolicy",
    "metadata": {"name": "default"},
    "spec": {"tiers": [{"name": "local", "backend": "local"}]},
}

class Secured:
    """The server and one credential per identity, by the tests' names for them."""

    def __init__(self, server: NatsServer, creds: dict[str, Credential]):
        self.server = server
        self.creds = creds

    def settings(self, user: str) -> NatsSettings:
        env = self.creds[user].env
        return NatsSettings(
            url=self.server.url,
            user=env["LOOM_NATS_USER"],
            password=env["LOOM_NATS_PASSWORD"],
            inbox_prefix=env["LOOM_NATS_INBOX_PREFIX"],
            name=f"test-{user}",
        )

    async def connect(self, user: str) -> Bus:
        return await Bus.connect(self.settings(user), connect_timeout=10)

    def violations(self) -> list[str]:
        """Identities (by the tests' names) the server logged a permissions violation for."""
        text = (Path(self.server.store_dir) / "nats.log").read_text(errors="replace")
        names = {c.identity.user: name for name, c in self.creds.items()}
        users = re.findall(r'/user:([\w-]+)" - (?:Subscription|Publish) Violation', text)
        return [names.get(u, u) for u in users]


def direct() -> tuple[str, dict[str, Credential]]:
    """Identities made with loom.bus_auth directly."""
    creds = {i.user: new_credential(i) for i in IDENTITIES}
    return server_authorization(list(creds.values())), creds


def operator_rendered(tmp_path: Path) -> tuple[str, dict[str, Credential]]:
    """What the operator renders for a RouterPolicy, the echo Worker, a Pipeline and a Schedule."""
    from loom_operator.cli.render_cmd import render_resources
    from loom_operator.render.bus_auth import AUTH_KEY, server_secrets
    from loom_operator.settings import Settings

    (tmp_path / "manifests").mkdir()
    write_yaml(tmp_path / "manifests", "policy", ROUTER_POLICY)
    write_yaml(tmp_path / "manifests", "pipeline", PIPELINE)
    write_yaml(tmp_path / "manifests", "schedule", SCHEDULE)
    echo_worker(tmp_path / "manifests")
    settings = Settings(
        nats_auth="generated",
        nats_auth_key="k" * 40,
        nats_auth_secret="loom-system/loom-nats-auth",
        nats_tenants=("a", "b"),
    )
    resources = load_paths([tmp_path / "manifests"])
    rendered = render_resources(resources, settings, keda=False, namespace="team")
    secrets = {
        o["metadata"]["name"]: _decoded(o)
        for objects in rendered.values()
        for o in objects
        if o["kind"] == "Secret"
    }
    release = {
        o["metadata"]["name"]: _decoded(o) for o in server_secrets(_identities(rendered, resources), settings)
    }
    by_name = {
        "router": secrets["default-router-nats"],
        "echo": secrets["echo-worker-nats"],
        "pipe": secrets["twice-pipeline-nats"],
        "scheduler": secrets["tick-scheduler-nats"],
        "admin": release["loom-nats-auth-admin"],
        "alice": release["loom-nats-auth-tenant-a"],
        "bob": release["loom-nats-auth-tenant-b"],
    }
    roles = {i.user: i for i in IDENTITIES}
    creds = {
        name: Credential(_renamed(roles[name], data["user"]), data["password"])
        for name, data in by_name.items()
    }
    for name, data in by_name.items():
        assert creds[name].env["LOOM_NATS_INBOX_PREFIX"] == data["inboxPrefix"], name
    return release["loom-nats-auth"][AUTH_KEY], creds


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _identities(rendered: dict[str, list[dict[str, Any]]], resources: list[Any]) -> list[Identity]:
    """Every resource's identity, as the operator's user list computes it."""
    from loom_operator.render.bus_auth import identity
    from loom_operator.render.common import Owner

    assert len(rendered) == len(resources)
    return [identity(Owner(r.kind, r.name, "team"), r.spec) for r in resources]


def _renamed(ident: Identity, user: str) -> Identity:
    return Identity(user, ident.role, ident.tenant, ident.worker_type, ident.tiers, ident.pipeline)


@pytest.fixture(params=["direct", "operator"])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Secured]:
    config, creds = direct() if request.param == "direct" else operator_rendered(tmp_path)
    server = NatsServer(config_text=config).start()
    try:
        yield Secured(server, creds)
    finally:
        server.cleanup()


@pytest.fixture
async def admin(secured: Secured) -> AsyncIterator[Bus]:
    bus = await secured.connect("admin")  # the admin declares the streams
    yield bus
    await bus.close()


async def denied(bus: Bus, what: str) -> None:
    """The server reported a permissions violation naming ``what`` to this client."""
    await poll(
        lambda: (
            "permissions violation" in bus.state.last_error.lower()
            and what.lower() in bus.state.last_error.lower()
        ),
        10,
    )


async def own_result(sub: Any, task_id: str, within: float = 30.0) -> TaskResult:
    while True:
        result = TaskResult.from_bytes(await sub.get(timeout=within))
        if result.task_id == task_id:
            return result


def worker_env(secured: Secured, user: str) -> dict[str, str]:
    return secured.creds[user].env


async def test_tenants_cannot_read_forge_bypass_or_manage(
    secured: Secured, admin: Bus, tmp_path: Path
) -> None:
    procs = LoomProcesses(secured.server.url)
    try:
        procs.spawn("router", env=worker_env(secured, "router"))
        procs.worker(echo_worker(tmp_path), env=worker_env(secured, "echo"))
        alice = await secured.connect("alice")
        bob = await secured.connect("bob")
        try:
            # Normal flow: alice's task through router and worker, result on her own subject.
            task = TaskMessage(worker_type="echo", payload={"secret": "of a"}, tenant="a")
            sub = await alice.subscribe_results(task.task_id, "a")

            # bob cannot listen to a's results, nor to task subjects.
            snoop = await bob.nc.subscribe("loom.results.tenant.a.>")
            await denied(bob, "loom.results.tenant.a.>")
            bob.state.last_error = ""
            snoop_tasks = await bob.nc.subscribe("loom.tasks.>")
            await denied(bob, "loom.tasks.>")
            bob.state.last_error = ""

            # bob's forged result for a's task is refused; alice gets the worker's.
            forged = TaskResult(
                task_id=task.task_id,
                worker_type="echo",
                status=TaskStatus.COMPLETED,
                output={"forged": 1},
                tenant="a",
            )
            await bob.publish_result(forged)
            await denied(bob, "loom.results.tenant.a.")
            bob.state.last_error = ""
            await alice.publish_task(task)
            result = await own_result(sub, task.task_id)
            assert result.status == TaskStatus.COMPLETED, result.error
            assert result.output is not None and result.output["echo"] == {"secret": "of a"}
            assert result.tenant == "a"
            assert sub.pending() == 0
            assert snoop.pending_msgs == 0 and snoop_tasks.pending_msgs == 0

            # bob cannot skip the router, submit as a, or pull a worker's queue.
            with pytest.raises(BusPermissionError, match="refused: this identity may not publish there"):
                await bob.js_publish("loom.tasks.echo.local", task.to_bytes())
            with pytest.raises(BusPermissionError, match="refused: this identity may not publish there"):
                await bob.js_publish("loom.tasks.incoming.tenant.a", task.to_bytes())
            await bob.publish_raw("$JS.API.CONSUMER.MSG.NEXT.LOOM_TASKS.worker-echo-local", b"1")
            await denied(bob, "MSG.NEXT")
            bob.state.last_error = ""

            # bob cannot delete or purge streams, or read and replay dead letters.
            for api in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE"):
                with pytest.raises(BusError):
                    await bob._api(f"$JS.API.{api}.{STREAM_TASKS}", {"seq": 1} if "MSG" in api else {})
                await denied(bob, api)
                bob.state.last_error = ""
            with pytest.raises(BusError):
                await bob._api(f"$JS.API.STREAM.MSG.GET.{STREAM_DEAD_LETTER}", {"seq": 1})
            assert await admin.stream_messages(STREAM_TASKS) == 0  # still there, as the admin sees

            # A payload that claims tenant a, sent on bob's subject, runs as b (result on b's subject).
            claim = TaskMessage(worker_type="echo", payload={"x": 1}, tenant="b")
            bob_sub = await bob.subscribe_results(claim.task_id, "b")
            body = json.loads(claim.to_bytes())
            body["tenant"] = "a"
            await bob.js_publish("loom.tasks.incoming.tenant.b", json.dumps(body).encode())
            mine = await own_result(bob_sub, claim.task_id)
            assert mine.tenant == "b"
            assert sub.pending() == 0  # nothing reached a's results

            # The worker wrote a's audit record under its own permissions; a tenant cannot write one.
            async def audited() -> bool:
                return task.task_id in {r.task_id for r in await admin.audit_records("a")}

            await poll(audited, 15)
            with pytest.raises(BusPermissionError, match="refused: this identity may not publish there"):
                await bob.js_publish("loom.audit.a", b"{}")
        finally:
            await alice.close()
            await bob.close()
        bad = sorted(set(secured.violations()) - {"bob"})
        assert "bob" in secured.violations(), (
            "the server log names violations (else the next check is vacuous)"
        )
        assert bad == [], f"roles were refused what the normal flow needs: {bad}"
    finally:
        procs.cleanup()


async def test_pipeline_schedule_and_replay_under_permissions(
    secured: Secured, admin: Bus, tmp_path: Path
) -> None:
    procs = LoomProcesses(secured.server.url)
    try:
        procs.spawn("router", env=worker_env(secured, "router"))
        procs.worker(echo_worker(tmp_path), env=worker_env(secured, "echo"))
        spec = PipelineSpec.model_validate(PIPELINE)
        pipe = await secured.connect("pipe")
        service = PipelineService(spec, pipe)
        alice = await secured.connect("alice")
        try:
            async with running_service(service, "pipeline"):
                goal = GoalMessage(pipeline="twice", context={"v": 7}, tenant="a")
                sub = await alice.subscribe_results(goal.goal_id, "a")
                await alice.publish_goal(goal)
                while True:
                    doc = json.loads(await sub.get(timeout=30))
                    if "task_id" not in doc:
                        break
                result = GoalResult.model_validate(doc)
                assert result.status == TaskStatus.COMPLETED, result.error
                assert result.output is not None and result.output["two"]["echo"] == {"v": 7}
                assert result.tenant == "a"

            # A schedule dispatches a task for tenant a; alice receives its result.
            sched_bus = await secured.connect("scheduler")
            try:
                schedule = ScheduleSpec.model_validate(SCHEDULE)
                clock = _Clock()
                scheduler = Scheduler(sched_bus, [schedule], clock=clock)
                tasks_sub = await alice.nc.subscribe("loom.results.tenant.a.*")
                await scheduler.tick()  # the first tick sets the next slot
                clock.current += timedelta(seconds=61)
                fired = await scheduler.tick()
                assert fired, "the schedule fired"
                msg = await tasks_sub.next_msg(timeout=30)
                assert (TaskResult.from_bytes(msg.data).output or {}).get("echo") == {"s": 1}
            finally:
                await sched_bus.close()

            # A dead letter (a malformed task) is replayed by the admin only.
            await alice.js_publish("loom.tasks.incoming.tenant.a", b'{"worker_type": 5}')
            await poll(lambda: _dead_count(admin), 20)
            stored = (await admin.dead_letters())[0]
            assert stored.dead_letter.reason == DeadLetterReason.MALFORMED
            assert stored.dead_letter.subject == "loom.tasks.incoming.tenant.a"
            with pytest.raises(BusError):  # a tenant can neither read nor drop dead letters
                await alice._api(f"$JS.API.STREAM.MSG.DELETE.{STREAM_DEAD_LETTER}", {"seq": stored.seq})
            await admin.replay_dead_letter(stored)
            await poll(lambda: _replayed(admin, stored.dead_letter.dead_letter_id), 20)
        finally:
            await alice.close()
            await pipe.close()
        bad = sorted(set(secured.violations()) - {"alice"})
        assert bad == [], f"roles were refused what the normal flow needs: {bad}"
    finally:
        procs.cleanup()


class _Clock:
    """Time that moves only when the test moves it."""

    def __init__(self) -> None:
        self.current = datetime(2024, 5, 1, 8, 0, 30, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


async def _dead_count(bus: Bus) -> bool:
    return len(await bus.dead_letters()) >= 1


async def _replayed(bus: Bus, first_id: str) -> bool:
    ids = [d.dead_letter.dead_letter_id for d in await bus.dead_letters()]
    return first_id not in ids and len(ids) == 1  # the replay was routed again and dead-lettered anew


async def test_the_router_keeps_shared_limits_under_its_permissions(secured: Secured, admin: Bus) -> None:
    from loom.api.router_policy import RouterPolicySpec
    from loom.router.limits import AdmissionQueue, Limiter
    from loom.router.shared_limits import LIMITS_BUCKET, SharedLimits

    router = await secured.connect("router")
    try:
        kv = await router.key_value(LIMITS_BUCKET, ttl=3600)  # the router declares the bucket itself
        shared = SharedLimits()
        spec = RouterPolicySpec.model_validate({"replicas": 2, "rateLimits": {"local": {"maxConcurrent": 3}}})
        queue = AdmissionQueue(Limiter(spec, lambda: 0.0, factory=shared.limit_set), 30)
        for _ in range(5):
            assert queue.submit(queue.request("local", "a", 0, 1)) is None
        sets = [*queue.limiter.tiers.values(), *queue.limiter.tenants.values()]
        assert await shared.sync(kv, sets, [req for _, req in queue.waiting])
        assert len(queue.pump().admitted) == 3
    finally:
        await router.close()
    assert "router" not in secured.violations()
