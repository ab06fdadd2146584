"""Resolving what a request's ``model`` names: a tier alias, a concrete model id, or ``auto``."""

from __future__ import annotations

from hybrid.backends.base import Backend
from hybrid.errors import ModelNotFoundError
from hybrid.routing.decision import Target

AUTO = "auto"


class ModelResolver:
    """Maps tier names and model ids onto backends, in config order."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self.by_tier: dict[str, list[Backend]] = {}
        self.by_model: dict[str, list[Backend]] = {}
        for b in backends:
            self.by_tier.setdefault(b.tier, []).append(b)

    def refresh_models(self) -> None:
        """Re-read model ids (a backend may learn them at start, e.g. from a vLLM server)."""
        self.by_model = {}
        for b in self.backends:
            for m in b.models:
                self.by_model.setdefault(m, []).append(b)

    @property
    def tiers(self) -> list[str]:
        return list(self.by_tier)

    def is_tier(self, name: str) -> bool:
        return name in self.by_tier

    def tier_targets(self, tier: str) -> list[Target]:
        return [Target(b, b.models[0]) for b in self.by_tier.get(tier, []) if b.models]

    def model_targets(self, model: str) -> list[Target]:
        return [Target(b, model) for b in self.by_model.get(model, [])]

    def explicit(self, name: str) -> list[Target]:
        """Targets for a tier alias or a model id; raises 404 ``model_not_found`` for anything else."""
        if name in self.by_tier:
            return self.tier_targets(name)
        if name in self.by_model:
            return self.model_targets(name)
        if name == "cloud":
            raise ModelNotFoundError(
                "The model 'cloud' does not exist: no cloud tier is configured. Set OPENAI_API_KEY (or GROQ_API_KEY, "
                "MISTRAL_API_KEY, ...) before starting the embedded default, or add a [[backends]] entry with "
                'tier = "cloud" to the config.',
                param="model",
            )
        raise ModelNotFoundError(
            f"The model '{name}' does not exist. Available: {', '.join(self.available())}.", param="model"
        )

    def available(self) -> list[str]:
        return [AUTO, *self.by_tier, *(m for m in self.by_model if m not in self.by_tier)]
