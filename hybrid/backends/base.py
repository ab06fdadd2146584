"""The backend interface that the gateway dispatches to."""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from hybrid.config import BackendConfig
from hybrid.protocol import Chunk, InferenceRequest


class BackendState(str, enum.Enum):
    LOADING = "loading"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class BackendLoad:
    """What overflow routing reads: how busy a backend is right now."""

    in_flight: int
    waiting: int
    capacity: int  # requests it serves at once; 0 = unbounded
    service_time_s: float  # recent mean time per request

    def estimated_wait_s(self) -> float:
        """Expected queueing delay for one more request (queue depth x recent service time)."""
        if self.capacity <= 0 or self.in_flight + self.waiting < self.capacity:
            return 0.0
        ahead = self.in_flight + self.waiting - self.capacity + 1
        return ahead * self.service_time_s / self.capacity


class Backend(abc.ABC):
    """One configured backend: a local engine or an HTTP upstream."""

    #: True: requests over ``load().capacity`` are turned away (HTTP APIs with ``max_concurrency``);
    #: False: they queue (a local engine's pool), and overflow routing reads the queue.
    hard_concurrency_limit = False

    def __init__(self, cfg: BackendConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.tier = cfg.tier
        self.kind = cfg.kind
        self.state = BackendState.LOADING
        self.state_detail = ""
        #: called when the model ids change after start (a vLLM server reports its own); the gateway re-indexes
        self.on_models_changed: Callable[[], None] | None = None

    @property
    @abc.abstractmethod
    def models(self) -> list[str]:
        """Model ids this backend answers to."""

    @property
    def context(self) -> int:
        """Context window in tokens; 0 when unknown."""
        return self.cfg.context

    async def start(self) -> None:
        self.state = BackendState.UP

    async def stop(self) -> None:
        return None

    def check(self, req: InferenceRequest) -> None:
        """Raise :class:`~hybrid.errors.InvalidRequestError` for what this backend cannot do."""
        return None

    async def count_prompt_tokens(self, req: InferenceRequest) -> int | None:
        """Prompt tokens with this backend's own tokenizer, or ``None`` when it has none."""
        return None

    def count_text_tokens(self, text: str) -> int | None:
        """Tokens of a plain text with this backend's tokenizer, or ``None`` when it has none."""
        return None

    def load(self) -> BackendLoad:
        return BackendLoad(in_flight=0, waiting=0, capacity=0, service_time_s=0.0)

    @abc.abstractmethod
    def stream(self, req: InferenceRequest, model: str) -> AsyncGenerator[Chunk, None]:
        """Answer ``req`` with ``model`` as a stream of chunks, ending with a usage chunk (an async generator:
        the gateway closes it when the answer is over, whoever ends it)."""
