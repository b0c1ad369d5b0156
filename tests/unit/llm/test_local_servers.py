"""What ``loom up`` runs for the local model: as many llama.cpp servers as the pipelines run stages
at once (up to the cores), and the balancer in front of them on the one URL workers are given."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.api.loader import load_paths
from loom.llm.balancer import STATUS_PATH
from loom.local.llm import local_llm_processes, widest_level

SAMPLES = Path(__file__).resolve().parents[3] / "config" / "samples"


def flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_widest_level_of_the_sample_pipeline_is_two() -> None:
    resources = load_paths(sorted(SAMPLES.glob("*.yaml")))
    assert widest_level(resources) == 2  # classify and summarise run at once
    assert widest_level([r for r in resources if r.kind != "Pipeline"]) == 1


@pytest.mark.parametrize("servers", ["2", "3"])
def test_several_servers_behind_one_balancing_address(servers: str) -> None:
    ports = iter(range(20000, 20010))
    env = {"LOOM_LOCAL_SERVERS": servers, "LOOM_LOCAL_N_BATCH": "512", "LOOM_LOCAL_THREADS": "1"}
    specs, url = local_llm_processes(ports, widest=2, env=env)
    count = int(servers)
    assert [s.name for s in specs] == [*(f"llm-local-{i}" for i in range(count)), "llm-local"]
    assert {s.phase for s in specs} == {specs[0].phase}  # all ready before the router starts
    server_ports = [flag(s.argv, "--port") for s in specs[:-1]]
    assert server_ports == [str(20000 + i) for i in range(count)]
    assert len({flag(s.argv, "--model") for s in specs[:-1]}) == 1  # one model file for all
    assert all(s.env == {"OMP_WAIT_POLICY": "PASSIVE"} for s in specs[:-1])
    balancer = specs[-1]
    assert balancer.argv[1:3] == ("-m", "loom.llm.balancer")
    assert list(balancer.argv[-count:]) == [f"http://127.0.0.1:{p}" for p in server_ports]
    port = 20000 + count
    assert flag(balancer.argv, "--port") == str(port)
    assert url == f"http://127.0.0.1:{port}/v1"
    assert balancer.ready_url == f"http://127.0.0.1:{port}{STATUS_PATH}"


def test_one_server_is_given_to_the_workers_directly() -> None:
    specs, url = local_llm_processes(iter([20100]), widest=1, env={"LOOM_LOCAL_N_BATCH": "512"})
    assert [s.name for s in specs] == ["llm-local"]
    assert specs[0].argv[1:3] == ("-m", "llama_cpp.server")
    assert url == "http://127.0.0.1:20100/v1"
