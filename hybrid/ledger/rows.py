"""One ledger row: a request, who sent it, where it went and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson


@dataclass(slots=True)
class LedgerRow:
    ts: float  # unix time the request arrived
    request_id: str
    key_id: str  # a keyed hash of the API key (never the key), or the client address without auth
    requested_model: str
    tier: str  # where the answer came from: a tier, "cache", or "none" when nothing answered
    backend: str
    served_model: str
    status: str  # "ok", "abandoned" (the client left), or the HTTP status of the error
    cache: str  # hit-exact | hit-semantic | miss | bypass | off
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0  # US dollars
    counterfactual_cost: float = 0.0  # the same tokens on the reference cloud model
    latency_s: float = 0.0
    ttft_s: float | None = None
    route_reason: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def values(self) -> tuple[Any, ...]:
        """The row in COLUMNS order, tags as JSON text (attribute reads: asdict's deep copy cost 10 us a row)."""
        return (
            self.ts, self.request_id, self.key_id, self.requested_model, self.tier, self.backend, self.served_model,
            self.status, self.cache, self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.cost,
            self.counterfactual_cost, self.latency_s, self.ttft_s, self.route_reason,
            orjson.dumps(self.tags).decode(),
        )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> LedgerRow:
        return cls(**orjson.loads(raw))


COLUMNS = tuple(f.name for f in fields(LedgerRow))
