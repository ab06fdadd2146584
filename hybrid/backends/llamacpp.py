"""The in-process llama.cpp backend (llama-cpp-python) for the CPU tier.

One ``Llama`` context serves one request at a time, so requests queue in front of a pool of contexts
(``pool_size``). Generation runs in a worker thread per context and hands each piece of text to the event loop
as it is produced; the loop never blocks. When the consumer goes away (client disconnect, cancellation) a
stopping criterion ends generation at the next token and the context goes back to the pool.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hybrid.backends.base import Backend, BackendLoad, BackendState
from hybrid.backends.chat_templates import ChatFormatter, pick_formatter
from hybrid.backends.gguf import resolve_gguf
from hybrid.backends.grammar import WORKER_STACK_BYTES, grammar_for
from hybrid.config import BackendConfig
from hybrid.errors import ContextLengthExceededError, InvalidRequestError, ServiceUnavailableError
from hybrid.protocol import Chunk, InferenceRequest, content_text, make_chunk, make_usage, make_usage_chunk

log = logging.getLogger("hybrid.llamacpp")

DEFAULT_CONTEXT = 8192
_COUNT_INLINE_CHARS = 2_048  # longer prompts are tokenized off the event loop (about 1 ms of tokenizer per 2 KB)
_END = object()
_SENTINEL = "\x1ehybrid-" + os.urandom(6).hex() + "-"  # stands for a message's text while the template renders
_SENTINEL_RE = re.compile(re.escape(_SENTINEL) + r"(\d+)\x1e")


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    except Exception:  # pragma: no cover
        import os

        return os.cpu_count() or 1


class LlamaCppBackend(Backend):
    def __init__(self, cfg: BackendConfig) -> None:
        super().__init__(cfg)
        self.model_path: Path | None = None
        self.model_id = Path(cfg.model).stem if cfg.model.endswith(".gguf") else cfg.model
        self.chat_format = ""
        self._formatter: ChatFormatter | None = None
        self._n_ctx = 0
        self._vocab: Any = None  # a vocab-only Llama: tokenizes on the event loop without touching a context
        self._slots: list[_Slot] = []
        self._pool: asyncio.Queue[_Slot] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._waiting = 0
        self._service_s = 1.0
        self._warned_template = False
        self.threads = cfg.threads or max(1, physical_cores() // cfg.pool_size)

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def models(self) -> list[str]:
        return [self.model_id]

    @property
    def context(self) -> int:
        return self._n_ctx or self.cfg.context

    async def start(self) -> None:
        self.state = BackendState.LOADING
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            self.state = BackendState.DOWN
            self.state_detail = str(exc)
            raise
        self._pool = asyncio.Queue()
        for slot in self._slots:
            self._pool.put_nowait(slot)
        self._executor = _big_stack_executor(len(self._slots), f"llama-{self.name}")
        self.state = BackendState.UP
        log.info(
            "backend %s: %s loaded (%s, context %d, %d context(s) x %d thread(s), chat format %s)",
            self.name, self.model_id, self.model_path, self._n_ctx, len(self._slots), self.threads, self.chat_format,
        )

    def _load(self) -> None:
        from llama_cpp import Llama

        self.model_path = resolve_gguf(self.cfg.model)
        self._vocab = Llama(model_path=str(self.model_path), vocab_only=True, verbose=False)
        meta = self._vocab.metadata
        n_ctx_train = int(meta.get(f"{meta.get('general.architecture', '')}.context_length", 0)) or DEFAULT_CONTEXT
        self._n_ctx = self.cfg.context or min(n_ctx_train, DEFAULT_CONTEXT)
        eos = self._vocab.token_eos()
        bos = self._vocab.token_bos()
        self.chat_format, self._formatter = pick_formatter(
            self.cfg.chat_format,
            self._vocab.metadata,
            eos_token=self._vocab._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self._vocab._model.token_get_text(bos) if bos != -1 else "",
        )
        for _ in range(self.cfg.pool_size):
            ctx = Llama(
                model_path=str(self.model_path),
                n_ctx=self._n_ctx,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_batch=min(self.cfg.batch_size, self._n_ctx),
                verbose=False,
            )
            self._slots.append(_Slot(ctx))

    async def stop(self) -> None:
        self.state = BackendState.DOWN
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for slot in self._slots:
            slot.ctx.close()
        self._slots.clear()
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None

    def load(self) -> BackendLoad:
        return BackendLoad(
            in_flight=self._in_flight,
            waiting=self._waiting,
            capacity=len(self._slots) or self.cfg.pool_size,
            service_time_s=self._service_s,
        )

    # ------------------------------------------------------------------------------------------ requests

    def check(self, req: InferenceRequest) -> None:
        if req.n != 1:
            raise InvalidRequestError(
                f"'n' must be 1 for backend '{self.name}' (llama.cpp generates one choice per request).", param="n"
            )
        if req.tools:
            raise InvalidRequestError(
                f"Backend '{self.name}' ({self.model_id}) does not support tools; route the request to a tier that does.",
                param="tools",
            )
        if req.logprobs:
            raise InvalidRequestError(f"Backend '{self.name}' does not return logprobs.", param="logprobs")
        if req.response_format and "llamacpp:grammar" not in req.memo:
            # built (and bounded) here, so that auto routing can still send a schema it cannot take elsewhere
            req.memo["llamacpp:grammar"] = grammar_for(req.response_format)

    def _segments(self, req: InferenceRequest) -> tuple[list[tuple[str, bool]], list[str]]:
        """The formatted prompt as (text, is template) pieces, and the template's stop strings.

        Message text is tokenized as plain text, never as special tokens: a user who writes ``<end_of_turn>`` or
        ``<|im_start|>system`` gets those characters, not a forged turn. Each message's content is replaced by a
        sentinel, the template renders around the sentinels, and the real texts go back in their places. A
        legacy completion's prompt is the client's own raw prompt (template markers included, on purpose)."""
        if req.kind == "completion":
            return [(req.prompt, True)], []
        assert self._formatter is not None
        texts = [content_text(m.get("content")) for m in req.messages]
        marked = [
            dict(m, content=f"{_SENTINEL}{i}\x1e") if isinstance(m.get("content"), (str, list)) else m
            for i, m in enumerate(req.messages)
        ]
        fp = self._formatter(marked)
        pieces = _SENTINEL_RE.split(fp.prompt)
        segments: list[tuple[str, bool]] = []
        placed = 0
        for j, piece in enumerate(pieces):
            if j % 2 == 0:
                if piece:
                    segments.append((piece, True))
            else:
                placed += 1
                segments.append((texts[int(piece)], False))
        if placed < sum(1 for m in req.messages if isinstance(m.get("content"), (str, list))):
            # the template rewrote message text (rare): render the real messages, and warn once
            if not self._warned_template:
                self._warned_template = True
                log.warning("backend %s: its chat template rewrites message text; special-token text in messages "
                            "cannot be kept apart from the template's", self.name)
            fp = self._formatter(req.messages)
            return [(fp.prompt, True)], fp.stop
        return segments, fp.stop

    def _tokenize(self, segments: list[tuple[str, bool]]) -> list[int]:
        # BOS (if the model wants one) once, at the start; special tokens parsed in the template's text only
        tokens: list[int] = []
        for i, (text, template) in enumerate(segments):
            if text:
                tokens += self._vocab.tokenize(text.encode("utf-8"), add_bos=not tokens and i == 0, special=template)
        if not tokens:
            tokens = self._vocab.tokenize(b"", add_bos=True, special=True)
        return tokens

    async def _prompt_tokens(self, req: InferenceRequest) -> tuple[list[int], list[str]]:
        """The request's prompt as tokens, and the template's stop strings: formatted and tokenized once per
        request (the size rule counts them, generation starts from them); long prompts off the event loop."""
        key = f"llamacpp:{self.model_path}:{self.chat_format}"
        memo = req.memo.get(key)
        if memo is None:
            segments, stop = self._segments(req)
            if sum(len(t) for t, _ in segments) > _COUNT_INLINE_CHARS:
                tokens = await asyncio.to_thread(self._tokenize, segments)
            else:
                tokens = self._tokenize(segments)
            memo = req.memo[key] = (tokens, stop)
        return memo

    async def count_prompt_tokens(self, req: InferenceRequest) -> int | None:
        if self._vocab is None:
            return None
        return len((await self._prompt_tokens(req))[0])

    def count_text_tokens(self, text: str) -> int | None:
        if self._vocab is None:
            return None
        return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def stream(self, req: InferenceRequest, model: str) -> AsyncGenerator[Chunk, None]:
        if self.state is not BackendState.UP or self._pool is None or self._executor is None:
            raise ServiceUnavailableError(f"Backend '{self.name}' is {self.state.value}.")
        self.check(req)
        prompt, template_stop = await self._prompt_tokens(req)
        n_prompt = len(prompt)
        if n_prompt + (req.max_tokens or 1) > self._n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self._n_ctx} tokens. However, you requested "
                f"{n_prompt + (req.max_tokens or 0)} tokens ({n_prompt} in the messages, {req.max_tokens or 0} in "
                "the completion). Please reduce the length of the messages or completion.",
                param="messages" if req.kind == "chat" else "prompt",
            )
        grammar = req.memo.get("llamacpp:grammar")
        kwargs: dict[str, Any] = {
            "max_tokens": req.max_tokens or (self._n_ctx - n_prompt),
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "stop": template_stop + req.stop,
            "seed": req.seed,
            "presence_penalty": req.presence_penalty or 0.0,
            "frequency_penalty": req.frequency_penalty or 0.0,
            "grammar": grammar,
        }
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        self._waiting += 1
        try:
            slot = await self._pool.get()
        finally:
            self._waiting -= 1
        self._in_flight += 1
        started = time.monotonic()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def release(_: Any) -> None:
            self._in_flight -= 1
            self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - started)
            assert self._pool is not None
            self._pool.put_nowait(slot)

        try:
            fut = loop.run_in_executor(self._executor, slot.run, prompt, kwargs, emit, cancel)
        except RuntimeError:  # executor shut down under us
            release(None)
            raise ServiceUnavailableError(f"Backend '{self.name}' is stopping.") from None
        fut.add_done_callback(release)

        created = int(time.time())
        first = True
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                kind, value, finish = item
                if kind == "usage":
                    yield make_usage_chunk("", model, make_usage(n_prompt, value), created=created)
                    continue
                yield make_chunk(
                    "", model, content=value, role="assistant" if first else None, finish_reason=finish, created=created
                )
                first = False
        finally:
            cancel.set()


def _big_stack_executor(workers: int, name: str) -> ThreadPoolExecutor:
    """Worker threads with a large stack (libllama's grammar parser recurses once per nesting level), started
    now so that no other thread inherits the size."""
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    before = threading.stack_size(WORKER_STACK_BYTES)
    try:
        started = threading.Barrier(workers + 1)
        for _ in range(workers):
            executor.submit(started.wait)
        started.wait()
    finally:
        threading.stack_size(before)
    return executor


class _Slot:
    """One ``Llama`` context and the per-run state its worker thread reads.

    ``Llama.generate`` is wrapped on this instance so that the router counts exactly the tokens that
    ``create_completion`` consumes (its own non-streaming ``completion_tokens``; end-of-generation tokens are not
    counted) and stops pulling tokens as soon as the consumer has gone away.
    """

    def __init__(self, ctx: Any) -> None:
        import llama_cpp

        self.ctx = ctx
        self.completion_tokens = 0
        self.cancel = threading.Event()
        original = ctx.generate
        vocab = ctx._model.vocab

        def generate(*args: Any, **kwargs: Any) -> Any:
            for token in original(*args, **kwargs):
                if self.cancel.is_set():
                    return
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    self.completion_tokens += 1
                yield token

        ctx.generate = generate

    def run(self, prompt: list[int], kwargs: dict[str, Any], emit: Any, cancel: threading.Event) -> None:
        """Worker thread: run one completion, handing text pieces to the loop. Never raises."""
        self.cancel = cancel
        self.completion_tokens = 0
        try:
            stream = self.ctx.create_completion(prompt, stream=True, **kwargs)
            try:
                for part in stream:
                    choice = part["choices"][0]
                    emit(("text", choice["text"], choice["finish_reason"]))
                    if cancel.is_set():
                        break
            finally:
                stream.close()
            emit(("usage", self.completion_tokens, None))
        except Exception as exc:  # surfaced to the consumer, which raises it
            log.exception("generation failed")
            emit(exc)
        finally:
            emit(_END)
            # A completion leaves about 3 MB of native buffers behind garbage that only a full collection finds,
            # and a local request allocates too few objects to reach the server's raised GC threshold: without
            # this, 300 small requests grew the process from 413 to 1,323 MB (flat at 428 MB with it). After
            # gc.freeze the collected heap is small: 0.19 ms p50, 0.25 ms max (docs/design.md).
            gc.collect()
