"""The semantic cache's error budget: audited hits, thresholds that rise per partition until the wrong share of
what is still served is within budget; end to end against a scripted upstream (which answers near-miss pairs
differently and paraphrases alike) and the loopback cloud stand-in, with the figures in /metrics and /ready."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from hybrid.cache.audit import MAX_IN_FLIGHT, SemanticAudit, agree
from tests.procs import ManagedProcess, RedisServer, cloud_backend, start_router, wait_semantic

# ------------------------------------------------------------------------------------------------ units


def test_a_wrong_hit_lifts_the_threshold_past_it() -> None:
    audit = SemanticAudit(0.01, 1.0, 0.80)
    assert audit.record("p", 0.95, False) == 0.80  # a right hit: nothing to tighten
    t = audit.record("p", 0.86, True)
    assert 0.86 < t < 0.8601  # just past the wrong hit
    assert audit.threshold("p") == t and audit.threshold("other") == 0.80  # per partition
    assert audit.observed() == (0, 1)  # what is still served: the 0.95 hit, right


def test_enough_right_hits_above_keep_the_rate_in_budget() -> None:
    audit = SemanticAudit(0.05, 1.0, 0.80)
    for i in range(39):
        audit.record("p", 0.90 + i * 0.001, False)
    assert audit.record("p", 0.88, True) == 0.80  # 1 wrong in 40 = 2.5% <= 5%: served on
    assert audit.record("p", 0.89, True) == 0.80  # 2 in 41 = 4.9%
    t = audit.record("p", 0.895, True)  # 3 in 42 = 7.1%: the lowest wrong hit is no longer served...
    assert 0.88 < t < 0.8801
    wrong, total = audit.observed()
    assert (wrong, total) == (2, 41) and wrong / total <= 0.05  # ...2 in 41 = 4.9% remain


def test_thresholds_match_the_definition_on_random_audits() -> None:
    """After every audit, the wrong share among served samples is within budget, and no lower threshold at or
    above the previous one would have been."""
    rng = random.Random(3)
    for budget in (0.0001, 0.01, 0.1):
        audit = SemanticAudit(budget, 1.0, 0.7)
        previous = 0.7
        for _ in range(300):
            s = round(rng.uniform(0.7, 1.0), 3)
            t = audit.record("p", s, rng.random() < (1.0 - s) * 1.5)
            samples = list(audit._partitions["p"].samples)
            served = [w for x, w in samples if x >= t]
            assert not served or sum(served) / len(served) <= budget + 1e-12
            assert t >= previous
            lower = [x for x, _ in samples if previous <= x < t]
            for cut in lower:  # any lower cut would serve too many wrong hits
                kept = [w for x, w in samples if x >= cut]
                assert sum(kept) / len(kept) > budget
            previous = t


def test_sampling_and_the_in_flight_bound() -> None:
    audit = SemanticAudit(0.01, 0.25, 0.9, rng=random.Random(1))
    picks = [audit.should_audit() for _ in range(3)]
    for _ in picks:
        if _:
            audit.done()
    assert SemanticAudit(0.0, 1.0, 0.9).should_audit() is False  # no budget: no audits
    full = SemanticAudit(0.01, 1.0, 0.9)
    assert all(full.should_audit() for _ in range(MAX_IN_FLIGHT))
    assert not full.should_audit() and full.skipped == 1
    full.done()
    assert full.should_audit()
    sampled = sum(SemanticAudit(0.01, 0.25, 0.9, rng=random.Random(seed)).should_audit() for seed in range(400))
    assert 60 < sampled < 140  # about a quarter


def test_answers_agree_exactly_when_short_and_by_embedding_when_long() -> None:
    async def embed(texts: list[str]) -> np.ndarray:
        return np.array([[1.0, 0.0], [0.96, 0.28]]) if "alike" in texts[1] else np.array([[1.0, 0.0], [0.0, 1.0]])

    assert asyncio.run(agree("Paris.", " paris ")) is True
    assert asyncio.run(agree("11:30", "6:00", embed)) is False  # short: exact only, never embeddings
    long_a = "The canteen opens at half past eleven and closes at half past two, card payments only. " * 2
    assert asyncio.run(agree(long_a, long_a + " alike", embed)) is True
    assert asyncio.run(agree(long_a, long_a + " other", embed)) is False
    assert asyncio.run(agree(long_a, long_a + " other")) is False  # no embedder: exact only


# ------------------------------------------------------------------------------------------------ end to end


def _scripted(faults: ManagedProcess) -> str:
    """A backend whose answers are set per question (POST /control {"answers": ...}): near-misses differ."""
    return f"""
[[backends]]
name = "scripted"
kind = "openai"
tier = "scripted"
base_url = "{faults.url}/scripted/v1"
models = ["scripted-model"]
"""


@pytest.fixture(scope="module")
def audited(faults: ManagedProcess, cloud: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    config = f"""{_scripted(faults)}{cloud_backend(cloud)}
[routing]
fallbacks = []

[cache]
semantic = true
similarity_threshold = 0.60   # low on purpose: near-misses get through, and the budget has to catch them
verifier = "off"              # the budget is the backstop for whatever gets through: tested on its own
semantic_error_budget = 0.01
semantic_audit_rate = 1.0
"""
    httpx.post(f"{faults.url}/control", json={"answers": {
        "What time does the canteen open?": "11:30",
        "What time does the gym open?": "6:00",
        "How do I reset my password?": "Use the reset link on the sign-in page.",
        "How can I reset my password?": "Use the reset link on the sign-in page.",
        "How do I change my password?": "Open Settings, then Security, then Change password.",
    }})
    proc = start_router(config, tmp_path_factory.mktemp("audit"))
    wait_semantic(proc)
    yield proc
    proc.stop()
    httpx.post(f"{faults.url}/control", json={"answers": {}})


def _ask(router: ManagedProcess, question: str, model: str = "scripted") -> tuple[str, str]:
    r = httpx.post(router.url + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.headers["x-hybrid-cache"], r.json()["choices"][0]["message"]["content"]


def _budget(router: ManagedProcess, audited: int) -> dict[str, object]:
    """The error budget's figures once ``audited`` audits have finished (they run off the client's path)."""
    deadline = time.monotonic() + 60
    while True:
        fig = router.get("/ready").json()["cache"]["error_budget"]
        if fig["audited"] + fig["failed"] >= audited:
            return fig  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, fig
        time.sleep(0.05)


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def test_the_threshold_rises_until_wrong_hits_stop(audited: ManagedProcess) -> None:
    assert _ask(audited, "What time does the canteen open?") == ("miss", "11:30")
    # a near-miss (similarity ~0.71): served the canteen's answer, and the audit finds out
    assert _ask(audited, "What time does the gym open?") == ("hit-semantic", "11:30")
    fig = _budget(audited, 1)
    assert (fig["audited"], fig["wrong"]) == (1, 1)
    assert 0.70 < fig["threshold"]["max"] < 0.72  # type: ignore[index]
    # the same near-miss is now a miss, answered live and right
    assert _ask(audited, "What time does the gym open?") == ("miss", "6:00")
    # a true paraphrase still hits, and its audit agrees
    assert _ask(audited, "How do I reset my password?")[0] == "miss"
    assert _ask(audited, "How can I reset my password?")[0] == "hit-semantic"
    fig = _budget(audited, 2)
    assert (fig["audited"], fig["wrong"]) == (2, 1)
    # a closer near-miss (~0.88) gets through the raised threshold once, and lifts it again
    assert _ask(audited, "How do I change my password?")[0] == "hit-semantic"
    fig = _budget(audited, 3)
    assert fig["wrong"] == 2 and 0.87 < fig["threshold"]["max"] < 0.89  # type: ignore[index,operator]
    assert _ask(audited, "How do I change my password?") == ("miss", "Open Settings, then Security, then Change password.")
    assert _ask(audited, "How can I reset my password?")[0] == "hit-semantic"  # the paraphrase (0.99) is still served
    fig = _budget(audited, 4)
    assert fig["observed_wrong_rate"] == 0.0 and fig["observed_samples"] == 2  # within the 1% budget
    text = audited.get("/metrics").text
    assert _metric(text, "hybrid_cache_semantic_wrong_hit_rate") == 0.0
    assert _metric(text, "hybrid_cache_semantic_audit_samples") == 2
    assert _metric(text, "hybrid_cache_semantic_error_budget") == 0.01
    assert 0.87 < _metric(text, 'hybrid_cache_semantic_threshold{stat="max"}') < 0.89
    assert _metric(text, 'hybrid_cache_semantic_audits_total{outcome="wrong"}') == 2
    assert _metric(text, 'hybrid_cache_semantic_audits_total{outcome="agree"}') == 2


def test_audits_run_against_the_cloud_stand_in_too(audited: ManagedProcess) -> None:
    before = _budget(audited, 0)
    done = int(before["audited"]) + int(before["failed"])  # type: ignore[call-overload]
    assert _ask(audited, "Where is the printer on the second floor?", "cloud")[0] == "miss"
    assert _ask(audited, "Where is the printer located on the second floor?", "cloud")[0] == "hit-semantic"
    fig = _budget(audited, done + 1)
    assert fig["audited"] == int(before["audited"]) + 1  # type: ignore[call-overload]  # a verdict, either way
    assert fig["partitions"] == 2  # another model: another partition, with its own threshold


def test_a_threshold_raised_on_one_replica_reaches_the_other(faults: ManagedProcess, valkey: RedisServer,
                                                              tmp_path: Path) -> None:
    """Two routers share a Redis cache: a wrong hit audited on one lifts the partition's threshold on both, so the
    other stops serving it without finding out for itself."""
    httpx.post(f"{faults.url}/control", json={"answers": {"What time does the canteen open?": "11:30",
                                                          "What time does the gym open?": "6:00"}})
    config = f"""{_scripted(faults)}
[routing]
fallbacks = []

[cache]
backend = "redis"
redis_url = "{valkey.url}"
semantic = true
similarity_threshold = 0.60
verifier = "off"
semantic_audit_rate = 1.0
"""
    a = start_router(config, tmp_path)
    b = start_router(config.replace("semantic_audit_rate = 1.0", "semantic_audit_rate = 0.0"), tmp_path)
    try:
        for router in (a, b):
            wait_semantic(router)
        assert _ask(a, "What time does the canteen open?")[0] == "miss"
        deadline = time.monotonic() + 30
        while _ask(b, "What time does the canteen open?")[0] != "hit-exact":  # stored in Redis, off the path
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _ask(b, "What time does the gym open?") == ("hit-semantic", "11:30")  # b audits nothing itself
        assert _ask(a, "What time does the gym open?") == ("hit-semantic", "11:30")  # a audits, finds it wrong
        assert _budget(a, 1)["wrong"] == 1
        deadline = time.monotonic() + 30
        while b.get("/ready").json()["cache"]["error_budget"]["threshold"]["max"] <= 0.6:  # b follows within ~2 s
            assert time.monotonic() < deadline, "the raised threshold never reached the other replica"
            time.sleep(0.1)
        assert _ask(b, "What time does the gym open?") == ("miss", "6:00")
        assert b.get("/ready").json()["cache"]["error_budget"]["audited"] == 0
    finally:
        a.stop()
        b.stop()
        httpx.post(f"{faults.url}/control", json={"answers": {}})


def test_the_shared_thresholds_keep_the_highest_and_stay_bounded(valkey: RedisServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hybrid.cache import redis_store

    monkeypatch.setattr(redis_store, "MAX_SHARED_THRESHOLDS", 2)

    async def go() -> dict[str, float]:
        store = redis_store.RedisCacheStore(valkey.url, prefix="bound:")
        try:
            await store.raise_threshold("p1", 0.93, 60)
            await store.raise_threshold("p1", 0.91, 60)  # lower: ignored
            await store.raise_threshold("p2", 0.95, 60)
            await store.raise_threshold("p3", 0.99, 60)  # a third partition: over the bound, not added
            await store.raise_threshold("p2", 0.97, 60)  # a known one still rises
            return await store.thresholds()
        finally:
            await store.close()

    assert asyncio.run(go()) == {"p1": 0.93, "p2": 0.97}
