"""The semantic-hit verifier (hybrid/cache/verifier.py). Its figures on pairs it never saw come from
scripts/bench_cache.py on the sealed set; these tests use the tuning pairs only (tests/data/cache_pairs.txt)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.cache.verifier import WEIGHTS, WEIGHTS_BY_MODEL, PairVerifier, as_cached, load_pairs
from hybrid.cache.verifier_training import restyled_examples
from hybrid.config import VERIFIER_THRESHOLDS

pytest.importorskip("torch")

TUNING = Path(__file__).parent / "data" / "cache_pairs.txt"


@pytest.fixture(scope="module", params=[("minilm", False), ("minilm", True), ("mpnet", True)],
                ids=["minilm-float32", "minilm-int8", "mpnet-int8"])
def verifier(request: pytest.FixtureRequest) -> tuple[PairVerifier, float]:
    """Each bundled pair model as a lookup runs it, with its default bar for close candidates (the tuning pairs are
    alike enough to meet that one; the surer bar is for candidates further apart)."""
    model, int8 = request.param
    v = PairVerifier(WEIGHTS_BY_MODEL[model], threads=2, int8=int8)
    v.load()
    return v, VERIFIER_THRESHOLDS[(model, "float32")][3]


def test_the_shipped_verifier_separates_the_tuning_pairs(verifier: tuple[PairVerifier, float]) -> None:
    """The weights in the package, read by this code, still do what training made them do on its own pairs (a
    mismatch between the file and the model code, a wrong pair order or a lost update shows here: those scatter the
    verdicts far below the floor). At its bar of 0.95, the mpnet pair model confirms 98.7% of the tuning set's
    paraphrases in int8 (at 0.99, 85.3%; the model of 79d08d7 at 0.98: 89.1%)."""
    v, confirm = verifier
    pairs = load_pairs(TUNING)
    p = np.array([v.score_sync([(as_cached(a), as_cached(b))])[0] for _, a, b in pairs])  # as lookups do
    para = np.array([k == "paraphrase" for k, _, _ in pairs])
    assert (p[para] >= confirm).mean() >= 0.85
    assert (p[~para] >= confirm).mean() <= 0.03


def test_the_order_of_the_two_questions_hardly_matters(verifier: tuple[PairVerifier, float]) -> None:
    """Which question is the cached one changes the verdict for few pairs. The share grows with the bar, as more
    scores sit near it: for the mpnet pair model in int8, at its bar of 0.95, 99.4% of the tuning pairs agree (at
    0.99, 96.9%; at 0.50, all; the model of 79d08d7 at 0.98, 98.4%; the one that had learnt the sorted order of
    training's sibling pairs: 94.7% at 0.98)."""
    v, confirm = verifier
    pairs = load_pairs(TUNING)
    ab = v.score_sync([(as_cached(a), as_cached(b)) for _, a, b in pairs])
    ba = v.score_sync([(as_cached(b), as_cached(a)) for _, a, b in pairs])
    assert ((ab >= confirm) == (ba >= confirm)).mean() >= 0.95


def test_each_verifier_is_named_after_its_base_model(verifier: tuple[PairVerifier, float]) -> None:
    """/ready shows the loaded pair model: which base, and whether quantized."""
    v, _ = verifier
    base = "all-mpnet-base-v2" if v.weights == WEIGHTS_BY_MODEL["mpnet"] else "all-minilm-l6-v2"
    assert v.name == f"{base}-cross-encoder" + ("-int8" if v.int8 else "")


def test_a_long_conversation_is_cut_to_the_bound_keeping_its_last_turn(verifier: tuple[PairVerifier, float]) -> None:
    """Both texts together are cut to MAX_TOKENS, from the left: the question at the end still decides."""
    v, _ = verifier
    history = "user: tell me about the office\nassistant: " + "It is a nice office with many desks. " * 200
    same = v.score_sync([(history + "\nuser: How do I reset my password?",
                                 history + "\nuser: How can I reset my password?")])[0]
    other = v.score_sync([(history + "\nuser: How do I enable two-factor login?",
                                  history + "\nuser: How do I disable two-factor login?")])[0]
    assert same > other


def _some_update(torch: Any, encoder: Any, base: Any, seed: int) -> tuple[dict[str, Any], Any, Any]:
    """A rank-4 update (scale 2.0) beside each layer of ``encoder`` and a head, as a training might leave them: B
    drawn at random (a new update's B is zero, a no-op), A and B already at the float16 the file keeps."""
    from hybrid.cache.verifier_training import attach

    gen = torch.Generator().manual_seed(seed)
    low = attach(torch, encoder, 4, 2.0, gen, base)
    for lr in low.values():
        with torch.no_grad():
            lr.B.normal_(0, 0.02, generator=gen)
            lr.A.copy_(lr.A.half().float())  # the file keeps float16: compare like with like
            lr.B.copy_(lr.B.half().float())
    return low, torch.randn(encoder.config.hidden_size, generator=gen), torch.tensor(0.3)


@pytest.mark.parametrize("base_name", ["all-MiniLM-L6-v2", "all-mpnet-base-v2"])
def test_merged_weights_compute_what_training_computed(tmp_path: Path, base_name: str) -> None:
    """Training adds B(Ax) beside each frozen layer; loading merges B A into the weights. Both give one answer, on
    each base model (their layers have other names, and MPNet takes no token types)."""
    import torch

    from hybrid.cache.base_models import BASES
    from hybrid.cache.verifier import encode_pairs, load_base, pooled_logit
    from hybrid.cache.verifier_training import pack, save

    base = BASES[base_name]
    tokenizer, encoder = load_base(2, base)
    low, head_w, head_b = _some_update(torch, encoder, base, seed=1)
    pairs = [("user: How do I reset my password?", "user: How can I reset my password?")]
    with torch.inference_mode():
        trained = torch.sigmoid(pooled_logit(encoder.eval(), head_w, head_b, encode_pairs(tokenizer, pairs)))
    save(pack(low, head_w, head_b, 2.0, 4, 2, base), tmp_path / "v.npz")
    v = PairVerifier(tmp_path / "v.npz")
    v.load()
    assert v.score_sync(pairs)[0] == pytest.approx(float(trained[0]), abs=1e-4)
    assert abs(float(trained[0]) - 0.5) > 1e-3  # the update is not a no-op


def test_training_can_continue_a_saved_verifier_and_refuses_one_of_another_shape(tmp_path: Path) -> None:
    """``--init``: the update and head of a file become the starting point of a new training, exactly (float16
    as stored); a file trained with another rank or base would silently train something else, so it is refused."""
    import torch

    from hybrid.cache.base_models import MINILM
    from hybrid.cache.verifier import load_base
    from hybrid.cache.verifier_training import TrainSettings, attach, pack, resume, save

    _, encoder = load_base(2, MINILM)
    low, head_w, head_b = _some_update(torch, encoder, MINILM, seed=2)
    save(pack(low, head_w, head_b, 2.0, 4, 2, MINILM), tmp_path / "v.npz")

    _, fresh_encoder = load_base(2, MINILM)
    fresh = attach(torch, fresh_encoder, 4, 2.0, torch.Generator().manual_seed(9), MINILM)
    fresh_w, fresh_b = torch.nn.Parameter(torch.zeros(encoder.config.hidden_size)), torch.nn.Parameter(torch.zeros(()))
    settings = TrainSettings(base=MINILM.name, rank=4, layers=2, alpha=8.0)
    resume(torch, tmp_path / "v.npz", fresh, fresh_w, fresh_b, settings, 2.0)
    for name, lr in low.items():
        assert torch.equal(fresh[name].A, lr.A.detach().half().float())
        assert torch.equal(fresh[name].B, lr.B.detach().half().float())
    assert torch.allclose(fresh_w, head_w) and float(fresh_b.detach()) == pytest.approx(0.3)
    assert float(fresh[next(iter(fresh))].B.detach().abs().sum()) > 0  # not left at the zeros a new update starts from

    with pytest.raises(ValueError, match="rank"):
        resume(torch, tmp_path / "v.npz", fresh, fresh_w, fresh_b, TrainSettings(base=MINILM.name, rank=8, layers=2,
                                                                                 alpha=16.0), 2.0)


def test_a_verifier_that_cannot_load_turns_semantic_hits_off_not_the_cache(tmp_path: Path) -> None:
    from hybrid.cache.cache import ResponseCache
    from hybrid.cache.embeddings import Embedder
    from hybrid.cache.sqlite_store import SqliteCacheStore
    from hybrid.config import CacheConfig

    class Ready(Embedder):
        name, dim = "stub", 4

        async def embed(self, texts: list[str], priority: int = 0) -> np.ndarray:
            return np.ones((len(texts), 4), dtype=np.float32) / 2

    async def run() -> dict[str, object]:
        cache = ResponseCache(CacheConfig(semantic=True), SqliteCacheStore(tmp_path / "c.sqlite3", 10, dim=4),
                              Ready(), PairVerifier(tmp_path / "missing.npz"))
        await cache.start()
        assert cache._loading is not None
        await cache._loading
        state = cache.state()
        await cache.close()
        return state

    state = asyncio.run(run())
    assert state["semantic"] is False and state["verifier"] == "unavailable" and state["backend"] == "sqlite"


def test_the_weights_ship_with_the_package() -> None:
    assert WEIGHTS == WEIGHTS_BY_MODEL["minilm"]
    for path in WEIGHTS_BY_MODEL.values():
        assert path.exists() and path.stat().st_size < 4 * 1024 * 1024


@pytest.mark.parametrize("model", ["minilm", "mpnet"])
def test_int8_keeps_the_float32_verdicts_on_the_tuning_pairs(model: str) -> None:
    """Quantization is for speed only: a verdict that flips is a wrong hit or a lost one (torch's per-tensor int8
    flipped a clear paraphrase from 0.97 to 0.005). Near the pair model's bar scores crowd, so a few verdicts of
    pairs on the bar move (for the mpnet pair model at its 0.95, 1 of 321: a paraphrase at 0.955 in float32 and 0.947
    in int8; the model before at 0.99, 7), but no near-miss's verdict may move, and no score may move far."""
    confirm = VERIFIER_THRESHOLDS[(model, "float32")][3]
    full = PairVerifier(WEIGHTS_BY_MODEL[model], threads=2)
    int8 = PairVerifier(WEIGHTS_BY_MODEL[model], threads=2, int8=True)
    full.load()
    int8.load()
    labelled = load_pairs(TUNING)
    pairs = [(as_cached(a), as_cached(b)) for _, a, b in labelled]
    near = np.array([k != "paraphrase" for k, _, _ in labelled])
    a = np.array([full.score_sync([p])[0] for p in pairs])
    b = np.array([int8.score_sync([p])[0] for p in pairs])
    flips = (a >= confirm) != (b >= confirm)
    assert flips.mean() <= 0.025
    assert not flips[near].any()
    assert (np.abs(a[flips] - confirm) < 0.02).all() and (np.abs(b[flips] - confirm) < 0.02).all()
    assert np.abs(a - b).mean() < 0.02  # (a pair on the slope can still move: 0.965 -> 0.146, both refused)


def test_the_same_question_is_confirmed_without_the_model() -> None:
    """Case, white space and the closing marks do not make another question; a sign inside does."""
    from hybrid.cache.verifier import plain

    assert plain("user: How do I reset my  password?") == plain("user: how do i reset my password")
    assert plain("user: What is 5-3?") != plain("user: What is 5+3?")
    v = PairVerifier(WEIGHTS)  # not loaded: the same text never reaches the model
    assert v.score_sync([("user: Which invoices are unpaid?", "user: which invoices are unpaid")]).tolist() == [1.0]


def test_a_greeting_or_thanks_around_a_question_is_the_same_question() -> None:
    """Both pair models read "hi" or "thanks" around a question as another question; what stands at a user turn's
    very start or end and no answer depends on is taken off first. Content words that look like greetings stay."""
    from hybrid.cache.verifier import bare

    question = "user: Which invoices are still unpaid?"
    for typed in ("user: hey there, which invoices are still unpaid? cheers", "user: Hello Maria! Which invoices are "
                  "still unpaid?", "user: Good evening all: which invoices are still unpaid? Thank you so much :)",
                  "user: hi which invoices are still unpaid pls", "user: Evening! which invoices are still unpaid? "
                  "Kind regards, Joe", "user: Sorry, which invoices are still unpaid? 👍"):
        assert bare(typed) == bare(question), typed
    assert bare("user: Morning shift: how many staff?") != bare("user: Evening shift: how many staff?")
    assert bare("user: Which plan is best") == "user: which plan is best"  # "best" closes only as "Best, Name"
    assert bare("user: Dear diary apps compared, which is best?") == "user: dear diary apps compared, which is best"
    assert bare("user: dear diary which app") == "user: dear diary which app"  # "dear" goes only before a mark
    assert bare("user: Can I expense meta ads? ta") == "user: can i expense meta ads"  # "ta" only as a word
    assert bare("user: thanks!") == "user: thanks"  # never the whole turn
    assert bare("system: Hi, be brief.\nuser: hi, what is 2+2? thx") == "system: hi, be brief\nuser: what is 2+2"
    # hostile input: runs of marks and repeated greetings are eaten in linear time (a regex that retried each start
    # position of a 200,000-mark run would not return)
    assert bare("user: " + "!" * 200_000 + "a") == "user: a"
    assert bare("user: " + "hello, " * 100_000 + "q").endswith("hello, q")
    v = PairVerifier(WEIGHTS)  # not loaded: the same question never reaches the model
    assert v.score_sync([("user: Hi team, which invoices are still unpaid? Thanks!", question)]).tolist() == [1.0]


def test_sibling_questions_are_other_questions_on_the_topic() -> None:
    """Training's free near-misses: texts of different questions that embed close; never two sides of a paraphrase,
    nor one question written twice, nor a labelled near-miss (already a pair of the file), and at most ``per_text``
    for each text."""
    from hybrid.cache.verifier_training import groups, siblings

    pairs = [("paraphrase", "How long is a soccer match?", "What's the duration of a football game?"),
             ("paraphrase", "How long is half-time in rugby?", "How long is the rugby half-time break?"),
             ("time", "How long is a soccer match?", "How long was the soccer match yesterday?"),
             ("paraphrase", "how long is a soccer match", "Soccer match length?")]
    g = groups(pairs)
    assert g["How long is a soccer match?"] == g["Soccer match length?"] == g["What's the duration of a football game?"]
    assert g["How long is half-time in rugby?"] != g["How long is a soccer match?"]
    assert g["How long was the soccer match yesterday?"] != g["How long is a soccer match?"]

    vocab = sorted({w for _, a, b in pairs for t in (a, b) for w in t.lower().split()})

    def embed(texts: list[str]) -> np.ndarray:  # bag of words: enough to make every text close to the others
        v = np.array([[t.lower().split().count(w) + 0.5 for w in vocab] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    found = siblings(pairs, embed, cosine=0.0)
    assert found and all(g[a] != g[b] for a, b, _ in found)
    assert not [p for p in found if {p[0], p[1]} == {pairs[2][1], pairs[2][2]}]  # the labelled "time" near-miss
    assert [s for _, _, s in found] == sorted((s for _, _, s in found), reverse=True)
    capped = siblings(pairs, embed, cosine=0.0, per_text=1)
    texts = [t for a, b, _ in capped for t in (a, b)]
    assert len(texts) == len(set(texts)) and len(capped) < len(found)


def test_sibling_near_misses_come_in_both_orders() -> None:
    """Sorted order puts "How ..." before "how ...": a formal question first and a chat-typed one second, every
    time. Training draws each pair's order, so the model cannot learn the order as a difference; each pair is kept
    once, labelled a near-miss."""
    import random

    from hybrid.cache.verifier_training import sibling_examples

    near = [(f"How do I do thing {i}?", f"how do i do thing {i + 1000} pls", 0.7) for i in range(200)]
    out = sibling_examples(near, random.Random(0))
    formal_first = [a.startswith("user: How") for a, _, _ in out]
    assert 60 < sum(formal_first) < 140
    assert sorted(frozenset((a, b)) for a, b, _ in out) == sorted(
        frozenset((as_cached(a), as_cached(b))) for a, b, _ in near)
    assert {y for _, _, y in out} == {0.0}


def test_cross_validation_never_splits_a_question_across_folds() -> None:
    """A text in a held-out pair is never in a training pair of that fold (the same common question recurs across
    the labelled files); the folds stay about equal."""
    from hybrid.cache.verifier import plain
    from hybrid.cache.verifier_training import folds_by_question

    pairs = load_pairs(TUNING)
    # the same question again in another pair, written differently: it must follow its first pair's fold
    pairs += [("paraphrase", pairs[0][1].lower().rstrip("?"), "Another way to ask it?"),
              ("number", "Another way to ask it", pairs[5][2] + "!")]
    fold = folds_by_question(pairs, 3)
    assert sorted(set(fold)) == [0, 1, 2]
    where: dict[str, set[int]] = {}
    for (_, a, b), f in zip(pairs, fold):
        for t in (a, b):
            where.setdefault(plain(t), set()).add(f)
    assert all(len(fs) == 1 for fs in where.values())
    assert fold[-2] == fold[-1] == fold[0] == fold[5]
    sizes = [fold.count(f) for f in range(3)]
    assert max(sizes) - min(sizes) <= len(pairs) // 10


def test_loading_the_embedder_for_training_keeps_the_threads_training_was_given() -> None:
    """The embedder sets torch to its one serving thread when it loads; training finds its sibling questions with it
    and then must still run on the threads it was given (it ran on one core of two)."""
    import torch

    from hybrid.cache.verifier_training import _minilm

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        embed = _minilm()
        assert torch.get_num_threads() == 2
        assert embed(["user: hello"]).shape == (1, 384)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("model", "precision"), [("minilm", "float32"), ("mpnet", "int8")])
def test_the_configured_pair_model_is_the_one_the_cache_loads(tmp_path: Path, model: str, precision: str) -> None:
    """cache.verifier_model picks the weights (and with them the base model), cache.embedder_precision the query
    embedder's, and the two the default thresholds."""
    from hybrid.cache.cache import build_cache
    from hybrid.config import parse_config

    config = parse_config({"backends": [{"name": "a", "kind": "llamacpp", "model": "m.gguf"}], "cache": {
        "semantic": True, "verifier_model": model, "embedder_precision": precision,
        "path": str(tmp_path / "c.sqlite3")}})
    cache = build_cache(config)
    try:
        assert cache is not None and cache.verifier is not None
        assert cache.verifier.weights == WEIGHTS_BY_MODEL[model] and cache.verifier.int8
        c = cache.cfg
        thresholds = (c.similarity_threshold, c.verifier_threshold, c.close_similarity, c.close_verifier_threshold)
        assert thresholds == VERIFIER_THRESHOLDS[(model, precision)]
        assert cache.embedder is not None and cache.embedder.name.endswith("-int8") == (precision == "int8")
    finally:
        if cache is not None:
            asyncio.run(cache.close())


def test_training_never_reads_a_set_that_is_still_sealed() -> None:
    """The mpnet pair model trains on the seen sealed sets (--seen-sets: v1-v7, v9-v11, v13 and v14); v8 and v12 choose
    its thresholds and v15 is the headline, so no text of those may be among its training pairs (restyled or not), nor any
    retyping of the sealed retyped set (whose plain questions are office questions, some of them from the training
    files)."""
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "train_verifier.py"
    spec = importlib.util.spec_from_file_location("train_verifier", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain_pairs, with_seen = module.training_pairs(), module.training_pairs(seen_sets=True)
    assert with_seen[: len(plain_pairs)] == plain_pairs and len(with_seen) > len(plain_pairs)
    trained = {t for _, a, b in with_seen for t in (a, b)}
    restyled = {t.removeprefix("user: ") for a, b, _ in restyled_examples(with_seen, random.Random(1)) for t in (a, b)}
    data = Path(__file__).parent / "data"
    for seen in ("cache_pairs_sealed_v6.txt", "cache_pairs_sealed_v7.txt", "cache_pairs_sealed_v9.txt",
                 "cache_pairs_sealed_v10.txt", "cache_pairs_sealed_v11.txt", "cache_pairs_sealed_v13.txt",
                 "cache_pairs_sealed_v14.txt"):
        assert {a for _, a, _ in load_pairs(data / seen)} <= trained, seen
    for sealed in ("cache_pairs_sealed_v8.txt", "cache_pairs_sealed_v12.txt", "cache_pairs_sealed_v15.txt"):
        texts = {t for _, a, b in load_pairs(data / sealed) for t in (a, b)}
        assert not texts & trained, sealed
        assert not texts & restyled, sealed
    assert not {b for _, _, b in load_pairs(data / "cache_retyped_sealed.txt")} & trained


def test_a_less_similar_candidate_needs_a_surer_verifier(tmp_path: Path) -> None:
    """Two bands: a candidate at least cache.close_similarity alike is served once the verifier reaches
    close_verifier_threshold; a less similar one needs verifier_threshold. With the real models, the bars are set
    around the real pair's own similarity and probability (a tuning-set paraphrase)."""
    import dataclasses

    from hybrid.cache.cache import build_cache
    from hybrid.config import parse_config
    from hybrid.protocol import parse_chat_request

    config = parse_config({"backends": [{"name": "a", "kind": "llamacpp", "model": "m.gguf"}], "cache": {
        "semantic": True, "path": str(tmp_path / "c.sqlite3")}})
    cache = build_cache(config)
    assert cache is not None
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Use the portal."}, "finish_reason": "stop"}]}

    def ask(text: str):  # type: ignore[no-untyped-def]
        return parse_chat_request({"model": "m", "messages": [{"role": "user", "content": text}], "temperature": 0})

    async def run() -> list[tuple[str, str | None]]:
        await cache.start()
        assert cache._loading is not None
        await cache._loading
        first = ask("How do I reset my password?")
        miss = await cache.lookup(first, "t", None, None)
        assert miss.status == "miss"
        cache.store_answer(first, miss, answer)
        await asyncio.gather(*cache._pending)
        again = ask("How can I reset my password?")
        base = cache.cfg
        cache.cfg = dataclasses.replace(base, verifier_threshold=0.0, close_verifier_threshold=0.0)
        seen = await cache.lookup(again, "t", None, None)  # every bar at 0: the pair's own figures
        assert seen.status == "hit-semantic" and seen.similarity is not None and seen.confirmed is not None
        s, p = seen.similarity, seen.confirmed
        assert base.similarity_threshold <= s < 1.0 and 0.0 < p < 1.0
        out = []
        for close in (s - 0.01, s + 0.001):  # the candidate in the close band, then just below it
            cache.cfg = dataclasses.replace(base, close_similarity=close, verifier_threshold=(p + 1) / 2,
                                            close_verifier_threshold=p / 2)
            found = await cache.lookup(again, "t", None, None)
            out.append((found.status, found.headers.get("x-hybrid-cache-verifier")))
        await cache.close()
        return out

    (close_status, close_p), (far_status, far_p) = asyncio.run(run())
    assert close_status == "hit-semantic" and close_p is not None
    assert far_status == "miss" and far_p is None
