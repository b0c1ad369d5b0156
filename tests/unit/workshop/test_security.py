"""The Workshop's guards: loopback unless a token is set, CSRF token and Origin on state changes, the
access token; as pure rules and through the real app (in process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loom.workshop.app import Settings, create_app
from loom.workshop.project import Project
from loom.workshop.security import (
    BindError,
    access_problem,
    check_bind,
    csrf_problem,
    host_allowed,
    is_loopback,
)

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "s3cret-s3cret-s3cret"


def test_loopback_binds_need_no_token_others_do() -> None:
    for host in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(BindError, match="requires an access token"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(BindError, match="at least 16 characters"):
        check_bind("127.0.0.1", "short")


def test_without_a_token_only_loopback_host_names_are_served() -> None:
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "127.0.0.2"):
        assert host_allowed(host, None)
    for host in ("evil.example:8765", "192.168.1.5:8765", "", None):
        assert not host_allowed(host, None)  # a page re-bound to 127.0.0.1 still names its own domain
    assert host_allowed("workshop.lan:8765", TOKEN)


def test_csrf_rule() -> None:
    ok = {"host": "127.0.0.1:8765", "x-loom-csrf": "T"}
    assert csrf_problem("GET", {}, None, "T") is None
    assert csrf_problem("POST", ok, None, "T") is None
    assert csrf_problem("POST", {**ok, "origin": "http://127.0.0.1:8765"}, None, "T") is None
    assert csrf_problem("POST", {"host": "h"}, "T", "T") is None  # hidden form field
    assert "CSRF" in (csrf_problem("POST", {"host": "h"}, None, "T") or "")
    assert "CSRF" in (csrf_problem("POST", {**ok, "x-loom-csrf": "X"}, None, "T") or "")
    assert "cross-site" in (csrf_problem("POST", {**ok, "origin": "http://evil.example"}, None, "T") or "")
    assert "cross-site" in (csrf_problem("POST", {**ok, "origin": "null"}, None, "T") or "")


def test_access_rule() -> None:
    assert access_problem(None, bearer=None, cookie=None, query=None) is None
    assert access_problem("T", bearer="T", cookie=None, query=None) is None
    assert access_problem("T", bearer=None, cookie="T", query=None) is None
    assert access_problem("T", bearer=None, cookie=None, query="T") is None
    assert access_problem("T", bearer="nope", cookie=None, query=None) is not None


def _client(token: str | None = None) -> httpx.AsyncClient:
    app = create_app(Settings(project=Project(ROOT / "config" / "samples"), token=token))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8765")


async def test_the_app_refuses_state_changes_without_csrf_or_from_another_origin() -> None:
    async with _client() as client:
        page = await client.get("/workers/doc-extractor")
        assert page.status_code == 200
        token = page.text.split('"X-Loom-CSRF": "')[1].split('"')[0]
        body = {"mode": "json", "raw_json": '{"text": "Hi."}'}
        assert (await client.post("/workers/doc-extractor/test", data=body)).status_code == 403
        evil = await client.post(
            "/workers/doc-extractor/test",
            data=body,
            headers={"x-loom-csrf": token, "origin": "http://evil.example"},
        )
        assert evil.status_code == 403 and "cross-site" in evil.text
        fine = await client.post("/workers/doc-extractor/test", data=body, headers={"x-loom-csrf": token})
        assert fine.status_code == 200 and 'data-state="running"' in fine.text
        field = await client.post("/workers/doc-extractor/test", data={**body, "csrf": token})
        assert field.status_code == 200


async def test_the_app_with_a_token_admits_only_its_holder() -> None:
    async with _client(token=TOKEN) as client:
        assert (await client.get("/workers")).status_code == 401
        assert (await client.get("/workers", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 200
        first = await client.get(f"/workers?token={TOKEN}")
        assert first.status_code == 200 and "loom_workshop_token" in first.headers["set-cookie"]
        assert (await client.get("/workers")).status_code == 200  # the cookie now


async def test_a_foreign_host_name_is_refused() -> None:
    async with _client() as client:
        rebound = await client.get("/workers", headers={"host": "evil.example:8765"})
        assert rebound.status_code == 421


def test_the_command_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    from tests.support.processes import run_cli

    out = run_cli("workshop", str(tmp_path), "--host", "0.0.0.0")
    assert out.returncode == 2 and "requires an access token" in out.stderr
    (tmp_path / "t").write_text("short\n")
    out = run_cli("workshop", str(tmp_path), "--host", "0.0.0.0", "--token-file", str(tmp_path / "t"))
    assert out.returncode == 2 and "at least 16 characters" in out.stderr
    out = run_cli("workshop", str(tmp_path), "--root", str(tmp_path / "sub"))
    assert out.returncode == 2 and "not a directory" in out.stderr


async def test_unknown_names_are_404_not_errors() -> None:
    async with _client() as client:
        missing = await client.get("/workers/nobody")
        assert missing.status_code == 404 and "no Worker &#39;nobody&#39;" in missing.text
