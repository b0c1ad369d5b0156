"""The embedded model server's command line: one pure builder for loom up, loom eval and the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.llm.llama_settings import (
    DEFAULT_BATCH,
    LlamaServerSettings,
    LlamaSettingsError,
    cores_from,
    default_servers,
    default_threads,
    llama_server_argv,
    server_count,
    settings_from_env,
    threads_per_server,
)

MODEL = Path("/models/m.gguf")


def flags(argv: tuple[str, ...]) -> dict[str, str]:
    """``--name value`` pairs of a command line (after ``python -m llama_cpp.server``)."""
    assert argv[1:3] == ("-m", "llama_cpp.server")
    rest = argv[3:]
    assert len(rest) % 2 == 0, rest
    return dict(zip(rest[::2], rest[1::2], strict=True))


def test_defaults_batch_threads_and_prompt_cache() -> None:
    settings = settings_from_env(MODEL, 8911, {}, cores=2, alias="smol")
    argv = llama_server_argv(settings, "/venv/bin/python")
    assert argv[0] == "/venv/bin/python"
    f = flags(argv)
    assert f["--model"] == str(MODEL)
    assert (f["--host"], f["--port"], f["--n_ctx"]) == ("127.0.0.1", "8911", "2048")
    assert f["--n_batch"] == f["--n_ubatch"] == str(DEFAULT_BATCH)
    assert f["--n_threads"] == f["--n_threads_batch"] == "2"
    assert f["--model_alias"] == "smol"
    assert (f["--cache"], f["--cache_type"]) == ("true", "ram")
    assert int(f["--cache_size"]) > 0
    assert not settings.batch_chosen


def test_environment_switches() -> None:
    env = {"LOOM_LOCAL_N_BATCH": "1", "LOOM_LOCAL_THREADS": "3", "LOOM_LOCAL_PROMPT_CACHE": "off"}
    settings = settings_from_env(MODEL, 1, env, cores=8)
    f = flags(llama_server_argv(settings, "python"))
    assert f["--n_batch"] == f["--n_ubatch"] == "1"
    assert f["--n_threads"] == f["--n_threads_batch"] == "3"
    assert "--cache" not in f and "--model_alias" not in f
    assert settings.batch_chosen


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOOM_LOCAL_N_BATCH": "0"}, "LOOM_LOCAL_N_BATCH='0' must be 1 or more"),
        ({"LOOM_LOCAL_N_BATCH": "big"}, "not a whole number"),
        ({"LOOM_LOCAL_THREADS": "-2"}, "must be 1 or more"),
        ({"LOOM_LOCAL_PROMPT_CACHE": "maybe"}, "not a switch"),
    ],
)
def test_bad_settings_say_which_and_why(env: dict[str, str], message: str) -> None:
    with pytest.raises(LlamaSettingsError, match=message):
        settings_from_env(MODEL, 1, env, cores=2)


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "cores"),
    [
        (8, None, 8),
        (8, "max 100000", 8),
        (8, "200000 100000", 2),
        (8, "150000 100000", 2),  # 1.5 CPUs of quota: two threads can each run part of the time
        (8, "50000 100000", 1),
        (2, "400000 100000", 2),  # affinity is the tighter limit
        (0, None, 1),
        (4, "garbage", 4),
    ],
)
def test_cores_from_affinity_and_cgroup_quota(affinity: int, cpu_max: str | None, cores: int) -> None:
    assert cores_from(affinity, cpu_max) == cores


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 2), (3, 3), (4, 3), (16, 15)])
def test_threads_leave_a_core_to_the_rest_from_four_up(cores: int, threads: int) -> None:
    assert default_threads(cores) == threads


def test_with_batch_keeps_everything_else() -> None:
    settings = LlamaServerSettings(model=MODEL, port=5, n_threads=3, alias="a")
    one = settings.with_batch(1)
    assert one.n_batch == 1
    assert (one.model, one.port, one.n_threads, one.alias, one.prompt_cache) == (MODEL, 5, 3, "a", True)


@pytest.mark.parametrize(
    ("cores", "widest", "servers"),
    [
        (2, 2, 2),  # the sample pipeline: two parallel stages on two cores
        (2, 3, 2),  # never more servers than cores
        (8, 2, 2),  # never more than the pipelines run at once
        (16, 9, 4),  # and at most four
        (8, 1, 1),  # nothing runs in parallel: one server with every thread
        (1, 4, 1),
    ],
)
def test_servers_from_cores_and_the_widest_parallel_level(cores: int, widest: int, servers: int) -> None:
    assert default_servers(cores, widest) == servers
    assert server_count({}, cores, widest) == servers


def test_servers_chosen_in_the_environment_win() -> None:
    assert server_count({"LOOM_LOCAL_SERVERS": "3"}, cores=2, widest=1) == 3
    with pytest.raises(LlamaSettingsError, match="LOOM_LOCAL_SERVERS='0' must be 1 or more"):
        server_count({"LOOM_LOCAL_SERVERS": "0"}, cores=2, widest=2)


@pytest.mark.parametrize(
    ("cores", "servers", "threads"),
    [(2, 1, 2), (2, 2, 1), (4, 2, 2), (8, 2, 4), (8, 4, 2), (16, 4, 4), (2, 4, 1)],
)
def test_each_server_gets_its_share_of_the_threads(cores: int, servers: int, threads: int) -> None:
    assert threads_per_server(cores, servers) == threads
    settings = settings_from_env(MODEL, 1, {}, cores=cores, servers=servers)
    assert flags(llama_server_argv(settings, "python"))["--n_threads"] == str(threads)
    chosen = settings_from_env(MODEL, 1, {"LOOM_LOCAL_THREADS": "5"}, cores=cores, servers=servers)
    assert chosen.n_threads == 5  # LOOM_LOCAL_THREADS is per server
