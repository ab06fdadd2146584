"""Bearer-token auth with keys from the config and the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import sdk
from tests.procs import ManagedProcess, start_router

CONFIG = """
[server]
api_keys = ["literal-key-1", "env:HYBRID_TEST_KEY"]

[[backends]]
name = "cpu"
kind = "llamacpp"
model = "gemma-3-270m"
context = 512
threads = 1
"""


@pytest.fixture(scope="module")
def secured(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_router(CONFIG, tmp_path_factory.mktemp("auth"), env={"HYBRID_TEST_KEY": "from-env-key"},
                        key="literal-key-1")
    yield proc
    proc.stop()


@pytest.mark.parametrize("key", ["literal-key-1", "from-env-key"])
def test_valid_keys_are_accepted(secured: ManagedProcess, key: str) -> None:
    r = sdk(secured.url, api_key=key).chat.completions.create(
        model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert r.usage is not None


@pytest.mark.parametrize("key", ["wrong", "literal-key-", "literal-key-1x", "env:HYBRID_TEST_KEY"])
def test_wrong_key_is_401(secured: ManagedProcess, key: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(secured.url, api_key=key).models.list()
    assert info.value.code == "invalid_api_key"


def test_missing_key_is_401_and_only_liveness_stays_open(secured: ManagedProcess) -> None:
    resp = httpx.get(secured.url + "/v1/models")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert resp.headers["x-request-id"]
    assert httpx.get(secured.url + "/health").status_code == 200
    # readiness and metrics tell backends, models and traffic: keyed by default (server.status_access)
    for path in ("/ready", "/metrics"):
        assert httpx.get(secured.url + path).status_code == 401
        assert secured.get(path).status_code == 200


def test_keys_never_reach_the_log(secured: ManagedProcess) -> None:
    httpx.get(secured.url + "/v1/models", headers={"authorization": "Bearer wrong-secret-xyz"})
    out = secured.output()
    for secret in ("literal-key-1", "from-env-key", "wrong-secret-xyz"):
        assert secret not in out


def test_unset_env_key_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="HYBRID_TEST_KEY is not set"):
        start_router(CONFIG, tmp_path, env={"HYBRID_TEST_KEY": ""})
