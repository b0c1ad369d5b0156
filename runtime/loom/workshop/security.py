"""The Workshop's guards (pure): where it may listen, who may call it, which requests may change state.

Loopback by default; any other bind address needs an access token. State-changing requests carry the
process's CSRF token (a header htmx sends, or a form field) and, when the browser names an Origin, it
must be the Workshop's own: another site's page can neither read the token nor forge the Origin.
Without an access token only loopback ``Host`` names are served, which defeats DNS rebinding.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from loom.ports import is_loopback

CSRF_HEADER = "x-loom-csrf"
CSRF_FIELD = "csrf"
TOKEN_COOKIE = "loom_workshop_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


class BindError(ValueError):
    """The bind address is not allowed as given."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without an access token (anyone on the network could drive models),
    and a token too short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise BindError(f"the access token must have at least {MIN_TOKEN_CHARS} characters")
    if not is_loopback(host) and not token:
        raise BindError(
            f"--host {host} is not a loopback address: the Workshop then requires an access token "
            "(--token-file, LOOM_WORKSHOP_TOKEN or --token), or bind to 127.0.0.1"
        )


def host_allowed(host_header: str | None, token: str | None) -> bool:
    """Whether a request's ``Host`` may be served: without a token only loopback names, so a web
    page whose domain was re-bound to 127.0.0.1 (DNS rebinding) cannot read or drive the Workshop."""
    if token:
        return True  # the token guards every request; a re-bound page never holds it
    if not host_header:
        return False
    name = urlsplit(f"//{host_header}").hostname or ""
    return name in LOOPBACK_NAMES or is_loopback(name)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two secrets (False when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """Whether a request's ``Origin`` (when sent) is this server's own ``scheme://host:port``."""
    if origin is None:
        return True  # non-browser clients and same-origin GET-initiated forms in old browsers send none
    if origin == "null" or not host_header:
        return False
    return urlsplit(origin).netloc == host_header


def csrf_problem(
    method: str, headers: Mapping[str, str], form_token: str | None, expected: str
) -> str | None:
    """Why a request must be refused as cross-site, or None when it may proceed."""
    if method.upper() in SAFE_METHODS:
        return None
    if not origin_allowed(headers.get("origin"), headers.get("host")):
        return f"cross-site request refused (Origin {headers.get('origin')!r} is not this Workshop)"
    if not (same(headers.get(CSRF_HEADER), expected) or same(form_token, expected)):
        return "missing or wrong CSRF token (reload the page)"
    return None


def access_problem(
    token: str | None, *, bearer: str | None, cookie: str | None, query: str | None
) -> str | None:
    """Why a request lacks access when the Workshop has a token, or None when it may proceed."""
    if not token or same(bearer, token) or same(cookie, token) or same(query, token):
        return None
    return "this Workshop needs its access token: open it with ?token=TOKEN"
