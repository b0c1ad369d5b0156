"""Ports and listen addresses of processes on this machine: free ports (local mode, the local model
server, tests) and whether an address is loopback-only (the Workshop's and the MCP gateway's binds)."""

from __future__ import annotations

import ipaddress
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (the caller binds it soon after; a race stays possible)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine (``localhost``,
    127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
