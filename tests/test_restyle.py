"""The chat-typed retyping that training adds (hybrid/cache/restyle.py), on the tuning set's pairs only."""

from __future__ import annotations

import random
from pathlib import Path

from hybrid.cache.restyle import chat_typed, is_formal, words
from hybrid.cache.verifier import as_cached, load_pairs, plain
from hybrid.cache.verifier_training import restyled_examples

TUNING = load_pairs(Path(__file__).parent / "data" / "cache_pairs.txt")


def test_a_near_miss_keeps_every_word_that_tells_it_apart() -> None:
    """Retyping one side of a near-miss never drops a word its partner lacks ("week" against "year", "not"), and
    never makes it the partner: the pair still needs two answers."""
    rng = random.Random(0)
    near = [(a, b) for k, a, b in TUNING if k != "paraphrase"]
    assert len(near) > 100
    for a, b in near:
        for text, partner in ((a, b), (b, a)):
            out = chat_typed(text, partner, rng)
            assert words(text) - words(partner) <= words(out), (text, partner, out)
            assert plain(out) != plain(partner), (text, partner, out)


def test_retyped_questions_read_as_chat() -> None:
    """No retyped text is formal any more, and many lose their question frame ("how do I", "what is")."""
    rng = random.Random(1)
    framed = [(a, b) for _, a, b in TUNING if a.lower().startswith(("how do i ", "what is "))]
    assert len(framed) > 30
    outs = [chat_typed(a, b, rng) for a, b in framed]
    assert not any(is_formal(o) for o in outs)
    unframed = [o for o in outs if not o.startswith(("how do i ", "what is "))]
    assert len(unframed) >= len(outs) // 3, outs


def test_a_frame_that_differs_stays() -> None:
    """Where the frame is the difference ("How do I" against "Why do I"), it is never dropped."""
    for seed in range(40):
        out = chat_typed("Why do I need a VPN at work?", "How do I set up a VPN at work?", random.Random(seed))
        assert "why" in words(out) and "need" in words(out), out


def test_training_restyles_pairs_written_in_one_style_with_their_labels() -> None:
    """One extra example per pair whose sides are both formal, near-misses and paraphrases alike, label kept; one
    side as written, the other chat-typed; pairs already across styles are left alone."""
    pairs = [("paraphrase", "How do I reset my password?", "How can I reset my password?"),
             ("time", "How do I remove images unused for a week?", "How do I remove images unused for a year?"),
             ("paraphrase", "How do I rename a channel?", "rename a slack channel")]
    out = restyled_examples(pairs, random.Random(0))
    assert len(out) == 2
    labels = sorted(y for _, _, y in out)
    assert labels == [0.0, 1.0]
    for (kind, a, b), (x, y, label) in zip(pairs, out):
        assert label == (1.0 if kind == "paraphrase" else 0.0)
        assert as_cached(a) in (x, y) or as_cached(b) in (x, y)  # one side as written
        assert {x, y} != {as_cached(a), as_cached(b)}  # the other retyped
    near = next(e for e in out if e[2] == 0.0)
    assert any("year" in t for t in near[:2]) and any("week" in t for t in near[:2])
