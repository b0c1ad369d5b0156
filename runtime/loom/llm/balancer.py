"""One address for several replicas of an OpenAI-compatible model server (llama.cpp, vLLM).

Local mode runs the embedded model as several llama.cpp server processes (each answers one
request at a time, see :mod:`loom.llm.llama_settings`); the workers know one base URL, and this
small HTTP proxy in front of the replicas sends each request to the replica with the fewest
requests in flight (:func:`loom.llm.balance.least_in_flight`), counted across every worker, which
a balancer inside each worker could not do. A replica that refuses the connection (crashed, being
restarted by the supervisor) is skipped for that request; when none accepts, the answer is a 502
with an OpenAI-style error body, which the providers retry as unavailable; so is a replica that
fails after taking the request (not sent to another here: it may have acted on it).

Every answer carries ``x-loom-upstream`` (the replica's index); ``GET /_balancer`` answers the
replicas with their requests in flight and served, for tests and diagnosis.

Run: ``python -m loom.llm.balancer --port 8911 http://127.0.0.1:8912 http://127.0.0.1:8913``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from loom.llm.balance import least_in_flight

log = logging.getLogger(__name__)

UPSTREAM_HEADER = "x-loom-upstream"
STATUS_PATH = "/_balancer"
#: Headers of one hop only (RFC 9110 §7.6.1), plus those the proxy sets itself.
_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    )
)


def forwarded_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """``headers`` without the hop-by-hop ones."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP_HEADERS)


def _error(status: int, kind: str, message: str) -> web.Response:
    """An OpenAI-style error answer (the providers read its type)."""
    body = json.dumps({"error": {"type": kind, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json")


class Balancer:
    """The replicas, their requests in flight and the proxying of one request."""

    def __init__(self, upstreams: Sequence[str], *, connect_timeout: float = 5.0):
        if not upstreams:
            raise ValueError("the balancer needs at least one upstream URL")
        self.upstreams = tuple(u.rstrip("/") for u in upstreams)
        self.in_flight = [0] * len(self.upstreams)
        self.served = [0] * len(self.upstreams)
        self.refused = [0] * len(self.upstreams)
        self.failed = [0] * len(self.upstreams)
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No total timeout: a request to a busy CPU model may take minutes; the caller bounds it.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def status(self) -> list[dict[str, object]]:
        return [
            {"url": url, "in_flight": n, "served": s, "refused": r, "failed": f}
            for url, n, s, r, f in zip(
                self.upstreams, self.in_flight, self.served, self.refused, self.failed, strict=True
            )
        ]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == STATUS_PATH and request.method == "GET":
            return web.json_response({"upstreams": self.status()})
        body = await request.read()
        headers = forwarded_headers(request.headers)
        tried: set[int] = set()
        while (index := least_in_flight(self.in_flight, tried)) is not None:
            tried.add(index)
            self.in_flight[index] += 1
            try:
                async with self.session().request(
                    request.method,
                    self.upstreams[index] + request.rel_url.raw_path_qs,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                ) as answer:
                    content = await answer.read()
                    out = forwarded_headers(answer.headers)
                    status = answer.status
            except aiohttp.ClientConnectorError as exc:
                self.refused[index] += 1
                log.warning("model replica %s refused the connection: %s", self.upstreams[index], exc)
                continue
            except aiohttp.ClientError as exc:
                # The request reached the replica, which may have acted on it: not sent again here.
                self.failed[index] += 1
                log.warning("model replica %s failed during the request: %r", self.upstreams[index], exc)
                return _error(502, "upstream_failed", f"model replica {index} failed during the request")
            finally:
                self.in_flight[index] -= 1
            self.served[index] += 1
            out[UPSTREAM_HEADER] = str(index)
            return web.Response(status=status, headers=out, body=content)
        return _error(
            502,
            "upstream_unavailable",
            f"no model replica accepted the connection ({len(self.upstreams)} tried)",
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)

        async def closing(_: web.Application) -> None:
            await self.close()

        app.on_cleanup.append(closing)
        return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loom.llm.balancer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("upstreams", nargs="+", help="base URLs of the replicas (scheme://host:port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    balancer = Balancer(args.upstreams)
    log.info("balancing %s on %s:%d", ", ".join(balancer.upstreams), args.host, args.port)
    web.run_app(balancer.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
