"""Who may talk to ``loom mcp --transport streamable-http``: a bearer token and Host/Origin checks.

- A bearer token is required whenever the listen address is not loopback (optional on
  loopback); it is read from a file (``--token-file`` / ``LOOM_MCP_TOKEN_FILE``) or the
  environment (``LOOM_MCP_TOKEN``), never from the command line, where any local user
  could read it in the process list. It is checked by the MCP SDK's bearer middleware
  through :class:`StaticTokenVerifier`.
- Host and Origin checks (the SDK's DNS-rebinding protection) are always on, with an
  explicit allow-list: the listen address itself, plus ``--allowed-host`` /
  ``--allowed-origin``. No browser Origin is allowed unless listed, so a web page the
  user happens to have open cannot drive the gateway.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings

from loom.ports import is_loopback

TOKEN_ENV = "LOOM_MCP_TOKEN"
TOKEN_FILE_ENV = "LOOM_MCP_TOKEN_FILE"
#: Shortest token accepted: a guessable token is no protection.
MIN_TOKEN_LENGTH = 16


class HttpSecurityError(ValueError):
    """The HTTP gateway cannot start safely as configured; the message says what to change."""


def is_wildcard(host: str) -> bool:
    """Whether a listen address accepts connections on every interface."""
    return host in ("0.0.0.0", "::", "[::]", "")


def load_token(token_file: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token from ``token_file`` (or ``LOOM_MCP_TOKEN_FILE``), else ``LOOM_MCP_TOKEN``."""
    e = os.environ if env is None else env
    path = token_file or e.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise HttpSecurityError(f"cannot read the MCP token file {path}: {exc.strerror}") from None
        if not token:
            raise HttpSecurityError(f"the MCP token file {path} is empty")
    else:
        token = e.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise HttpSecurityError(f"the MCP token is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


def _host_header(host: str, port: int) -> str:
    literal = host.strip("[]")
    return f"[{literal}]:{port}" if ":" in literal else f"{literal}:{port}"


@dataclass(frozen=True)
class HttpSecurity:
    """What the HTTP gateway enforces: the token (if any) and the Host/Origin allow-lists."""

    token: str | None
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    warning: str | None = None

    def transport_security(self) -> TransportSecuritySettings:
        """The SDK's Host/Origin protection, always enabled."""
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=list(self.allowed_hosts),
            allowed_origins=list(self.allowed_origins),
        )


def plan_http_security(
    host: str,
    port: int,
    token: str | None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
) -> HttpSecurity:
    """Decide the protection for a listen address; raises HttpSecurityError when it would be unsafe."""
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise HttpSecurityError(
            f"listening on {host} (not loopback) needs a bearer token: put it in a file and pass "
            f"--token-file (or {TOKEN_FILE_ENV}), or set {TOKEN_ENV}"
        )
    hosts = list(allowed_hosts)
    if loopback:
        hosts += [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
    elif not is_wildcard(host):
        hosts.append(_host_header(host, port))
    if not hosts:
        raise HttpSecurityError(
            f"listening on {host or 'every interface'} needs --allowed-host: the Host header values "
            f"clients use (e.g. mcp.example.com or 10.0.0.5:{port})"
        )
    warning = None
    if is_wildcard(host):
        warning = (
            f"loom mcp listens on EVERY network interface ({host or '0.0.0.0'}:{port}): anyone who can "
            "reach this port and holds the token can run the gateway's tools. Bind a specific "
            "address, or put the gateway behind TLS termination."
        )
    return HttpSecurity(token, tuple(dict.fromkeys(hosts)), tuple(dict.fromkeys(allowed_origins)), warning)


class StaticTokenVerifier:
    """The SDK's TokenVerifier for one shared bearer token (compared in constant time)."""

    def __init__(self, token: str):
        self._token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token=token, client_id="loom-mcp", scopes=[])
        return None

    def __repr__(self) -> str:
        return "StaticTokenVerifier(<redacted>)"
