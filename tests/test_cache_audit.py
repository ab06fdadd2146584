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

from hybrid.cache.audit import MAX_IN_FLIGHT, Sample, SemanticAudit, agree
from tests.procs import ManagedProcess, RedisServer, cloud_backend, start_router, wait_semantic

# ------------------------------------------------------------------------------------------------ units


def _rec(audit: SemanticAudit, similarity: float, wrong: bool, key: str = "", partition: str = "p") -> float:
    """One verdict (each on its own entry unless ``key`` is given); the partition's threshold after it."""
    return audit.record(Sample(partition, key or f"e{similarity}-{wrong}-{random.random()}", similarity, wrong)).after


def test_a_wrong_hit_lifts_the_threshold_past_it() -> None:
    audit = SemanticAudit(0.01, 1.0, 0.80)
    assert _rec(audit, 0.95, False) == 0.80  # a right hit: nothing to tighten
    t = _rec(audit, 0.86, True)
    assert 0.86 < t < 0.8601  # just past the wrong hit
    assert audit.threshold("p") == t and audit.threshold("other") == 0.80  # per partition
    assert audit.observed() == (0, 1)  # what is still served: the 0.95 hit, right


def test_a_wrong_hit_closes_its_entry_for_good() -> None:
    audit = SemanticAudit(0.01, 1.0, 0.80)
    assert audit.entry_threshold("k") == 0.0
    verdict = audit.record(Sample("p", "k", 0.91, True))
    assert verdict.closed is not None and 0.91 < verdict.closed < 0.9101
    assert audit.entry_threshold("k") == verdict.closed
    assert audit.entry_threshold("other") == 0.0
    assert audit.record(Sample("p", "k", 0.95, False)).closed is None  # a right one above it: nothing reopens
    _rec(audit, 0.93, True, key="k")
    assert 0.93 < audit.entry_threshold("k") < 0.9301  # a wrong one higher up: closed further
    _rec(audit, 0.85, True, key="k")
    assert 0.93 < audit.entry_threshold("k") < 0.9301  # never lowered


def test_enough_right_hits_above_keep_the_rate_in_budget() -> None:
    audit = SemanticAudit(0.05, 1.0, 0.80)
    for i in range(39):
        _rec(audit, 0.90 + i * 0.001, False)
    assert _rec(audit, 0.88, True) == 0.80  # 1 wrong in 40 = 2.5% <= 5%: served on
    assert _rec(audit, 0.89, True) == 0.80  # 2 in 41 = 4.9%
    t = _rec(audit, 0.895, True)  # 3 in 42 = 7.1%: the lowest wrong hit is no longer served...
    assert 0.88 < t < 0.8801
    wrong, total = audit.observed()
    assert (wrong, total) == (2, 41) and wrong / total <= 0.05  # ...2 in 41 = 4.9% remain


def test_right_samples_bring_a_raised_threshold_back_down() -> None:
    """A threshold raised on thin evidence falls again as right samples (shadows from below it included) show the
    configured one serves within budget; the wrong sample still counts, so it takes a hundred of them at 1%."""
    audit = SemanticAudit(0.01, 1.0, 0.70)
    t = _rec(audit, 0.80, True, key="near-miss")
    assert 0.80 < t < 0.8001
    for i in range(98):
        assert _rec(audit, 0.75 + (i % 20) * 0.01, False) == t  # 1 wrong in 2..99: still above budget
    assert _rec(audit, 0.72, False) == 0.70  # 1 in 100 = 1%: the configured threshold serves within budget again
    assert audit.entry_threshold("near-miss") > 0.80  # the pairing that was wrong stays closed
    assert audit.observed() == (1, 100)


def test_thresholds_match_the_definition_on_random_samples() -> None:
    """After every verdict, the wrong share among samples at or above the threshold is within budget, and no lower
    threshold at or above the configured one would be."""
    rng = random.Random(3)
    for budget in (0.0001, 0.01, 0.1):
        audit = SemanticAudit(budget, 1.0, 0.7)
        for _ in range(300):
            s = round(rng.uniform(0.7, 1.0), 3)
            t = _rec(audit, s, rng.random() < (1.0 - s) * 1.5)
            samples = list(audit._partitions["p"].samples)
            served = [w for x, w in samples if x >= t]
            assert not served or sum(served) / len(served) <= budget + 1e-12
            for cut in [x for x, _ in samples if 0.7 <= x < t]:  # any lower cut would serve too many wrong hits
                kept = [w for x, w in samples if x >= cut]
                assert sum(kept) / len(kept) > budget


def test_a_batch_of_other_replicas_verdicts_lands_where_one_by_one_would() -> None:
    """Another replica's verdicts are taken a batch at a time (each partition settled once): the thresholds and the
    closed entries are those that recording them one by one gives, and the partitions that moved are reported."""
    rng = random.Random(5)
    samples = [Sample(f"p{rng.randrange(3)}", f"k{rng.randrange(40)}", round(rng.uniform(0.7, 1.0), 3),
                      rng.random() < 0.1) for _ in range(500)]
    one_by_one, batched = SemanticAudit(0.02, 1.0, 0.7), SemanticAudit(0.02, 1.0, 0.7)
    for sample in samples:
        one_by_one.record(sample)
    moved = batched.absorb(samples)
    for p in ("p0", "p1", "p2"):
        assert batched.threshold(p) == one_by_one.threshold(p)
        assert (p in moved) == (batched.threshold(p) != 0.7)
        if p in moved:
            assert moved[p] == (0.7, batched.threshold(p))
    assert all(batched.entry_threshold(f"k{i}") == one_by_one.entry_threshold(f"k{i}") for i in range(40))
    assert batched.figures()["shared"] == 500 and batched.figures()["audited"] == 0
    assert batched.observed() == one_by_one.observed()


def test_bounds_on_what_is_remembered(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hybrid.cache import audit as audit_module

    monkeypatch.setattr(audit_module, "MAX_CLOSED_ENTRIES", 3)
    monkeypatch.setattr(audit_module, "MAX_PARTITIONS", 2)
    audit = SemanticAudit(0.01, 1.0, 0.7)
    for i in range(5):
        audit.record(Sample(f"p{i}", f"k{i}", 0.9, True))
    assert [audit.entry_threshold(f"k{i}") > 0 for i in range(5)] == [False, False, True, True, True]
    assert audit.figures()["partitions"] == 2 and audit.figures()["closed_entries"] == 3
    assert audit.threshold("p0") == 0.7 and audit.threshold("p4") > 0.9


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
embedder_precision = "float32"  # the similarities quoted in these tests are float32's
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
    line = next((line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")), None)
    assert line is not None, [x for x in text.splitlines() if "audit" in x]
    return float(line.rsplit(" ", 1)[1])


def test_the_threshold_rises_until_wrong_hits_stop(audited: ManagedProcess) -> None:
    assert _ask(audited, "What time does the canteen open?") == ("miss", "11:30")
    # a near-miss (similarity ~0.71): served the canteen's answer, and the audit finds out
    assert _ask(audited, "What time does the gym open?") == ("hit-semantic", "11:30")
    fig = _budget(audited, 1)
    assert (fig["audited"], fig["wrong"]) == (1, 1)
    assert 0.70 < fig["threshold"]["max"] < 0.72  # type: ignore[index]
    # the audit's live answer was stored for the near-miss: from now on it has its own, right answer
    assert _ask(audited, "What time does the gym open?") == ("hit-exact", "6:00")
    assert fig["closed_entries"] == 1  # and the canteen's entry serves nothing that close again
    # a true paraphrase still hits, and its audit agrees
    assert _ask(audited, "How do I reset my password?")[0] == "miss"
    assert _ask(audited, "How can I reset my password?")[0] == "hit-semantic"
    fig = _budget(audited, 2)
    assert (fig["audited"], fig["wrong"]) == (2, 1)
    # a closer near-miss (~0.88) gets through the raised threshold once, and lifts it again
    assert _ask(audited, "How do I change my password?")[0] == "hit-semantic"
    fig = _budget(audited, 3)
    assert fig["wrong"] == 2 and 0.87 < fig["threshold"]["max"] < 0.89  # type: ignore[index,operator]
    assert _ask(audited, "How do I change my password?") == ("hit-exact", "Open Settings, then Security, then Change password.")
    assert _ask(audited, "How can I reset my password?")[0] == "hit-semantic"  # the paraphrase (0.99) is still served
    fig = _budget(audited, 4)
    assert fig["observed_wrong_rate"] == 0.0 and fig["observed_samples"] == 2  # within the 1% budget
    text = audited.get("/metrics").text
    assert _metric(text, "hybrid_cache_semantic_wrong_hit_rate") == 0.0
    assert _metric(text, "hybrid_cache_semantic_audit_samples") == 2
    assert _metric(text, "hybrid_cache_semantic_error_budget") == 0.01
    assert 0.87 < _metric(text, 'hybrid_cache_semantic_threshold{stat="max"}') < 0.89
    assert _metric(text, 'hybrid_cache_semantic_audits_total{outcome="wrong",source="audit"}') == 2
    assert _metric(text, 'hybrid_cache_semantic_audits_total{outcome="agree",source="audit"}') == 2


def test_shadow_samples_bring_a_raised_threshold_back_down(faults: ManagedProcess, tmp_path: Path) -> None:
    """A wrong hit raises the partition's threshold; misses below it that the configured threshold would have served
    are judged against the live answers the clients got (shadows), and once they show the configured threshold
    serves within budget, it serves again. The entry that was wrong stays closed, and the verdicts outlive a
    restart (they are kept in the cache's SQLite file)."""
    reset = "Use the reset link on the sign-in page."
    httpx.post(f"{faults.url}/control", json={"answers": {
        "How do I change my password?": "Open Settings, then Security, then Change password.",
        "How do I reset my password?": reset,
        "What's the procedure when a password is forgotten?": reset,  # cosine ~0.73 to the reset question
        "How do I restore my login?": reset,  # ~0.73
        "How do I recover access to my account?": reset,  # ~0.77 to the one before
        "Where can I renew my password?": reset,  # ~0.71
    }})
    config = f"""{_scripted(faults)}
[routing]
fallbacks = []

[cache]
path = "{tmp_path / 'cache.sqlite3'}"
semantic = true
similarity_threshold = 0.60
verifier = "off"
embedder_precision = "float32"
semantic_error_budget = 0.25   # one wrong in four samples is within it: a short test of a long-run rule
semantic_audit_rate = 1.0
"""
    router = start_router(config, tmp_path)
    try:
        wait_semantic(router)
        assert _ask(router, "How do I change my password?")[0] == "miss"
        assert _ask(router, "How do I reset my password?")[0] == "hit-semantic"  # ~0.88: wrong
        fig = _budget(router, 1)
        assert fig["wrong"] == 1 and 0.87 < fig["threshold"]["max"] < 0.89  # type: ignore[index,operator]
        assert _ask(router, "How do I reset my password?") == ("hit-exact", reset)
        for question in ("What's the procedure when a password is forgotten?", "How do I restore my login?",
                         "How do I recover access to my account?"):
            assert _ask(router, question) == ("miss", reset)  # below the raised threshold: a shadow sample each
        deadline = time.monotonic() + 60
        while (fig := router.get("/ready").json()["cache"]["error_budget"])["shadowed"] < 3:
            assert time.monotonic() < deadline, fig
            time.sleep(0.05)
        assert fig["audited"] == 1 and fig["wrong"] == 1 and fig["threshold"]["max"] == 0.60  # 1 wrong in 4: 25%
        assert _ask(router, "Where can I renew my password?") == ("hit-semantic", reset)  # ~0.71: served again
        assert _ask(router, "How do I change my password?")[0] == "hit-exact"
        text = router.get("/metrics").text
        assert _metric(text, 'hybrid_cache_semantic_audits_total{outcome="agree",source="shadow"}') == 3
        fig = _budget(router, 2)  # the audit of the last hit
        router.stop()
        router = start_router(config, tmp_path)
        wait_semantic(router)
        deadline = time.monotonic() + 30
        while (again := router.get("/ready").json()["cache"]["error_budget"])["shared"] < 5:
            assert time.monotonic() < deadline, again
            time.sleep(0.05)
        assert (again["audited"], again["shared"], again["closed_entries"]) == (0, 5, 1)
        assert again["threshold"] == fig["threshold"] and again["observed_samples"] == fig["observed_samples"]
    finally:
        router.stop()
        httpx.post(f"{faults.url}/control", json={"answers": {}})


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
    """Two routers share a Redis cache: a wrong hit audited on one reaches the other as a verdict, which lifts the
    partition's threshold and closes the entry there too, so the other stops serving it without finding out for
    itself; and the right answer the audit fetched is in the shared store for both."""
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
embedder_precision = "float32"
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
        while (fig := b.get("/ready").json()["cache"]["error_budget"])["threshold"]["max"] <= 0.6:  # within ~2 s
            assert time.monotonic() < deadline, "the verdict never reached the other replica"
            time.sleep(0.1)
        assert (fig["audited"], fig["shared"], fig["closed_entries"]) == (0, 1, 1)
        assert _ask(b, "What time does the gym open?") == ("hit-exact", "6:00")
        # a replica started later reads the verdicts still kept, and starts where the others are
        c = start_router(config.replace("semantic_audit_rate = 1.0", "semantic_audit_rate = 0.0"), tmp_path)
        try:
            wait_semantic(c)
            deadline = time.monotonic() + 30
            while (fig := c.get("/ready").json()["cache"]["error_budget"])["shared"] < 1:
                assert time.monotonic() < deadline, fig
                time.sleep(0.1)
            assert fig["threshold"]["max"] > 0.6 and fig["closed_entries"] == 1
        finally:
            c.stop()
    finally:
        a.stop()
        b.stop()
        httpx.post(f"{faults.url}/control", json={"answers": {}})


def test_the_shared_verdicts_are_read_in_order_bounded_and_checked(valkey: RedisServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hybrid.cache import redis_store

    monkeypatch.setattr(redis_store, "MAX_SHARED_SAMPLES", 10)
    monkeypatch.setattr(redis_store, "SAMPLES_PER_READ", 100)

    async def go() -> tuple[list[list[tuple[str, Sample]]], int, int]:
        store = redis_store.RedisCacheStore(valkey.url, prefix="shared-verdicts:")
        try:
            await store.r.delete(store.samples_key)
            await store.publish_sample("a", Sample("p1", "k1", 0.93, True), 60)
            await store.r.xadd(store.samples_key, {"o": "x", "p": "p1", "k": "k2", "s": "1.5", "w": "1"})  # out of range
            await store.r.xadd(store.samples_key, {"junk": "1"})  # not a verdict
            await store.publish_sample("b", Sample("p2", "k2", 0.81, False), 60)
            first, after = await store.read_samples("0")
            again, after = await store.read_samples(after)  # nothing new
            for i in range(600):
                await store.publish_sample("a", Sample("p3", f"k{i}", 0.9, False), 60)
            length, ttl = await store.r.xlen(store.samples_key), await store.r.ttl(store.samples_key)
            return [first, again], length, ttl
        finally:
            await store.close()

    (first, again), length, ttl = asyncio.run(go())
    assert first == [("a", Sample("p1", "k1", 0.93, True)), ("b", Sample("p2", "k2", 0.81, False))]
    assert again == []
    assert 10 <= length < 600  # trimmed near the bound (whole nodes at a time)
    assert 0 < ttl <= 60


def test_the_sqlite_store_keeps_verdicts_in_order_bounded_and_until_they_expire(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hybrid.cache import sqlite_store

    monkeypatch.setattr(sqlite_store, "MAX_SHARED_SAMPLES", 150)
    monkeypatch.setattr(sqlite_store, "SAMPLES_PER_READ", 100)

    async def read_all(store: sqlite_store.SqliteCacheStore) -> tuple[list[tuple[str, Sample]], int]:
        out: list[tuple[str, Sample]] = []
        after, reads = "0", 0
        while True:
            batch, after = await store.read_samples(after)
            if not batch:
                return out, reads
            out += batch
            reads += 1

    async def go() -> tuple[list[tuple[str, Sample]], list[tuple[str, Sample]], int, int]:
        store = sqlite_store.SqliteCacheStore(tmp_path / "c.sqlite3", semantic=False)
        await store.start()
        try:
            await store.publish_sample("a", Sample("p1", "k1", 0.93, True), 60)
            await store.publish_sample("b", Sample("p2", "k2", 0.81, False), -1)  # already expired: never read
            await store.publish_sample("a", Sample("p1", "k3", 0.75, False), 60)
            await store.close()  # (the writer thread drains its queue first)
            await store.start()  # as the next start reads them
            few, _ = await read_all(store)
            for i in range(400):
                await store.publish_sample("c", Sample("p3", f"k{i}", 0.9, False), 60)
            await store.close()
            await store.start()
            many, reads = await read_all(store)
            assert store._read is not None
            (rows,) = store._read.execute("SELECT COUNT(*) FROM verdicts").fetchone()
            return few, many, rows, reads
        finally:
            await store.close()

    few, many, rows, reads = asyncio.run(go())
    assert few == [("a", Sample("p1", "k1", 0.93, True)), ("a", Sample("p1", "k3", 0.75, False))]
    assert 150 <= rows <= 150 + 100  # trimmed to about the newest MAX_SHARED_SAMPLES (on every hundredth insert)
    assert len(many) == rows and reads == -(-rows // 100)  # read in pieces of SAMPLES_PER_READ
    assert many[-1] == ("c", Sample("p3", "k399", 0.9, False)) and few[0] not in many  # the oldest went first
