"""Typed loader for ``prices.toml``."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib.resources import files


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@functools.cache
def load_prices() -> dict[str, Price]:
    raw = tomllib.loads(files("models").joinpath("prices.toml").read_text(encoding="utf-8"))
    return {name: Price(p["input"], p["output"]) for name, p in raw["prices"].items()}
