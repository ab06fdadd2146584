"""The semantic-hit verifier: a cross-encoder that reads the new question and a cached one together and says
whether one answer serves both.

An embedding puts "tickets closed last week" next to "this week", "from A to B" next to "from B to A": a cosine says
two texts are about the same thing, not that they ask the same. Reading both texts at once, attention can compare
them word by word. A verifier is a pretrained encoder (hybrid.cache.base_models: the first 6 layers of
all-mpnet-base-v2, the cache's default; or all-MiniLM-L6-v2, the weights the cache embeds with) with a low-rank
update of its linear layers and a one-unit head, trained by ``scripts/train_verifier.py`` on labelled pairs
(hybrid/cache/data/verifier_pairs.txt and the tuning set tests/data/cache_pairs.txt; mpnet's also on the reworded
pairs and the seen sealed sets v1-v7 and v9-v11, never on v8, which chose its thresholds, nor the sets still
sealed) and shipped as ``data/verifier.npz`` and ``data/verifier_mpnet.npz`` (0.6 and 1.2 MiB: only the update, and
the name of its base). At load the update is merged into a private copy of the weights, so a check costs one forward
pass of the base over both texts (the pair is cut to :data:`MAX_TOKENS`, keeping the ends of long conversations).
"""

from __future__ import annotations

import asyncio
import logging
import re
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.cache.base_models import BASES, MINILM, BaseModel
from hybrid.cache.onnx_encoder import OnnxEncoder

log = logging.getLogger("hybrid.cache")

DATA = Path(__file__).resolve().parent / "data"
WEIGHTS = DATA / "verifier.npz"  # on all-MiniLM-L6-v2 (this class's default; the cache's is mpnet's)
# each pair model's weights (cache.verifier_model): the update of its base model and the head
WEIGHTS_BY_MODEL = {"minilm": WEIGHTS, "mpnet": DATA / "verifier_mpnet.npz"}
TRAINING_PAIRS = DATA / "verifier_pairs.txt"
MAX_TOKENS = 160  # both texts together: a bound on the work one check can cost


def load_pairs(path: Path) -> list[tuple[str, str, str]]:
    """``kind || A || B`` lines (``#`` comments): ``paraphrase`` is one question asked twice, any other kind a pair
    that needs different answers."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            kind, a, b = (p.strip() for p in line.split("||"))
            out.append((kind, a, b))
    return out


def plain(text: str) -> str:
    """A text as the verifier needs to tell it apart: what case, runs of white space and the closing marks change
    is the same question (the model reads lower case anyway)."""
    return " ".join(text.lower().split()).rstrip("?.! ")


# what people put around a question in a chat, at its start or its end, and that no answer depends on. Both
# verifiers read a greeting or a "thanks" as another question (none of their training pairs has one), so two texts
# that are the same once these are taken off are confirmed without the model (:func:`bare`).
_GREETING = r"(?:hi|hello|hey|hiya|heya|howdy|greetings|dear|good (?:morning|afternoon|evening|day))"
_TIME_GREETING = r"(?:morning|afternoon|evening)"  # greetings only with an addressee or a mark: "morning shift, ..."
_ADDRESSEE = r"(?:all|everyone|everybody|team|folks|guys|there|y'all)"
_MARK = r"\s*[,!.:;\u2014\u2013-]+\s*"
_OPENERS = (
    re.compile(rf"^{_GREETING}(?:\s+{_GREETING})?(?:\s+[\w'-]+){{0,2}}{_MARK}"),  # "hi sam," "good morning hr team,"
    re.compile(rf"^{_TIME_GREETING}(?:\s+{_ADDRESSEE})?{_MARK}"),  # "morning all!" "evening,"
    re.compile(rf"^(?:hi|hello|hey|hiya|heya)(?:\s+{_ADDRESSEE})?\s+"),  # "hi how do i ..." "hey all can i ..."
    re.compile(rf"^(?:quick (?:one|question)|sorry to bother you|sorry){_MARK}"),
)
_CLOSER = re.compile(
    r"[\s,!.:;\u2014\u2013-](?:many thanks|thanks|thank you|thank u|thx|ty|ta|cheers|tia|much appreciated"
    r"|appreciate (?:it|the help)|kind regards|regards|best wishes|best(?=\s*,\s*[\w'-]+$)|please|pls|plz)"
    r"(?:\s+(?:a lot|a bunch|heaps|so much|very much|in advance|all))*(?:\s*,\s*[\w'-]+)?$")
_CLOSER_SPAN = 120  # characters: a closer is looked for in the tail only (a turn may be megabytes long)
_EDGE = re.compile(r"[\W_]*")  # marks and emoji, matched from one end (anchored: linear in what it eats)


def _trim(text: str) -> str:
    start = _EDGE.match(text).end()  # type: ignore[union-attr]  # (matches the empty string at worst)
    end = len(text) - _EDGE.match(text[::-1]).end()  # type: ignore[union-attr]
    return text[start:end] if end > start else ""


def _bare_turn(content: str) -> str:
    text = _trim(content)
    for _ in range(3):  # "thanks so much :) cheers": closers one after another
        head, tail = text[:-_CLOSER_SPAN], text[-_CLOSER_SPAN:]
        found = _CLOSER.search(tail)
        if found is None or not (head + tail[: found.start()]).strip():
            break
        text = _trim(head + tail[: found.start()])
    for _ in range(3):  # "hi! quick one - ..."
        for opener in _OPENERS:
            found = opener.match(text)
            if found is not None and text[found.end():].strip():
                text = _trim(text[found.end():])
                break
        else:
            break
    return text


def bare(text: str) -> str:
    """:func:`plain`, and a user turn's greeting at its start and thanks or sign-off at its end taken off: "Hi Sam,
    how do I rename a channel? Thanks, Priya" asks what "How do I rename a channel?" asks. Only what stands at the
    very start or end of a turn goes, set off by a mark ("Morning shift: how many staff?" keeps its "morning"), or
    for "hi", "hello" and "hey" by a space ("hi how do I ..."; "dear" and "good day" need the mark)."""
    lines = (plain(line) for line in text.split("\n"))
    return "\n".join(f"user: {_bare_turn(line[6:])}" if line.startswith("user: ") else line for line in lines)


def as_cached(question: str) -> str:
    """A one-turn question as the cache keeps it (hybrid.cache.keys.conversation_text)."""
    return f"user: {question}"


def load_base(layers: int = 6, base: BaseModel = MINILM) -> tuple[Any, Any]:
    """A base model's tokenizer and its encoder's first ``layers`` blocks, from the package's files (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = base.path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.truncation_side = "left"  # a long conversation keeps its last turns, where the question is
    encoder = AutoModel.from_pretrained(path)
    del encoder.encoder.layer[layers:]
    encoder.config.num_hidden_layers = layers
    return tokenizer, encoder


def encode_pairs(tokenizer: Any, pairs: list[tuple[str, str]], tensors: str = "pt") -> Any:
    """``tensors``: "pt" for torch (training), "np" for onnxruntime."""
    return tokenizer([a for a, _ in pairs], [b for _, b in pairs], return_tensors=tensors, padding=True,
                     truncation="longest_first", max_length=MAX_TOKENS)


def pooled_logit(encoder: Any, head_w: Any, head_b: Any, enc: Any) -> Any:
    """The head reads the mean of the pair's token states (MiniLM was trained to mean-pool)."""
    hidden = encoder(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled @ head_w + head_b


class PairVerifier:
    """Scores (new question, cached question) pairs: the probability that one answer serves both.

    One worker thread owns the model; ``load`` runs there too, so a router starts serving before it is ready
    (until then :attr:`ready` is False and semantic candidates are not served)."""

    def __init__(self, weights: Path = WEIGHTS, threads: int = 1, int8: bool = False) -> None:
        """``int8``: the matrix products quantized to 8-bit integers at load (hybrid.cache.onnx_encoder): a check
        takes about a third of float32's time, with the float32 model's verdicts but for 11 of 1,014 training pairs
        (docs/design.md)."""
        self.weights = weights
        self.threads = threads
        self.int8 = int8
        self.name = "cross-encoder" + ("-int8" if int8 else "")  # named after its base model once loaded
        self.ready = False
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="verify", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the awaiting coroutine
                    fut.set_exception(exc)

    def _submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut))
        return asyncio.wrap_future(fut)

    def load(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        if not self.weights.exists():
            raise FileNotFoundError(f"verifier weights missing: {self.weights} (scripts/train_verifier.py)")
        saved = np.load(self.weights)
        base = base_of(saved)
        self.name = f"{base.name.lower()}-cross-encoder" + ("-int8" if self.int8 else "")
        self.tokenizer, encoder = load_base(int(saved["layers"]), base)
        merge_update(encoder, saved)
        self.encoder = OnnxEncoder(encoder, self.threads, int8=self.int8, token_types=base.token_types)
        self.head_w = saved["head_w"].astype(np.float64)
        self.head_b = float(saved["head_b"])
        self.score_sync([("user: warm up", "user: warm up")])
        self.ready = True
        log.info("cache: semantic-hit verifier loaded (%s)", self.weights.name)

    async def start(self) -> None:
        await self._submit(self.load)

    def score_sync(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Probabilities, one per (new, cached) pair; 1.0 without the model for the same question (:func:`plain`,
        :func:`bare`)."""
        out = np.ones(len(pairs), dtype=np.float64)
        todo = [i for i, (a, b) in enumerate(pairs) if plain(a) != plain(b) and bare(a) != bare(b)]
        if todo:
            enc = encode_pairs(self.tokenizer, [pairs[i] for i in todo], "np")
            logits = self.encoder(enc) @ self.head_w + self.head_b
            out[todo] = 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
        return out

    async def scores(self, new: str, cached: list[str]) -> list[float]:
        """One probability per cached text, in one forward pass (with int8, a pair's score can move a little with
        the batch it is in: activations are quantized per batch)."""
        pairs = [(new, c) for c in cached]
        return [float(p) for p in await self._submit(lambda: self.score_sync(pairs))]

    async def close(self) -> None:
        self._jobs.put(None)


def base_of(saved: Any) -> BaseModel:
    """The base model a weights file was trained on (files from before the key are MiniLM's)."""
    name = str(saved["base"]) if "base" in saved else MINILM.name
    if name not in BASES:
        raise ValueError(f"verifier weights name an unknown base model {name!r}")
    return BASES[name]


def merge_update(encoder: Any, saved: Any) -> None:
    """W += scale * B @ A for every targeted linear layer: after this the model costs what its base costs."""
    import torch

    scale = float(saved["scale"])
    targets = base_of(saved).targets
    with torch.no_grad():
        for i, layer in enumerate(encoder.encoder.layer):
            for target in targets:
                linear = layer.get_submodule(target)
                a = torch.from_numpy(saved[f"{i}.{target}.A"].astype(np.float32))
                b = torch.from_numpy(saved[f"{i}.{target}.B"].astype(np.float32))
                linear.weight += scale * (b @ a)
