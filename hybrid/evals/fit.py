"""``hybrid eval fit``: retrain the learned scorer on a team's own graded items.

An item is labelled "needs the capable tier" when the capable target's grade beats the cheap one's by at least
``margin`` (the cheap tier got it wrong and the capable one right); otherwise the cheap tier is enough, or
nothing helps. Those items join the shipped training prompts, each weighted ``team_weight``, and the model is
fitted as the shipped one is (penalty by cross-validation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hybrid.evals.workload import Workload
from hybrid.routing.learned import ScorerModel
from hybrid.routing.training import Example, embed_prompts, fit_model, shipped_prompts


def team_examples(doc: dict[str, Any], workload: Workload, cheap: str, capable: str, margin: float = 0.5,
                  team_weight: float = 2.0) -> list[Example]:
    grades: dict[tuple[str, str], float] = {}
    for r in doc["items"]:
        if r["score"] is not None:
            grades[(r["item"], r["target"])] = r["score"]
    out = []
    for item in workload.items:
        a, b = grades.get((item.id, cheap)), grades.get((item.id, capable))
        if a is None or b is None or not item.prompt_text:
            continue
        out.append(Example(int(b - a >= margin), "team", item.prompt_text, team_weight))
    return out


def fit_team_model(team: Sequence[Example], with_embedding: bool = True,
                   progress: Callable[[str], None] = lambda _: None) -> ScorerModel:
    if not team:
        raise ValueError("no item was graded on both targets: nothing to learn from")
    examples = shipped_prompts() + list(team)
    vectors = embed_prompts([e.text for e in examples]) if with_embedding else None
    model = fit_model(examples, vectors, progress)
    model.meta["team_examples"] = len(team)
    model.meta["team_hard"] = sum(e.label for e in team)
    return model
