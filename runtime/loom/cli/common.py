"""Options every role shares: NATS connection, logging, metrics port."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from loom.local.state import DEFAULT_RUN_DIR, default_run_dir
from loom.settings import (
    DEFAULT_PUBLISH_TIMEOUT,
    PUBLISH_TIMEOUT_ENV,
    REPLICAS_ENV,
    NatsSettings,
    parse_publish_timeout,
    parse_replicas,
)

T = TypeVar("T")


def _option_type(parse: Callable[[str], T], text: str) -> T:
    """``parse(text)`` as an option's ``type`` (bound with ``partial``): its ValueError becomes
    argparse's usage error."""
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_nats_options(parser: argparse.ArgumentParser) -> None:
    """``--nats-url`` and friends, each defaulting to its ``LOOM_NATS_*`` environment variable."""
    env = os.environ.get
    g = parser.add_argument_group("NATS connection")
    g.add_argument("--nats-url", default=env("LOOM_NATS_URL", NatsSettings.url), help="env LOOM_NATS_URL")
    g.add_argument(
        "--nats-creds", default=env("LOOM_NATS_CREDS"), help="credentials file; env LOOM_NATS_CREDS"
    )
    g.add_argument("--nats-user", default=env("LOOM_NATS_USER"), help="env LOOM_NATS_USER")
    g.add_argument("--nats-password", default=env("LOOM_NATS_PASSWORD"), help="env LOOM_NATS_PASSWORD")
    g.add_argument("--nats-token", default=env("LOOM_NATS_TOKEN"), help="env LOOM_NATS_TOKEN")
    g.add_argument("--nats-tls-ca", default=env("LOOM_NATS_TLS_CA"), help="env LOOM_NATS_TLS_CA")
    g.add_argument("--nats-tls-cert", default=env("LOOM_NATS_TLS_CERT"), help="env LOOM_NATS_TLS_CERT")
    g.add_argument("--nats-tls-key", default=env("LOOM_NATS_TLS_KEY"), help="env LOOM_NATS_TLS_KEY")
    g.add_argument(
        "--nats-inbox-prefix",
        default=env("LOOM_NATS_INBOX_PREFIX"),
        help="reply subject prefix of this identity (with bus permissions: _INBOX_<user>); "
        "env LOOM_NATS_INBOX_PREFIX",
    )
    g.add_argument(
        "--nats-replicas",
        type=partial(_option_type, parse_replicas),
        default=env(REPLICAS_ENV),
        help="replicas of Loom's streams and Key-Value buckets, 1-5 (3 on a 3-node JetStream cluster); "
        f"unset: new ones get 1, existing ones keep theirs; env {REPLICAS_ENV}",
    )
    g.add_argument(
        "--nats-publish-timeout",
        type=partial(_option_type, parse_publish_timeout),
        default=env(PUBLISH_TIMEOUT_ENV),
        metavar="SECONDS",
        help="how long a publish into a stream or a JetStream API request may take before it fails "
        f"(default 10; a publish this identity may not make fails only then); env {PUBLISH_TIMEOUT_ENV}",
    )


def add_runtime_options(parser: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    """NATS options plus logging and (for long-running roles) the metrics/health port."""
    add_nats_options(parser)
    env = os.environ.get
    g = parser.add_argument_group("logging and metrics")
    g.add_argument(
        "--log-json",
        action="store_true",
        default=env("LOOM_LOG_JSON", "") in ("1", "true"),
        help="env LOOM_LOG_JSON",
    )
    g.add_argument("--log-level", default=env("LOOM_LOG_LEVEL", "INFO"), help="env LOOM_LOG_LEVEL")
    if metrics:
        g.add_argument(
            "--metrics-port",
            type=int,
            default=int(env("LOOM_METRICS_PORT", "9090")),
            help="/metrics and /healthz, /readyz port (0 = pick a free one, -1 = off); env LOOM_METRICS_PORT",
        )
        g.add_argument(
            "--nats-lost-grace",
            type=float,
            default=float(env("LOOM_NATS_LOST_GRACE", "60")),
            help="seconds without NATS before /healthz fails (default 60); env LOOM_NATS_LOST_GRACE",
        )


def add_goal_consumer_options(parser: argparse.ArgumentParser) -> None:
    """Delivery options of the goal-consuming roles (pipeline, orchestrator)."""
    parser.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        help="Seconds without a heartbeat before a goal goes to another replica (default 30).",
    )
    parser.add_argument(
        "--max-deliver",
        type=int,
        default=10,
        help="Deliveries of one goal before it becomes a dead letter (reason max_deliveries).",
    )
    parser.add_argument(
        "--drain-grace", type=float, default=5.0, help="Seconds running goals get on shutdown."
    )


def nats_settings(args: argparse.Namespace, name: str = "loom") -> NatsSettings:
    """NatsSettings from parsed options."""
    return NatsSettings(
        url=args.nats_url,
        creds_file=args.nats_creds,
        user=args.nats_user,
        password=args.nats_password,
        token=args.nats_token,
        tls_ca=args.nats_tls_ca,
        tls_cert=args.nats_tls_cert,
        tls_key=args.nats_tls_key,
        inbox_prefix=args.nats_inbox_prefix,
        replicas=args.nats_replicas,
        # argparse converts a string default (the env variable) with the option's type
        publish_timeout=args.nats_publish_timeout or DEFAULT_PUBLISH_TIMEOUT,
        name=name,
    )


def add_local_credentials_option(parser: argparse.ArgumentParser) -> None:
    """``--run-dir``: where a ``loom up`` keeps the bus credentials a client command may use."""
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=default_run_dir(),
        help=f"run dir of `loom up`, whose bus credentials are used for its NATS URL when no "
        f"--nats-user/--nats-creds/--nats-token is given (default {DEFAULT_RUN_DIR}); env LOOM_RUN_DIR",
    )


def client_nats_settings(args: argparse.Namespace, name: str, *, tenant: str | None) -> NatsSettings:
    """NatsSettings of a client command: its options, else the ``loom up`` identity for the command
    (the submitter of ``tenant``, or the admin when ``tenant`` is None); see
    :func:`loom.local.credentials.client_settings`. Raises LocalCredentialsError when the run dir's
    credentials do not hold that identity."""
    from loom.local.credentials import client_settings

    return client_settings(nats_settings(args, name=name), args.run_dir.resolve(), tenant=tenant)


def explain_refusal(args: argparse.Namespace, settings: NatsSettings, command: str) -> None:
    """After the bus refused the connection: say where credentials come from when none were used."""
    from loom.local.credentials import has_credentials, missing_credentials_hint

    if not has_credentials(settings):
        print(f"{command}: {missing_credentials_hint(args.run_dir.resolve())}", file=sys.stderr)


def fail(command: str, message: object, code: int = 2) -> int:
    """Print ``command: message`` on stderr and return ``code`` (default 2: bad input)."""
    print(f"{command}: {message}", file=sys.stderr)
    return code


def run_client(
    args: argparse.Namespace,
    command: str,
    main: Callable[[NatsSettings], Coroutine[Any, Any, int]],
    *,
    tenant: str | None = None,
    bus_error: int = 1,
) -> int:
    """Run ``main(settings)`` of a client command with :func:`client_nats_settings` (as the
    ``loom-<command>`` connection): exit 2 when the run dir's credentials lack the identity, and
    ``bus_error`` when the bus fails, saying where credentials come from when it refused them."""
    from loom.bus import BusAuthError, BusError
    from loom.local.credentials import LocalCredentialsError

    try:
        settings = client_nats_settings(args, command.replace(" ", "-"), tenant=tenant)
    except LocalCredentialsError as exc:
        return fail(command, exc)
    try:
        return asyncio.run(main(settings))
    except BusError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        if isinstance(exc, BusAuthError):
            explain_refusal(args, settings, command)
        return bus_error
