"""What a request cost, and what it would have cost on the reference cloud model.

- A cloud backend: its model's price from ``models/prices.toml`` (dated; cached-input prices where providers
  bill them), or the backend's own ``price_*_per_mtok`` overrides.
- A local backend: its ``cost_per_hour`` (the machine's cost; 0 by default) spread over the completion tokens it
  actually produces per second, measured by the router as answers finish.
- A cache hit: nothing; its counterfactual is what the answer it replays would cost on the reference model.

The counterfactual of every request is the same tokens priced at ``[costs] reference_model``: savings are the
difference of the two, summed over the ledger, never an estimate of what routing "probably" saved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hybrid.config import BackendConfig, CostsConfig
from models.prices import Price, load_prices

log = logging.getLogger("hybrid.costs")


@dataclass
class _Throughput:
    """Completion tokens per second of generation, as a moving average over finished answers."""

    tokens_per_s: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        self.tokens_per_s = rate if self.tokens_per_s == 0 else 0.8 * self.tokens_per_s + 0.2 * rate


class Costing:
    def __init__(self, cfg: CostsConfig, backends: list[BackendConfig]) -> None:
        table = load_prices()
        self.reference_model = cfg.reference_model
        self.reference = table.get(cfg.reference_model, Price(0.0, 0.0))
        self._prices: dict[tuple[str, str], Price | None] = {}
        self._hourly: dict[str, float] = {}
        self._throughput: dict[str, _Throughput] = {}
        for b in backends:
            if b.kind in ("llamacpp", "vllm"):  # on this box: the machine is what it costs
                self._hourly[b.name] = b.cost_per_hour
                self._throughput[b.name] = _Throughput()
                continue
            for model in b.models or [b.model]:
                if b.price_input_per_mtok or b.price_output_per_mtok:
                    cached = b.price_cached_input_per_mtok if b.price_cached_input_per_mtok >= 0 else None
                    self._prices[(b.name, model)] = Price(b.price_input_per_mtok, b.price_output_per_mtok, cached)
                elif model in table:
                    self._prices[(b.name, model)] = table[model]
                else:
                    self._prices[(b.name, model)] = None
                    log.warning("costs: no price for %s on backend %s (add price_*_per_mtok to the backend): "
                                "its requests are costed at 0", model, b.name)

    def counterfactual(self, prompt: int, completion: int) -> float:
        return self.reference.cost(prompt, completion)

    def cost(self, backend: str, model: str, prompt: int, completion: int, cached: int = 0,
             generation_s: float = 0.0) -> float:
        """The cost of one answer; ``generation_s`` (first to last token) feeds a local backend's throughput."""
        if backend in self._hourly:
            meter = self._throughput[backend]
            meter.add(completion, generation_s)
            hourly = self._hourly[backend]
            if not hourly or not meter.tokens_per_s:
                return 0.0
            return completion * hourly / 3600.0 / meter.tokens_per_s
        price = self._prices.get((backend, model))
        return price.cost(prompt, completion, cached) if price is not None else 0.0
