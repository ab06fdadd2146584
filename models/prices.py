"""Typed loader for ``prices.toml``."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib.resources import files


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens. ``cached_input_per_mtok`` is what a provider bills for prompt tokens it
    served from its own prompt cache (``None``: it bills them as input)."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(cached_tokens, prompt_tokens) if self.cached_input_per_mtok is not None else 0
        return (
            (prompt_tokens - cached) * self.input_per_mtok
            + cached * (self.cached_input_per_mtok or 0.0)
            + completion_tokens * self.output_per_mtok
        ) / 1e6


def _raw() -> dict[str, object]:
    return tomllib.loads(files("models").joinpath("prices.toml").read_text(encoding="utf-8"))


@functools.cache
def load_prices() -> dict[str, Price]:
    raw = _raw()["prices"]
    assert isinstance(raw, dict)
    return {name: Price(p["input"], p["output"], p.get("cached_input")) for name, p in raw.items()}


@functools.cache
def prices_date() -> str:
    """When the table's prices were read off the providers' pages."""
    return str(_raw().get("date", "unknown"))
