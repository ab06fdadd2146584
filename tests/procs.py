"""Real processes for tests: the router itself and llama-cpp-python's own OpenAI server, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """A child process that serves HTTP; started, waited for, and always reaped."""

    def __init__(self, args: list[str], url: str, ready_path: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.url = url
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="proc-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> "ManagedProcess":
        self.proc = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args} not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_router(config_toml: str, tmp_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    port = free_port()
    cfg = tmp_path / f"hybrid-{port}.toml"
    cfg.write_text(config_toml)
    args = [sys.executable, "-m", "hybrid", "serve", "--config", str(cfg), "--port", str(port), "--log-level", "warning"]
    return ManagedProcess(args, f"http://127.0.0.1:{port}", "/ready", env).start()


def start_llama_server(model_path: str, extra: list[str] | None = None) -> ManagedProcess:
    """llama-cpp-python's own OpenAI-compatible server: the stand-in cloud."""
    port = free_port()
    args = [
        sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host", "127.0.0.1", "--port", str(port),
        "--chat_format", "gemma", "--n_ctx", "4096", "--n_threads", "1", "--interrupt_requests", "False",
        "--model_alias", "gemma-cloud", *(extra or []),
    ]
    return ManagedProcess(args, f"http://127.0.0.1:{port}", "/v1/models").start()


def start_fault_upstream() -> ManagedProcess:
    port = free_port()
    args = [sys.executable, "-m", "tests.fault_upstream", "--port", str(port)]
    return ManagedProcess(args, f"http://127.0.0.1:{port}", "/health").start()
