"""``loom up``: run Worker, Pipeline, RouterPolicy and Schedule manifests on this machine, and
run each EvalSuite once through the router when everything is ready.

Starts an embedded NATS with JetStream (or uses ``--nats-url``), one shared local
model server when a tier runs on backend ``local``, and every role as a child
process that is restarted if it dies. Ctrl-C drains and stops; a second Ctrl-C
kills at once.

The embedded NATS requires credentials: every process connects as its own identity
with the permissions of its role (:mod:`loom.local.credentials`), and ``loom submit``
and ``loom dead-letter`` find theirs in the run dir. ``--no-auth`` turns this off.
Every process runs in local mode (``LOOM_LOCAL_MODE=1``): its ports listen on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import yaml

from loom.api.loader import LoadError, load_paths
from loom.bus_auth import Credential, server_authorization
from loom.cli.common import fail
from loom.local.credentials import (
    SERVER_CONFIG_FILE,
    LocalCredentials,
    LocalCredentialsError,
    credentials_path,
    named_tenants,
    plan_identities,
    remove_credentials,
    write_credentials,
    write_private,
)
from loom.local.evals import eval_command, eval_suites, write_suites
from loom.local.manifests import LocalPlan, PlanError, build_plan, local_llm_tiers
from loom.local.state import DEFAULT_RUN_DIR, RunState, default_run_dir, running_state, write_state
from loom.local.supervisor import ProcessSpec, Supervisor, SupervisorError
from loom.settings import LOCAL_MODE_ENV
from loom.telemetry import OTLP_ENDPOINT_ENV, role_env

NAME = "up"
HELP = "Run manifests locally: embedded NATS, local model, router, workers, pipelines, schedules."

DEFAULT_PATHS = ("config/samples",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="DIR|FILE",
        help=f"manifests (YAML files or directories); default: {DEFAULT_PATHS[0]}",
    )
    parser.add_argument(
        "--nats-url",
        default=env("LOOM_UP_NATS_URL"),
        help="use this NATS (with JetStream) instead of starting one; env LOOM_UP_NATS_URL",
    )
    parser.add_argument(
        "--nats-monitor-url",
        default=env("LOOM_NATS_MONITOR_URL"),
        help="monitoring endpoint of --nats-url for the view (default: its host, port 8222)",
    )
    parser.add_argument(
        "--nats-port",
        type=int,
        default=int(env("LOOM_UP_NATS_PORT", "4222")),
        help="client port of the embedded NATS (0 = any free port)",
    )
    parser.add_argument(
        "--nats-monitor-port",
        type=int,
        default=int(env("LOOM_UP_NATS_MONITOR_PORT", "8222")),
        help="monitoring port of the embedded NATS (0 = any free port)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=default_run_dir(),
        help=f"config files, logs, state file, bus credentials and NATS store (default {DEFAULT_RUN_DIR}); "
        "env LOOM_RUN_DIR",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="start the embedded NATS WITHOUT authentication: any local process may then read every "
        "task and result, forge results, skip the router and delete the streams",
    )
    parser.add_argument(
        "--orchestrator",
        metavar="FILE",
        help="also run the dynamic orchestrator (loom orchestrator --config FILE)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        default=env(OTLP_ENDPOINT_ENV),
        metavar="URL",
        help="export traces of every role to this OTLP/HTTP collector (e.g. http://127.0.0.1:4318); "
        f"env {OTLP_ENDPOINT_ENV}",
    )
    parser.add_argument("--no-view", action="store_true", help="plain prefixed logs instead of the live view")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds each phase gets to drain on stop")
    parser.add_argument("--log-level", default=env("LOOM_LOG_LEVEL", "INFO"), help="log level of the roles")


def _free_ports() -> Iterator[int]:
    """Distinct free loopback ports (each probed, never handed out twice)."""
    from loom.ports import free_port

    seen: set[int] = set()
    while True:
        port = free_port()
        if port not in seen:
            seen.add(port)
            yield port


_fail = partial(fail, "loom up")


def write_configs(plan: LocalPlan) -> None:
    """Each planned config file, as the operator's ConfigMaps hold them."""
    for proc in plan.processes:
        if proc.config_file and proc.config is not None:
            path = Path(proc.config_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(proc.config, sort_keys=False), encoding="utf-8")


#: Credentials a child must not inherit from the user's shell when it gets its own identity.
_INHERITED_AUTH = {"LOOM_NATS_CREDS": "", "LOOM_NATS_TOKEN": ""}


def process_specs(
    plan: LocalPlan,
    *,
    nats_url: str,
    log_level: str,
    cwd: str,
    credentials: Mapping[str, Credential] | None = None,
    telemetry: Mapping[str, str] | None = None,
) -> list[ProcessSpec]:
    """Planned roles as supervised ``python -m loom.cli.main <role>`` processes, in local mode.

    ``credentials`` (by process name) give each process its bus identity; ``telemetry`` (from
    :func:`loom.telemetry.role_env`) its tracing and audit variables.
    """
    specs = []
    for proc in plan.processes:
        metrics = f"http://127.0.0.1:{proc.metrics_port}"
        auth = {} if credentials is None else {**_INHERITED_AUTH, **credentials[proc.name].env}
        specs.append(
            ProcessSpec(
                name=proc.name,
                role=proc.role,
                argv=(sys.executable, "-m", "loom.cli.main", *proc.args),
                phase=proc.phase,
                env={
                    "LOOM_NATS_URL": nats_url,
                    "LOOM_METRICS_PORT": str(proc.metrics_port),
                    "LOOM_LOG_LEVEL": log_level,
                    "PYTHONUNBUFFERED": "1",
                    LOCAL_MODE_ENV: "1",
                    **(telemetry or {}),
                    **proc.env,
                    **auth,
                },
                cwd=cwd,
                ready_url=f"{metrics}/readyz",
                metrics_url=f"{metrics}/metrics",
                tier=proc.tier,
            )
        )
    return specs


def run(args: argparse.Namespace) -> int:
    paths = args.paths or list(DEFAULT_PATHS)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return _fail(f"no such file or directory: {', '.join(missing)}")
    try:
        resources = load_paths(paths)
    except LoadError as exc:
        return _fail("invalid manifests:\n  " + "\n  ".join(exc.problems))
    try:
        telemetry = role_env(os.environ, args.otlp_endpoint)
    except ValueError as exc:
        return _fail(str(exc))
    run_dir: Path = args.run_dir.resolve()
    if (live := running_state(run_dir)) is not None:
        return _fail(
            f"already running (pid {live.pid}) with run dir {run_dir}; stop it or use another --run-dir", 1
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_credentials(run_dir)  # a previous run's, left by a crash: never reused

    from loom.local.nats import NatsUnavailable, choose_port, default_monitor_url, embedded_nats

    auth = not args.nats_url and not args.no_auth
    infra: list[ProcessSpec] = []
    try:
        if args.nats_url:
            nats_url = args.nats_url
            monitor_url = args.nats_monitor_url or default_monitor_url(nats_url)
        else:
            nats_spec, nats_url, monitor_url = embedded_nats(
                run_dir / "nats-store",
                choose_port(args.nats_port, "NATS client"),
                choose_port(args.nats_monitor_port, "NATS monitoring"),
                config_file=run_dir / SERVER_CONFIG_FILE if auth else None,
            )
            infra.append(nats_spec)
    except NatsUnavailable as exc:
        return _fail(str(exc))
    if args.no_auth and not args.nats_url:
        print(
            "loom up: WARNING: --no-auth: the embedded NATS accepts ANY client without credentials. "
            "Every local process and user can read all tasks and results, forge results, bypass the "
            "router and its limits, and delete the streams and dead letters.",
            file=sys.stderr,
        )

    ports = _free_ports()
    llm_url: str | None = None
    try:
        if local_llm_tiers(resources):
            from loom.local.llm import LocalModelUnavailable, local_llm_processes, widest_level

            try:
                llm_specs, llm_url = local_llm_processes(ports, widest=widest_level(resources))
            except LocalModelUnavailable as exc:
                return _fail(str(exc))
            infra.extend(llm_specs)
        plan = build_plan(
            resources,
            run_dir=run_dir,
            ports=ports,
            local_llm_url=llm_url,
            orchestrator_config=args.orchestrator,
            env=os.environ,
        )
    except PlanError as exc:
        return _fail("cannot run these manifests locally:\n  " + "\n  ".join(exc.problems))
    for warning in plan.warnings:
        print(f"loom up: warning: {warning}", file=sys.stderr)
    by_process: dict[str, Credential] | None = None
    if auth:
        try:
            by_process = setup_bus_auth(plan, named_tenants(resources), run_dir, nats_url)
        except LocalCredentialsError as exc:
            return _fail(str(exc))
    try:
        write_configs(plan)
        evals = [
            eval_command(f, paths, nats_url=nats_url, run_dir=run_dir)
            for f in write_suites(eval_suites(resources), run_dir)
        ]
        specs = infra + process_specs(
            plan,
            nats_url=nats_url,
            log_level=args.log_level,
            cwd=os.getcwd(),
            credentials=by_process,
            telemetry=telemetry,
        )
        state = RunState(
            pid=os.getpid(),
            nats_url=nats_url,
            nats_monitor_url=monitor_url,
            embedded_nats=not args.nats_url,
            bus_auth=by_process is not None,
            local_llm_url=llm_url,
            manifests=[str(Path(p).resolve()) for p in paths],
        )
        return asyncio.run(_up(specs, state, run_dir, args, evals))
    finally:
        remove_credentials(run_dir)  # passwords live only as long as this run


def setup_bus_auth(
    plan: LocalPlan, tenants: list[str], run_dir: Path, nats_url: str
) -> dict[str, Credential]:
    """Generate every identity's password, write the server's ``authorization`` block and the run
    dir's credentials file (both mode 0600), and return each process's credential by name."""
    by_identity, everyone = plan_identities(plan, tenants)
    local = LocalCredentials.generate(nats_url, everyone)
    write_private(run_dir / SERVER_CONFIG_FILE, server_authorization(list(local.credentials)))
    write_credentials(run_dir, local)
    return {name: local.user(ident.user) for name, ident in by_identity.items()}


async def run_evals(commands: list[list[str]]) -> list[int]:
    """Run each suite's ``loom eval`` in turn (its table on this terminal); print each verdict."""
    codes = []
    for command in commands:
        name = Path(command[command.index("eval") + 1]).stem
        print(f"loom up: running EvalSuite {name} through the router", file=sys.stderr, flush=True)
        proc = await asyncio.create_subprocess_exec(*command)
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            proc.terminate()
            await proc.wait()
            raise
        verdict = {0: "passed", 1: "FAILED (below its threshold or regressed)"}.get(
            code, f"could not run (exit {code}; see above)"
        )
        print(f"loom up: EvalSuite {name}: {verdict}", file=sys.stderr, flush=True)
        codes.append(code)
    return codes


async def _up(
    specs: list[ProcessSpec],
    state: RunState,
    run_dir: Path,
    args: argparse.Namespace,
    evals: list[list[str]] | None = None,
) -> int:
    sup: Supervisor

    def publish() -> None:
        state.processes = [st.as_dict() for st in sup.snapshot()]
        if state.phase == "starting" and sup.all_ready:
            state.phase = "ready"
        write_state(run_dir, state)

    sup = Supervisor(
        specs,
        log_dir=run_dir / "logs",
        echo=sys.stdout if args.no_view else None,
        grace_seconds=args.grace,
        on_change=publish,
    )
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0
    killers: set[asyncio.Future[None]] = set()

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            print(f"\nloom up: {signal.Signals(signum).name}: draining (again to kill now)", file=sys.stderr)
            stop_requested.set()
        else:
            killers.add(asyncio.ensure_future(sup.kill_now()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    publish()
    code = 0
    view: asyncio.Task[None] | None = None
    stopper: asyncio.Task[bool] | None = None
    try:
        starter = asyncio.create_task(sup.start())
        stopper = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({starter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if starter.done():
            starter.result()  # raises SupervisorError when something never became ready
            state.phase = "ready"
            publish()
            _print_ready(state, run_dir)
            if evals:
                # Before the live view takes the terminal: each suite's table stays readable.
                running = asyncio.create_task(run_evals(evals))
                await asyncio.wait({running, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not running.done():
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
            if not args.no_view and not stop_requested.is_set():
                from loom.local.view import run_view

                view = asyncio.create_task(
                    run_view(
                        lambda: state.processes,
                        monitor_url=state.nats_monitor_url,
                        nats_url=state.nats_url,
                        local_llm_url=state.local_llm_url,
                        started_at=state.started_at,
                        stop=stop_requested,
                    )
                )
                await asyncio.wait({stopper, view}, return_when=asyncio.FIRST_COMPLETED)
                if view.done() and view.exception() is not None:
                    print(
                        f"loom up: live view failed ({view.exception()!r}); processes keep running, "
                        f"logs in {run_dir / 'logs'}; Ctrl-C stops",
                        file=sys.stderr,
                    )
            await stopper
        else:
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError, SupervisorError):
                await starter
    except SupervisorError as exc:
        print(f"loom up: {exc}", file=sys.stderr)
        state.message = str(exc)
        code = 1
    finally:
        stop_requested.set()
        if view is not None and not view.done():
            await asyncio.wait({view})
        if stopper is not None:
            await stopper
        state.phase = "stopping"
        publish()
        await sup.stop()
        state.phase = "failed" if code else "stopped"
        publish()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print(
        f"loom up: stopped ({sum(int(p.get('restarts') or 0) for p in state.processes)} restarts)",
        file=sys.stderr,
    )
    return code


def _print_ready(state: RunState, run_dir: Path) -> None:
    flag = "" if state.nats_url == "nats://127.0.0.1:4222" else f" --nats-url {state.nats_url}"
    if state.bus_auth and run_dir != default_run_dir().resolve():
        flag += f" --run-dir {run_dir}"
    pipelines = [p["name"].removeprefix("pipeline-") for p in state.processes if p.get("role") == "pipeline"]
    logs = run_dir / "logs"
    if state.bus_auth:
        auth = f"bus auth on (credentials in {credentials_path(run_dir)})"
    else:
        auth = "bus auth OFF (--no-auth)" if state.embedded_nats else "bus auth as that NATS has it"
    print(
        f"loom up: ready: {len(state.processes)} processes; NATS {state.nats_url}, {auth}; logs in {logs}",
        file=sys.stderr,
        flush=True,
    )
    if pipelines:
        print(
            f"loom up: submit a goal: loom submit 'INSTRUCTION' --pipeline {pipelines[0]} "
            f"--context KEY=VALUE --wait{flag}",
            file=sys.stderr,
            flush=True,
        )
