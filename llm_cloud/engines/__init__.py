"""Candidate engines behind one interface: in-process transformers, or a client of a vLLM server."""

from __future__ import annotations

from pathlib import Path

from llm_cloud.engines.base import CandidateEngine, Candidates, EngineError
from lsc4rec.errors import ConfigError

ENGINES = ("transformers", "vllm")


def make_engine(kind: str, checkpoint: str | Path, vllm_url: str | None = None) -> CandidateEngine:
    """The ``kind`` engine for ``checkpoint``; ``vllm`` needs the URL of a server that serves that checkpoint."""
    if kind == "transformers":
        from llm_cloud.engines.transformers_engine import TransformersEngine

        return TransformersEngine(checkpoint)
    if kind == "vllm":
        if not vllm_url:
            raise ConfigError(
                "--vllm-url",
                "must be set for --engine vllm, got nothing. Start one with "
                "`lsc4rec llm vllm-serve` and pass its URL.",
            )
        from llm_cloud.engines.vllm_engine import VLLMEngine

        return VLLMEngine(checkpoint, vllm_url)
    raise ConfigError("--engine", f"must be one of {'|'.join(ENGINES)}, got {kind!r}.")


__all__ = ["ENGINES", "CandidateEngine", "Candidates", "EngineError", "make_engine"]
