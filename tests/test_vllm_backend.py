"""The vllm backend kind: /metrics parsing, the `vllm serve` command line, and the managed-process code path,
exercised with a real OpenAI-compatible server process (llama-cpp-python's own) launched through it."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hybrid.backends.vllm import vllm_argv
from hybrid.backends.vllm_metrics import parse_vllm_metrics
from hybrid.config import BackendConfig
from tests.conftest import sdk
from tests.procs import ManagedProcess, start_router

DATA = Path(__file__).parent / "data" / "vllm"


def test_metrics_v0_names() -> None:
    m = parse_vllm_metrics((DATA / "v0.txt").read_text())
    assert (m.running, m.waiting, m.kv_cache_usage) == (7, 3, pytest.approx(0.8731))


def test_metrics_v1_names_summed_over_engines() -> None:
    m = parse_vllm_metrics((DATA / "v1.txt").read_text())
    assert (m.running, m.waiting, m.kv_cache_usage) == (21, 2, pytest.approx(0.78))


def test_metrics_without_vllm_series() -> None:
    m = parse_vllm_metrics("# nothing here\nprocess_open_fds 3\n")
    assert (m.running, m.waiting, m.kv_cache_usage) == (0, 0, 0.0)


def test_vllm_serve_argv_carries_the_plan() -> None:
    cfg = BackendConfig(name="gpu", kind="vllm", model="Qwen/Qwen2.5-7B-Instruct", context=32768, max_num_seqs=64,
                        tensor_parallel=2, quantization="fp8", kv_cache_dtype="fp8", gpu_memory_utilization=0.85)
    argv = vllm_argv(cfg, 8123)
    assert argv[1:3] == ["serve", "Qwen/Qwen2.5-7B-Instruct"]
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert pairs == {
        "--host": "127.0.0.1", "--port": "8123", "--served-model-name": "Qwen/Qwen2.5-7B-Instruct",
        "--gpu-memory-utilization": "0.85", "--tensor-parallel-size": "2", "--max-model-len": "32768",
        "--max-num-seqs": "64", "--quantization": "fp8", "--kv-cache-dtype": "fp8",
    }


def _config(model_path: str) -> str:
    launch = [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host", "127.0.0.1",
              "--port", "{port}", "--model_alias", "gemma-managed", "--chat_format", "gemma", "--n_ctx", "1024",
              "--n_threads", "1", "--interrupt_requests", "False"]
    return f"""
[[backends]]
name = "gpu"
kind = "vllm"
tier = "local"
model = "gemma-managed"
health_path = "/v1/models"
metrics_interval_s = 0.2
launch = {json.dumps(launch)}
"""


@pytest.fixture()
def managed(model_path: str, tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_router(_config(model_path), tmp_path)
    yield proc
    proc.stop()


def _gpu_state(router: ManagedProcess) -> dict[str, object]:
    return router.get("/ready").json()["backends"]["gpu"]


def _child_pid(router: ManagedProcess) -> int:
    detail = str(_gpu_state(router)["detail"])
    assert detail.startswith("pid ")
    return int(detail.split()[1])


def _wait(predicate, limit_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_managed_server_starts_serves_restarts_and_stops(managed: ManagedProcess) -> None:
    pid = _child_pid(managed)
    assert psutil.Process(pid).ppid() == managed.proc.pid  # type: ignore[union-attr]
    raw = sdk(managed.url).chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert raw.headers["x-hybrid-backend"] == "gpu" and raw.parse().model == "gemma-managed"

    os.kill(pid, signal.SIGKILL)  # the engine crashes
    _wait(lambda: _gone(pid), 10, "the killed server is still there")

    def restarted() -> bool:
        state = _gpu_state(managed)  # one snapshot: state and detail change together
        return state["state"] == "up" and state["detail"] != f"pid {pid}"

    _wait(restarted, 60, "no restart")
    new_pid = _child_pid(managed)
    r = sdk(managed.url).chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.usage is not None

    managed.stop()  # the router stops: so does its engine, cleanly
    _wait(lambda: _gone(new_pid), 30, "the managed server outlived the router")


def test_no_orphan_when_the_router_is_killed(managed: ManagedProcess) -> None:
    pid = _child_pid(managed)
    os.killpg(managed.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    managed.proc.wait()  # type: ignore[union-attr]
    _wait(lambda: _gone(pid), 30, "the managed server was orphaned")


def test_router_serves_other_tiers_while_the_engine_loads(model_path: str, tmp_path: Path) -> None:
    # an engine that never becomes healthy: the router is live, /ready says why, requests fall back
    config = _config(model_path).replace('health_path = "/v1/models"', 'health_path = "/never"') + """
[[backends]]
name = "cpu"
kind = "llamacpp"
tier = "cloud"
model = "gemma-3-270m"
context = 512
threads = 1
"""
    from tests.procs import ManagedProcess as MP
    from tests.procs import free_port

    port = free_port()
    cfg = tmp_path / "loading.toml"
    cfg.write_text(config)
    proc = MP([sys.executable, "-m", "hybrid", "serve", "--config", str(cfg), "--port", str(port)],
              f"http://127.0.0.1:{port}", "/health").start()
    try:
        ready = proc.get("/ready")
        assert ready.status_code == 503 and ready.json()["backends"]["gpu"]["state"] == "loading"
        r = sdk(proc.url).chat.completions.with_raw_response.create(
            model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.headers["x-hybrid-backend"] == "cpu" and "gpu(loading)" in r.headers["x-hybrid-route-reason"]
    finally:
        proc.stop()
