"""Backends: each yields OpenAI ``chat.completion.chunk`` dicts for a validated request."""

from __future__ import annotations

from hybrid.backends.base import Backend, BackendLoad, BackendState
from hybrid.config import BackendConfig


def create_backend(cfg: BackendConfig) -> Backend:
    """The backend for a config entry (imports are lazy: a CPU box never imports vLLM code)."""
    if cfg.kind == "llamacpp":
        from hybrid.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(cfg)
    if cfg.kind == "openai":
        from hybrid.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.kind == "vllm":
        from hybrid.backends.vllm import VllmBackend

        return VllmBackend(cfg)
    raise ValueError(f"unknown backend kind {cfg.kind!r}")


__all__ = ["Backend", "BackendLoad", "BackendState", "create_backend"]
