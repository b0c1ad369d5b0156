"""Which model endpoints a tier may call: one decision for the API models, ``loom validate``,
the operator and the worker (at start and before every request).

A tier's URL is called with the tier's API key and its answers flow into task
results, so a URL chosen freely is a server-side request forgery with an echo.
The rules:

- the URL's origin must match an allowed entry, ``[scheme://]host[:port]``: no scheme
  means ``https``, no port means the scheme's default, ``*.example.com`` matches
  sub-domains; the backends' own public endpoints (:data:`BUILTIN_URLS`) are always allowed;
- every address the host resolves to must be public, or inside an allowed network
  (CIDR); link-local, cloud-metadata, private, shared, reserved and multicast addresses
  are refused unless listed that way;
- loopback is refused outside local mode, whatever is listed (in a pod it reaches the
  pod itself); in local mode a listed loopback URL is allowed (``loom up`` lists its
  own embedded model server).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from loom.settings import local_mode

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The backends' default public endpoints (OpenAI, Anthropic), always allowed.
BUILTIN_URLS = ("https://api.openai.com", "https://api.anthropic.com")
#: Environment variable with the allow-list (JSON: ``{"allowedUrls": [...], "allowedNetworks": [...]}``).
ENDPOINTS_ENV = "LOOM_MODEL_ENDPOINTS"

#: Instance-metadata services of the clouds (AWS/GCP/Azure/OpenStack, AWS ECS, AWS IPv6, Alibaba).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Address ranges that are not the public internet: loopback, private, shared (carrier-grade NAT,
#: where 100.100.100.200 lives), link-local (with the metadata services), documentation,
#: benchmarking, multicast and reserved. :func:`address_problem` refuses every address in them
#: unless listed; the operator's egress NetworkPolicy for worker pods (which cannot name hosts)
#: excepts them from "anywhere on the model port", so both layers draw the same line.
NON_PUBLIC_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)
_NON_PUBLIC = tuple(ipaddress.ip_network(n) for n in NON_PUBLIC_NETWORKS)


class EndpointRefused(ValueError):
    """A model endpoint is not allowed; the message says why and what to list."""


@dataclass(frozen=True)
class AllowedOrigin:
    """One allow-list entry: scheme, host (or ``*.suffix``) and port."""

    scheme: str
    host: str
    port: int

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


def parse_allowed_url(entry: str) -> AllowedOrigin:
    """An allow-list entry; raises ValueError for anything but ``[http(s)://]host[:port]``."""
    text = entry.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{entry!r}: scheme must be https or http")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"{entry!r}: give only [scheme://]host[:port], no path, user or query")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{entry!r}: {exc}") from None
    host = (parts.hostname or "").lower()
    if not host or "*" in host[2:] or ("*" in host and not host.startswith("*.")):
        raise ValueError(f"{entry!r}: needs a host name, optionally starting with '*.'")
    return AllowedOrigin(parts.scheme, host, port or _DEFAULT_PORTS[parts.scheme])


def parse_network(entry: str) -> IPNetwork:
    """An allowed address range in CIDR notation; raises ValueError otherwise."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{entry!r}: not a network in CIDR notation ({exc})") from None


@dataclass(frozen=True)
class EndpointRules:
    """The allow-list in force for one process."""

    urls: tuple[AllowedOrigin, ...] = field(default_factory=tuple)
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)
    local_mode: bool = False

    @classmethod
    def build(
        cls, urls: Iterable[str] = (), networks: Iterable[str] = (), *, local_mode: bool = False
    ) -> EndpointRules:
        """Rules from allow-list text (the built-in public endpoints are added)."""
        return cls(
            urls=tuple(parse_allowed_url(u) for u in (*BUILTIN_URLS, *urls)),
            networks=tuple(parse_network(n) for n in networks),
            local_mode=local_mode,
        )


def rules_from_env(env: Mapping[str, str]) -> EndpointRules:
    """The rules a process runs under: ``LOOM_MODEL_ENDPOINTS`` and local mode (``LOOM_LOCAL_MODE``)."""
    raw = env.get(ENDPOINTS_ENV, "").strip()
    doc: dict[str, object] = {}
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise EndpointRefused(f"{ENDPOINTS_ENV} is not JSON: {exc}") from None
        if not isinstance(loaded, dict) or set(loaded) - {"allowedUrls", "allowedNetworks"}:
            raise EndpointRefused(f"{ENDPOINTS_ENV} must be an object with allowedUrls and allowedNetworks")
        doc = loaded
    urls, networks = doc.get("allowedUrls") or [], doc.get("allowedNetworks") or []
    if not isinstance(urls, list) or not isinstance(networks, list):
        raise EndpointRefused(f"{ENDPOINTS_ENV}: allowedUrls and allowedNetworks must be lists")
    local = local_mode(env)
    try:
        return EndpointRules.build([str(u) for u in urls], [str(n) for n in networks], local_mode=local)
    except ValueError as exc:
        raise EndpointRefused(f"{ENDPOINTS_ENV}: {exc}") from None


def address_problem(address: IPAddress, rules: EndpointRules) -> str | None:
    """Why a resolved address may not be called, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if rules.local_mode else f"{address} is loopback, allowed only in local mode (loom up)"
    if any(address in net for net in rules.networks):
        return None
    if address in METADATA_ADDRESSES:
        kind = "a cloud metadata service"
    elif address.is_link_local:
        kind = "link-local"
    elif address.is_unspecified or address.is_multicast or address.is_reserved:
        kind = "not a unicast address"
    elif address.is_private or not address.is_global or any(address in n for n in _NON_PUBLIC):
        kind = "private or cluster-internal"
    else:
        return None
    return f"{address} is {kind}; list its range in modelEndpoints.allowedNetworks to allow it"


def url_problem(url: str, rules: EndpointRules) -> str | None:
    """Why a URL may not be called, judged without DNS (the host's addresses come later), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        return f"{url!r} is not an http(s) URL with a host"
    if parts.username or parts.password:
        return f"{url!r} carries a user name or password; give the API key through the tier's secret"
    port = port or _DEFAULT_PORTS[scheme]
    origin = f"{scheme}://{host}:{port}"
    if not any(a.matches(scheme, host, port) for a in rules.urls):
        hint = " (no scheme means https; list an http endpoint as http://...)" if scheme == "http" else ""
        return f"{origin} is not in modelEndpoints.allowedUrls{hint}"
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return address_problem(literal, rules)


def check_url(url: str, rules: EndpointRules) -> None:
    """Raise :class:`EndpointRefused` when the URL itself is not allowed (no DNS)."""
    problem = url_problem(url, rules)
    if problem:
        raise EndpointRefused(f"model endpoint refused: {problem}")


def check_addresses(url: str, addresses: Iterable[str], rules: EndpointRules) -> None:
    """Raise :class:`EndpointRefused` when any address the URL's host resolved to is not allowed."""
    check_url(url, rules)
    for text in addresses:
        problem = address_problem(ipaddress.ip_address(text.split("%", 1)[0]), rules)
        if problem:
            host = urlsplit(url).hostname
            raise EndpointRefused(f"model endpoint refused: {host} resolves to {problem}")


def address_literal(url: str) -> bool:
    """Whether the URL's host is an IP address (nothing to resolve: its verdict never changes)."""
    try:
        host = (urlsplit(url).hostname or "").strip("[]")
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check_endpoint(url: str, rules: EndpointRules) -> None:
    """The check before a request: the URL, then every address its host resolves to now.

    Raises :class:`EndpointRefused`, or OSError when the host does not resolve (try again later).
    An address literal (``127.0.0.1``, ``[::1]``) is judged by :func:`check_url` alone: there is
    nothing to resolve, and no thread is borrowed for a lookup on every call.
    """
    check_url(url, rules)
    if address_literal(url):
        return
    parts = urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, parts.port or _DEFAULT_PORTS[parts.scheme.lower()], type=socket.SOCK_STREAM
    )
    check_addresses(url, [str(info[4][0]) for info in infos], rules)
