"""The vLLM GPU tier: attach to a running ``vllm serve`` by URL, or launch it as a managed child process.

Requests go through the OpenAI-compatible HTTP path (:class:`OpenAIBackend`). A supervisor task waits for
``/health``, reads ``max_model_len`` from ``/v1/models``, scrapes ``/metrics`` for overflow routing, and
restarts a managed server that dies (with backoff). vLLM itself is an optional extra (``pip install '.[gpu]'``):
nothing here imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time

import orjson

from hybrid import http1
from hybrid.backends.base import BackendLoad, BackendState
from hybrid.backends.openai import OpenAIBackend
from hybrid.backends.process import ManagedServer
from hybrid.backends.vllm_metrics import VllmMetrics, parse_vllm_metrics
from hybrid.config import BackendConfig
from hybrid.upstream import upstream_pool

log = logging.getLogger("hybrid.vllm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_argv(cfg: BackendConfig, port: int) -> list[str]:
    """The ``vllm serve`` command line for a planned backend (or the configured ``launch`` override)."""
    served = cfg.served_model_name or cfg.model
    if cfg.launch:
        return [a.replace("{port}", str(port)).replace("{model}", cfg.model) for a in cfg.launch]
    exe = shutil.which("vllm") or "vllm"
    argv = [exe, "serve", cfg.model, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", served,
            "--gpu-memory-utilization", f"{cfg.gpu_memory_utilization:g}",
            "--tensor-parallel-size", str(cfg.tensor_parallel)]
    if cfg.context:
        argv += ["--max-model-len", str(cfg.context)]
    if cfg.max_num_seqs:
        argv += ["--max-num-seqs", str(cfg.max_num_seqs)]
    if cfg.quantization:
        argv += ["--quantization", cfg.quantization]
    if cfg.kv_cache_dtype:
        argv += ["--kv-cache-dtype", cfg.kv_cache_dtype]
    return argv


class VllmBackend(OpenAIBackend):
    hard_concurrency_limit = False  # vLLM queues requests itself; overflow reads its queue from /metrics

    def __init__(self, cfg: BackendConfig) -> None:
        super().__init__(cfg)
        self.managed = not cfg.base_url
        self.server: ManagedServer | None = None
        self.metrics: VllmMetrics | None = None
        self._served = [cfg.served_model_name or cfg.model]
        self._max_model_len = cfg.context
        self._supervisor: asyncio.Task[None] | None = None
        self._port = 0
        self._running = True
        self._control: http1.Pool | None = None  # health and metrics, on connections of their own

    @property
    def models(self) -> list[str]:
        return self._served

    @property
    def context(self) -> int:
        return self._max_model_len

    async def start(self) -> None:
        if self.managed:
            self._port = _free_port()
            self.base_url = f"http://127.0.0.1:{self._port}/v1"
        await super().start()  # the connection pool for requests
        self._control = upstream_pool(self.cfg, self.root, f"{self.name}:control")
        self.state = BackendState.LOADING
        if self.managed:
            log_dir = os.environ.get("HYBRID_LOG_DIR")
            self.server = ManagedServer(
                f"vllm:{self.name}", vllm_argv(self.cfg, self._port),
                os.path.join(log_dir, f"vllm-{self.name}.log") if log_dir else None,
            )
            self.server.start()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"vllm-supervisor-{self.name}")

    async def stop(self) -> None:
        self._running = False
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self.server is not None:
            await self.server.stop()
        if self._control is not None:
            await self._control.close()
        await super().stop()

    def load(self) -> BackendLoad:
        m = self.metrics
        if m is None:
            return super().load()
        # vLLM batches what fits and queues the rest: waiting requests are the queue overflow reads
        return BackendLoad(in_flight=m.running, waiting=m.waiting, capacity=max(1, m.running + (0 if m.waiting else 1)),
                           service_time_s=self._service_s)

    @property
    def root(self) -> str:
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    async def _supervise(self) -> None:
        backoff = 1.0
        while self._running:
            try:
                await self._wait_healthy()
                await self._read_models()
                self.state = BackendState.UP
                self.state_detail = f"pid {self.server.pid}" if self.server else f"attached to {self.root}"
                log.info("backend %s: up (%s, max_model_len %s)", self.name, self.state_detail, self._max_model_len)
                backoff = 1.0
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("backend %s: %s", self.name, exc)
                self.state, self.state_detail = BackendState.DOWN, str(exc)
            if self.server is None:  # attached: keep trying the URL
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            await self.server.stop(grace_s=5)
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)
            self.server.restarts += 1
            log.warning("backend %s: restarting the server (restart %d)", self.name, self.server.restarts)
            self.state, self.state_detail = BackendState.LOADING, f"restart {self.server.restarts}"
            self.server.start()

    async def _get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        assert self._control is not None
        return await self._control.get(path, timeout_s=timeout)

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while True:
            if self.server is not None and not self.server.alive():
                raise RuntimeError(f"server exited with code {self.server.exit_code()} before it was healthy")
            try:
                status, _ = await self._get(self.cfg.health_path, timeout=2.0)
                if status == 200:
                    return
            except (http1.HTTPClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {self.cfg.startup_timeout_s:g}s")
            await asyncio.sleep(0.2)

    async def _read_models(self) -> None:
        status, body = await self._get("/v1/models")
        if status != 200:
            return
        data = orjson.loads(body).get("data") or []
        ids = [m["id"] for m in data if isinstance(m, dict) and m.get("id")]
        if ids and ids != self._served:
            self._served = ids
            if self.on_models_changed is not None:
                self.on_models_changed()
        lens: list[int] = [
            m["max_model_len"] for m in data if isinstance(m, dict) and isinstance(m.get("max_model_len"), int)
        ]
        if lens:
            self._max_model_len = max(lens)

    async def _watch(self) -> None:
        """While up: scrape /metrics; return when the server dies or stops answering."""
        misses = 0
        while True:
            if self.server is not None and not self.server.alive():
                raise RuntimeError(f"server exited with code {self.server.exit_code()}")
            try:
                status, body = await self._get("/metrics", timeout=2.0)
                self.metrics = parse_vllm_metrics(body.decode("utf-8", "replace")) if status == 200 else None
                status, _ = await self._get(self.cfg.health_path, timeout=2.0) if self.metrics is None else (200, b"")
                misses = 0 if status == 200 else misses + 1
            except (http1.HTTPClientError, TimeoutError):
                misses += 1
            if misses >= 3:
                raise RuntimeError("stopped answering health checks")
            await asyncio.sleep(self.cfg.metrics_interval_s)


