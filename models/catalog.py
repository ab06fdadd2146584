"""Typed loader for ``catalog.toml``."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib.resources import files

# GGUF quantisations: effective bits per weight (llama.cpp's reported sizes, embeddings included)
GGUF_BITS_PER_WEIGHT: dict[str, float] = {
    "Q4_0": 4.55, "Q4_K_M": 4.89, "Q5_K_M": 5.70, "Q6_K": 6.56, "Q8_0": 8.50, "F16": 16.0,
}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    hf_id: str
    params_b: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    licence: str
    gguf_repo: str
    gguf_pattern: str
    active_params_b: float = 0.0
    weights_gb: float = 0.0  # published checkpoint size where weights are not plain 16-bit
    sliding_window: int = 0
    sliding_pattern: int = 0  # every Nth layer is global, the others use the sliding window

    @property
    def sliding_layers(self) -> int:
        """Layers that attend only to the last ``sliding_window`` tokens."""
        if not self.sliding_window or not self.sliding_pattern:
            return 0
        return self.layers - self.layers // self.sliding_pattern

    @property
    def full_layers(self) -> int:
        return self.layers - self.sliding_layers

    def kv_bytes_per_token_per_layer(self, kv_dtype_bytes: float) -> float:
        """K and V for one token in one layer: 2 x KV heads x head dim x bytes."""
        return 2 * self.kv_heads * self.head_dim * kv_dtype_bytes

    def gguf_file(self, quant: str) -> str:
        return self.gguf_pattern.format(quant=quant.lower(), QUANT=quant.upper())

    def gguf_bytes(self, quant: str) -> float:
        return self.params_b * 1e9 * GGUF_BITS_PER_WEIGHT[quant.upper()] / 8


class Catalog:
    def __init__(self, models: list[ModelSpec]) -> None:
        self.models = models
        self._by_id = {m.id: m for m in models}

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._by_id[model_id]
        except KeyError:
            raise KeyError(f"unknown model {model_id!r}; the catalog has: {', '.join(self._by_id)}") from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_id

    def __iter__(self):
        return iter(self.models)


@functools.cache
def load_catalog() -> Catalog:
    raw = tomllib.loads(files("models").joinpath("catalog.toml").read_text(encoding="utf-8"))
    return Catalog([ModelSpec(**m) for m in raw["models"]])
