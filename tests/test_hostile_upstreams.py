"""Upstreams that misbehave on purpose (tests/fault_upstream.py's hostile modes) against a live router: each
attack ends in an OpenAI-shaped error, the router's memory stays bounded, and it keeps answering."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest

from tests.conftest import sdk
from tests.procs import ManagedProcess, start_router

MODES = ["auth401", "bigheaders", "endlessline", "gzipbomb", "bigerror", "endless", "badshape"]


def _backend(faults: ManagedProcess, mode: str, tier: str, name: str | None = None) -> str:
    return f"""
[[backends]]
name = "{name or mode}"
kind = "openai"
tier = "{tier}"
base_url = "{faults.url}/{mode}/v1"
models = ["m-{name or mode}"]
first_byte_timeout_s = 20.0
"""


@pytest.fixture(scope="module")
def hostile(faults: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    config = "[routing]\nfallbacks = []\n[cache]\nbackend = \"off\"\n"
    config += "".join(_backend(faults, mode, mode) for mode in MODES)
    # a tier whose first backend's key is refused and whose second works
    config += _backend(faults, "auth401", "cloud", name="refused") + _backend(faults, "ok", "cloud", name="good")
    proc = start_router(config, tmp_path_factory.mktemp("hostile"))
    yield proc
    proc.stop()


def _rss(proc: ManagedProcess) -> int:
    assert proc.proc is not None
    return int(psutil.Process(proc.proc.pid).memory_info().rss)


def _ask(router: ManagedProcess, tier: str, stream: bool = False) -> httpx.Response:
    body = {"model": tier, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return httpx.post(router.url + "/v1/chat/completions", json=body, timeout=120)


def _health_while(router: ManagedProcess, attack: threading.Thread) -> list[float]:
    """/health round trips, timed, for as long as the attack runs (at least one)."""
    times = []
    while True:
        t0 = time.monotonic()
        assert httpx.get(router.url + "/health", timeout=5).status_code == 200
        times.append(time.monotonic() - t0)
        if not attack.is_alive():
            return times
        time.sleep(0.05)


def test_an_upstream_401_is_not_the_clients_fault_and_falls_back(hostile: ManagedProcess) -> None:
    r = _ask(hostile, "auth401")
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "upstream_auth_failed" and "SECRETTAIL" not in r.text and "sk-live" not in r.text
    # a second backend of the tier answers, and the refused one counts as failing for the breaker
    r = _ask(hostile, "cloud")
    assert r.status_code == 200, r.text
    assert r.headers["x-hybrid-backend"] == "good" and "fallback" in r.headers["x-hybrid-route-reason"]
    assert hostile.get("/ready").json()["backends"]["refused"]["consecutive_failures"] >= 1
    assert "SECRETTAIL" not in hostile.output()


@pytest.mark.parametrize("mode", ["bigheaders", "gzipbomb", "bigerror"])
def test_oversized_answers_are_cut_with_bounded_memory(
    hostile: ManagedProcess, faults: ManagedProcess, mode: str
) -> None:
    before = _rss(hostile)
    r = _ask(hostile, mode)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "server_error"
    if mode == "bigerror":
        assert len(r.json()["error"]["message"]) < 1000
        # the router read the start of the message and hung up: the upstream could not push much more
        assert httpx.get(faults.url + "/stats").json()["bigerror-bytes"] < 64 << 20
    assert _rss(hostile) - before < 300 << 20  # a 1 GiB bomb, 64 MiB error body, 4 MiB of headers: none held
    assert httpx.get(hostile.url + "/health", timeout=5).status_code == 200


def test_an_event_line_without_end_neither_grows_nor_stalls_the_loop(hostile: ManagedProcess) -> None:
    result: list[httpx.Response] = []
    attack = threading.Thread(target=lambda: result.append(_ask(hostile, "endlessline", stream=True)))
    attack.start()
    times = _health_while(hostile, attack)
    attack.join()
    body = result[0].text
    assert result[0].status_code == 502 or '"error"' in body, body[:500]
    assert max(times) < 1.0, times  # the loop kept answering while the line grew


@pytest.mark.parametrize("stream", [False, True])
def test_a_chunk_of_the_wrong_shape_is_a_502_not_a_crash(hostile: ManagedProcess, stream: bool) -> None:
    r = _ask(hostile, "badshape", stream=stream)
    assert r.status_code == 502, r.text
    assert "'choices' is not an array" in r.json()["error"]["message"]


def test_endless_events_on_a_whole_answer_are_cut(hostile: ManagedProcess) -> None:
    before = _rss(hostile)
    r = _ask(hostile, "endless")
    assert r.status_code == 502, r.text[:500]
    assert "bounds" in r.json()["error"]["message"]
    assert _rss(hostile) - before < 1 << 30


def test_a_client_leaving_a_flooding_stream_stops_the_upstream_read(
    hostile: ManagedProcess, faults: ManagedProcess
) -> None:
    def running() -> int:
        return int(httpx.get(faults.url + "/stats").json().get("endless-running", 0))

    assert running() == 0
    body = {"model": "endless", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", hostile.url + "/v1/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        chunks = resp.iter_bytes()  # keep a reference: a collected iterator closes the stream (a disconnect)
        for i, _ in enumerate(chunks):
            if i > 20:
                break
        assert running() == 1
    deadline = time.monotonic() + 10
    while running():
        assert time.monotonic() < deadline, "the router kept reading the upstream after its client left"
        time.sleep(0.05)


def test_the_router_still_serves_after_every_attack(hostile: ManagedProcess) -> None:
    r = sdk(hostile.url).chat.completions.create(model="cloud", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    with pytest.raises(openai.APIStatusError):
        sdk(hostile.url).chat.completions.create(model="auth401", messages=[{"role": "user", "content": "hi"}])
