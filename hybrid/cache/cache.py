"""The response cache as the gateway sees it: look up before routing, store after a complete answer.

Failures of the store or the embedder (Redis down, disk full, a corrupt row) degrade to a miss with a log line
and a metric, never a failed request. Only complete answers are stored: never errors, never a stream that broke
off or that the client abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.cache.audit import Sample, SemanticAudit, Verdict, agree, answer_text
from hybrid.cache.embeddings import STORE, Embedder, EmbedderUnavailable, HttpEmbedder, LocalMiniLM
from hybrid.cache.guard import disagreement
from hybrid.cache.keys import conversation_text, keys_of
from hybrid.cache.policy import CachePolicy, decide
from hybrid.cache.store import CacheEntry, CacheStore
from hybrid.cache.verifier import WEIGHTS_BY_MODEL, PairVerifier
from hybrid.config import CacheConfig, Config
from hybrid.metrics import CACHE_AUDITS, CACHE_ERRORS, CACHE_GUARD_REJECTIONS, CACHE_LOOKUPS, CACHE_STORES, child
from hybrid.protocol import Chunk, InferenceRequest, completion_to_chunk, from_text_completion_chunk, make_chunk

log = logging.getLogger("hybrid.cache")
SAMPLE_SYNC_S = 2.0  # how often a replica takes the audit verdicts the others reached (shared stores only)
VERIFIED_CANDIDATES = 2  # the most similar fresh candidates the verifier reads, one by one: a bound per lookup


@dataclass
class CacheLookup:
    status: str  # hit-exact | hit-semantic | miss | bypass
    policy: CachePolicy
    key: str = ""
    partition: str = ""
    text: str = ""
    vector: np.ndarray | None = None
    entry: CacheEntry | None = None
    similarity: float | None = None
    confirmed: float | None = None  # the verifier's probability, when one confirmed the hit
    # a miss drawn as a shadow sample: the candidate the configured threshold would have tried, with its similarity
    shadow: tuple[CacheEntry, float] | None = None

    @property
    def hit(self) -> bool:
        return self.entry is not None

    @property
    def headers(self) -> dict[str, str]:
        h = {"x-hybrid-cache": self.status}
        if self.similarity is not None:
            h["x-hybrid-cache-similarity"] = f"{self.similarity:.4f}"
        if self.confirmed is not None:
            h["x-hybrid-cache-verifier"] = f"{self.confirmed:.4f}"
        return h


class ResponseCache:
    def __init__(self, cfg: CacheConfig, store: CacheStore, embedder: Embedder | None,
                 verifier: PairVerifier | None = None) -> None:
        """``verifier``: confirms each semantic candidate; while it loads, and if it cannot load, no semantic hit
        is served (exact hits are)."""
        self.cfg = cfg
        self.store = store
        self.embedder = embedder
        self.verifier = verifier
        self._verifier_failed = False
        self.audit = SemanticAudit(cfg.semantic_error_budget, cfg.semantic_audit_rate, cfg.similarity_threshold)
        self._pending: set[asyncio.Task[None]] = set()
        self._loading: asyncio.Future[None] | None = None
        self._sync: asyncio.Task[None] | None = None
        self.origin = uuid.uuid4().hex  # this replica, in the verdicts it shares

    async def start(self) -> None:
        await self.store.start()
        if self.embedder is not None:
            self._loading = asyncio.ensure_future(self._load_models())
            if self.store.shares_samples and self.audit.budget > 0:  # (a replica that audits nothing still follows)
                self._sync = asyncio.ensure_future(self._follow_samples())

    async def _follow_samples(self) -> None:
        """Take the verdicts other replicas reached, every SAMPLE_SYNC_S (at start, all the store still holds): every
        replica judges a partition and an entry on the same samples, so a wrong hit one of them found stops being
        served by all of them."""
        after = "0"
        while True:
            try:
                while True:
                    batch, after = await self.store.read_samples(after)
                    if not batch:
                        break
                    theirs = [sample for origin, sample in batch if origin != self.origin]
                    for before, now in self.audit.absorb(theirs).values():
                        log.info("cache: a partition's semantic threshold moves from %.4f to %.4f on other "
                                 "replicas' verdicts", before, now)
                    for sample in theirs:
                        child(CACHE_AUDITS, "shared", "wrong" if sample.wrong else "agree").inc()
                    await asyncio.sleep(0)  # (a long backlog at start is read in pieces, between requests)
            except Exception as exc:
                log.debug("cache: could not read shared audit samples (%s)", exc)
            await asyncio.sleep(SAMPLE_SYNC_S)

    async def _load_models(self) -> None:
        """The embedder, then the verifier: one after the other, since importing transformers from two threads at
        once can fail (its lazy module loading is not thread-safe; seen as "cannot import name 'AutoModel'")."""
        assert self.embedder is not None
        try:
            await self.embedder.start()
        except Exception as exc:
            log.warning("cache: embedding model failed to load (%s): exact cache only", exc)
            self.embedder = None
            return
        if self.verifier is None:
            return
        try:
            await self.verifier.start()
        except Exception as exc:
            log.warning("cache: the semantic-hit verifier failed to load (%s): exact cache only (cache.verifier = "
                        "'off' serves semantic hits without it)", exc)
            self._verifier_failed = True

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            await asyncio.gather(self._sync, return_exceptions=True)
        if self._loading is not None and not self._loading.done():
            await asyncio.wait([self._loading], timeout=30)
        if self._pending:
            await asyncio.wait(self._pending, timeout=10)
        await self.store.close()
        if self.embedder is not None:
            await self.embedder.close()
        if self.verifier is not None:
            await self.verifier.close()

    @property
    def semantic(self) -> bool:
        """The semantic layer answers: an embedder loaded, a store that can search vectors, and the verifier (when
        one is configured) loaded."""
        verified = self.verifier is None or (self.verifier.ready and not self._verifier_failed)
        return self.embedder is not None and self.embedder.ready and self.store.semantic and verified

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.store.name, "semantic": self.semantic,
            "embedder": None if self.embedder is None else (self.embedder.name if self.embedder.ready else "loading"),
            "verifier": self._verifier_state(),
        }
        if self.semantic:
            out["error_budget"] = self.audit.figures()
        return out

    def _verifier_state(self) -> str | None:
        if self.verifier is None:
            return None
        if self._verifier_failed:
            return "unavailable"
        return self.verifier.name if self.verifier.ready else "loading"

    # ------------------------------------------------------------------------------------------ lookup

    async def lookup(
        self, req: InferenceRequest, tenant: str, cache_control: str | None, namespace: str | None, route: str = ""
    ) -> CacheLookup:
        """``route``: the tier the client forced with ``x-hybrid-tier`` (part of the key: another tier, another
        answer)."""
        policy = decide(req, tenant, cache_control, namespace, self.cfg.ttl_s, self.cfg.deterministic_only,
                        self.cfg.shared_models)
        if not policy.read:
            child(CACHE_LOOKUPS, "bypass").inc()
            if not policy.write:  # nothing to read or write: no keys to compute
                return CacheLookup("bypass", policy)
        exact, params = keys_of(req, route)
        found = CacheLookup("miss" if policy.read else "bypass", policy, policy.scope + exact[:40], policy.scope + params)
        if not policy.read:  # no-cache: keys only for storing the fresh answer
            return found
        try:
            entry = await self.store.get(found.key)
        except Exception as exc:
            log.warning("cache: exact lookup failed (%s); treating as a miss", exc)
            CACHE_ERRORS.labels("get").inc()
            entry = None
        if entry is not None and self._fresh(entry, policy):
            found.status, found.entry = "hit-exact", entry
        elif self.semantic:
            await self._semantic(req, found)
        child(CACHE_LOOKUPS, found.status).inc()
        if found.entry is not None:
            self._spawn(self._touch(found.entry.key))
        return found

    def _fresh(self, entry: CacheEntry, policy: CachePolicy) -> bool:
        now = time.time()
        if entry.expires <= now:
            return False
        return policy.max_age_s is None or now - entry.created <= policy.max_age_s

    async def _semantic(self, req: InferenceRequest, found: CacheLookup) -> None:
        assert self.embedder is not None
        found.text = conversation_text(req)
        try:
            found.vector = (await self.embedder.embed([found.text]))[0]
            candidates = await self.store.nearest(found.partition, found.vector, 4)
        except Exception as exc:
            log.warning("cache: semantic lookup failed (%s); treating as a miss", exc)
            CACHE_ERRORS.labels("semantic").inc()
            return
        threshold = self.audit.threshold(found.partition)  # the configured one, or higher after wrong hits
        checked = 0
        for entry, similarity in candidates:
            if similarity < self.audit.base:
                break
            if not self._fresh(entry, found.policy) or similarity < self.audit.entry_threshold(entry.key):
                continue  # (an entry that served a wrong answer serves nothing at or below that similarity again)
            if similarity < threshold:
                # what the configured threshold would try and a raised one refuses: now and then, the client's live
                # answer is compared with this candidate's, to learn whether the raised threshold is still needed
                if self.audit.sampled():
                    found.shadow = (entry, similarity)
                break
            if self.verifier is not None:
                if checked == VERIFIED_CANDIDATES:
                    break
                checked += 1
            try:
                confirmed, refused = await self._check(found.text, entry, similarity)
            except Exception as exc:
                log.warning("cache: the verifier failed (%s); treating as a miss", exc)
                CACHE_ERRORS.labels("verifier").inc()
                return
            if refused is not None:
                CACHE_GUARD_REJECTIONS.labels(refused).inc()
                continue
            # the most similar confirmed candidate wins
            found.status, found.entry, found.similarity, found.confirmed = "hit-semantic", entry, similarity, confirmed
            return

    async def _check(self, text: str, entry: CacheEntry, similarity: float) -> tuple[float | None, str | None]:
        """The configured check of a similar enough candidate: (the verifier's probability, None when it reaches the
        bar for this similarity or "verifier" when not); without a verifier the word-list guard decides: (None, its
        reason to refuse or None)."""
        if self.verifier is None:
            return None, disagreement(text, entry.text)
        # (the guard is not asked: in front of the verifier it refused 13% of the paraphrases the verifier confirmed,
        # on pairs neither was fitted to, and caught 2 of 261 near-misses: docs/design.md). One pair per forward
        # pass: int8 quantizes activations per batch, so a pair scored beside another could get another verdict.
        confirmed = (await self.verifier.scores(text, [entry.text]))[0]
        return confirmed, None if confirmed >= self.cfg.verifier_bar(similarity) else "verifier"

    # ------------------------------------------------------------------------------------------ store

    def store_answer(self, req: InferenceRequest, found: CacheLookup, answer: dict[str, Any]) -> None:
        """Store a complete answer, off the response path (and judge a shadow sample's candidate against it)."""
        if found.hit or not _complete(answer):
            return
        if found.shadow is not None and self.audit.acquire():
            self._spawn(self._shadow(found, found.shadow, answer))
        if found.policy.write:
            self._spawn(self._store(req, found, answer))

    async def judge(self, req: InferenceRequest, found: CacheLookup, live: dict[str, Any]) -> Verdict:
        """An audited hit's verdict, from the live answer to its request: recorded, shared with the other replicas,
        and when the cached answer was wrong, the live one is stored for this question (its own answer from now
        on, for it and for questions closer to it than to the entry that was wrong)."""
        assert found.entry is not None and found.similarity is not None
        same = await self._agree(found.entry.answer, live)
        if not same and found.policy.write and _complete(live):  # (stored first: once the verdict shows, it is fixed)
            await self._store(req, found, live)  # under the request's own key, not the entry's
        sample = Sample(found.partition, found.entry.key, found.similarity, not same)
        verdict = self.audit.record(sample)
        self._note(verdict, sample, "audit")
        await self._share(sample)
        return verdict

    async def _shadow(self, found: CacheLookup, candidate: tuple[CacheEntry, float], live: dict[str, Any]) -> None:
        """Would the candidate the raised threshold refused have been right? Only a candidate the configured check
        (the verifier, or without one the guard) would have served is a sample."""
        entry, similarity = candidate
        try:
            if (await self._check(found.text, entry, similarity))[1] is not None:
                return
            sample = Sample(found.partition, entry.key, similarity, not await self._agree(entry.answer, live))
            self._note(self.audit.record(sample, shadow=True), sample, "shadow")
            await self._share(sample)
        except Exception as exc:
            self.audit.failed += 1
            child(CACHE_AUDITS, "shadow", "failed").inc()
            log.info("cache: a shadow sample could not be judged (%s)", exc)
        finally:
            self.audit.done()

    async def _agree(self, cached: dict[str, Any], live: dict[str, Any]) -> bool:
        embedder = self.embedder if self.semantic else None

        async def embed(texts: list[str]) -> Any:
            assert embedder is not None
            return await embedder.embed(texts, STORE)

        return await agree(answer_text(cached), answer_text(live), embed if embedder is not None else None)

    def _note(self, verdict: Verdict, sample: Sample, source: str) -> None:
        kind = {"audit": "an audited", "shadow": "a shadow"}[source]
        child(CACHE_AUDITS, source, "wrong" if sample.wrong else "agree").inc()
        if verdict.closed is not None:
            log.warning("cache: %s semantic hit at similarity %.4f was another question's answer; that entry is no "
                        "longer served at or below it", kind, sample.similarity)
        if verdict.after != verdict.before:
            log.warning("cache: a partition's semantic threshold moves from %.4f to %.4f on %s verdict",
                        verdict.before, verdict.after, kind)

    async def _share(self, sample: Sample) -> None:
        if not self.store.shares_samples:
            return
        try:
            await self.store.publish_sample(self.origin, sample, self.cfg.ttl_s or 86400.0)
        except Exception as exc:
            log.warning("cache: could not share an audit verdict (%s)", exc)
            CACHE_ERRORS.labels("samples").inc()

    async def _store(self, req: InferenceRequest, found: CacheLookup, answer: dict[str, Any]) -> None:
        try:
            text = found.text or conversation_text(req)
            vector = found.vector
            if vector is None and self.semantic:
                assert self.embedder is not None
                vector = (await self.embedder.embed([text], STORE))[0]
            now = time.time()
            await self.store.put(CacheEntry(found.key, found.partition, found.policy.namespace, text, answer, now,
                                            now + found.policy.ttl_s, vector))
            CACHE_STORES.inc()
        except Exception as exc:
            log.warning("cache: store failed (%s)", exc)
            CACHE_ERRORS.labels("put").inc()

    async def _touch(self, key: str) -> None:
        try:
            await self.store.touch(key)
        except Exception:  # LRU bookkeeping only
            CACHE_ERRORS.labels("touch").inc()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def _complete(answer: dict[str, Any]) -> bool:
    finishes = [c.get("finish_reason") for c in answer.get("choices", [])]
    return bool(finishes) and all(f in ("stop", "length", "tool_calls", "function_call") for f in finishes)


def replay_chunks(entry: CacheEntry, kind: str) -> list[Chunk]:
    """A stored answer as the chunk stream a backend would have sent: content, finish, usage."""
    answer = entry.answer
    whole = from_text_completion_chunk(answer) if kind == "completion" else completion_to_chunk(answer)
    model, created = whole.get("model", ""), int(time.time())
    chunks: list[Chunk] = []
    for ch in whole["choices"]:
        delta = dict(ch.get("delta") or {})
        first = make_chunk("", model, role="assistant", created=created)
        first["choices"][0]["index"] = ch.get("index", 0)
        first["choices"][0]["delta"].update({k: v for k, v in delta.items() if k != "role"})
        last = make_chunk("", model, finish_reason=ch.get("finish_reason") or "stop", created=created)
        last["choices"][0]["index"] = ch.get("index", 0)
        chunks += [first, last]
    usage = whole.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    chunks.append({"id": "", "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                   "usage": usage})
    return chunks


def build_cache(config: Config) -> ResponseCache | None:
    """The configured cache (None when off); an embeddings backend is named by `cache.embedder`."""
    cfg = config.cache
    if cfg.backend == "off":
        return None
    embedder: Embedder | None = None
    verifier: PairVerifier | None = None
    if cfg.semantic:
        if cfg.verifier != "off":
            verifier = PairVerifier(WEIGHTS_BY_MODEL[cfg.verifier_model], int8=cfg.verifier == "cross-encoder-int8")
        try:
            if cfg.embedder == "local":
                embedder = LocalMiniLM(int8=cfg.embedder_precision == "int8")
            else:
                from hybrid.upstream import upstream_pool

                b = config.backend(cfg.embedder)
                model = cfg.embedding_model or (b.models[0] if b.models else "")
                embedder = HttpEmbedder(upstream_pool(b, b.base_url, f"embeddings:{b.name}"), model)
        except EmbedderUnavailable as exc:
            log.warning("cache: semantic layer off: %s", exc)
    dim = embedder.dim if embedder is not None and embedder.dim else 384
    store: CacheStore
    if cfg.backend == "redis":
        from hybrid.cache.redis_store import RedisCacheStore

        store = RedisCacheStore(cfg.redis_url, cfg.redis_prefix, dim=dim, semantic=embedder is not None)
    else:
        from hybrid.cache.sqlite_store import SqliteCacheStore
        from hybrid.paths import data_dir

        path = Path(cfg.path).expanduser() if cfg.path else data_dir() / "cache.sqlite3"
        store = SqliteCacheStore(path, cfg.max_entries, dim=dim, semantic=embedder is not None)
    return ResponseCache(cfg, store, embedder, verifier)
