"""``hybrid eval compare OLD NEW``: what changed between two runs, per target; a quality drop whose interval
(paired over the items both runs graded) lies wholly below zero is a regression."""

from __future__ import annotations

from typing import Any

from hybrid.evals.stats import bootstrap_ci, weighted_mean


def paired_difference(old: dict[str, float], new: dict[str, float],
                      weights: dict[str, float]) -> tuple[float, float, float, int]:
    """Mean of new - old over shared items, with a 95% bootstrap interval; and how many items were shared."""
    shared = sorted(set(old) & set(new))
    if not shared:
        return float("nan"), float("nan"), float("nan"), 0
    d = [new[k] - old[k] for k in shared]
    w = [weights.get(k, 1.0) for k in shared]
    lo, hi = bootstrap_ci(d, w)
    return weighted_mean(d, w), lo, hi, len(shared)


def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Rows per target present in both runs, and whether any quality regressed beyond its interval."""
    def graded(doc: dict[str, Any], target: str) -> tuple[dict[str, float], dict[str, float]]:
        scores, weights = {}, {}
        for r in doc["items"]:
            if r["target"] == target and r["score"] is not None:
                scores[r["item"]] = r["score"]
                weights[r["item"]] = r["weight"]
        return scores, weights

    rows = []
    regressed = False
    for target in [t for t in new["targets"] if t in old["targets"]]:
        o, ow = graded(old, target)
        n, _ = graded(new, target)
        mean, lo, hi, shared = paired_difference(o, n, ow)
        so, sn = old["summary"][target]["overall"], new["summary"][target]["overall"]
        worse = shared > 0 and hi < 0
        regressed |= worse
        rows.append({
            "target": target, "shared": shared, "quality_old": so["quality"], "quality_new": sn["quality"],
            "difference": mean, "ci95": [lo, hi], "regression": worse, "improvement": shared > 0 and lo > 0,
            "cost_old": so["cost"], "cost_new": sn["cost"], "p50_old": so["latency_p50"], "p50_new": sn["latency_p50"],
            "errors_old": so["errors"], "errors_new": sn["errors"],
            "models_old": old.get("model_ids", {}).get(target, []), "models_new": new.get("model_ids", {}).get(target, []),
        })
    return rows, regressed


def render(rows: list[dict[str, Any]], old_name: str, new_name: str) -> str:
    def f(v: float | None, d: int = 3) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    lines = [f"{old_name} -> {new_name}",
             f"{'target':<16} {'quality':>15} {'diff [95% CI]':>26} {'cost $':>21} {'p50 s':>13} {'errors':>9}  verdict"]
    for r in rows:
        verdict = "REGRESSION" if r["regression"] else "better" if r["improvement"] else "no clear change"
        if r["models_old"] != r["models_new"]:
            verdict += f" (models {','.join(r['models_old'])} -> {','.join(r['models_new'])})"
        lines.append(
            f"{r['target']:<16} {f(r['quality_old']) + ' -> ' + f(r['quality_new']):>15} "
            f"{f(r['difference']):>7} [{f(r['ci95'][0])}, {f(r['ci95'][1])}] n={r['shared']:<4} "
            f"{f(r['cost_old'], 4) + ' -> ' + f(r['cost_new'], 4):>21} {f(r['p50_old'], 2) + ' -> ' + f(r['p50_new'], 2):>13} "
            f"{str(r['errors_old']) + ' -> ' + str(r['errors_new']):>9}  {verdict}")
    return "\n".join(lines)
