"""Eval results: per target and per tag, quality with an interval, cost, latency and errors; and the JSON
document a run is saved as (with the git revision, config hash and model ids, so two runs can be compared)."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from hybrid.evals.runner import ItemResult
from hybrid.evals.stats import bootstrap_ci, percentile, weighted_mean

FORMAT = 1


def stats(rows: Sequence[ItemResult]) -> dict[str, Any]:
    graded = [r for r in rows if r.score is not None]
    scores = [r.score for r in graded if r.score is not None]
    weights = [r.weight for r in graded]
    ok = [r for r in rows if r.error is None or r.error.startswith("grade:")]  # the request itself worked
    latency = [r.latency_s for r in ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    lo, hi = bootstrap_ci(scores, weights)
    tiers: dict[str, int] = {}
    for r in ok:
        tiers[r.tier or "?"] = tiers.get(r.tier or "?", 0) + 1
    return {
        "items": len(rows),
        "graded": len(graded),
        "errors": len(rows) - len(graded),
        "quality": weighted_mean(scores, weights) if scores else None,
        "ci95": [lo, hi] if scores else None,
        "cost": sum(r.cost for r in rows),
        "counterfactual": sum(r.counterfactual for r in rows),
        "judge_cost": sum(r.judge_cost for r in rows),
        "cost_per_item": sum(r.cost for r in rows) / max(1, len(ok)),
        "latency_p50": percentile(latency, 50), "latency_p95": percentile(latency, 95),
        "latency_p99": percentile(latency, 99),
        "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95), "ttft_p99": percentile(ttft, 99),
        "prompt_tokens": sum(r.prompt_tokens for r in rows), "completion_tokens": sum(r.completion_tokens for r in rows),
        "tiers": tiers,
    }


def summarise(results: Sequence[ItemResult], targets: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in targets:
        rows = [r for r in results if r.target == t]
        tags = sorted({tag for r in rows for tag in r.tags})
        out[t] = {"overall": stats(rows), "tags": {tag: stats([r for r in rows if tag in r.tags]) for tag in tags}}
    return out


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The revision of hybrid's own source tree (a checkout), ``+dirty`` with uncommitted changes; None when
    installed from a package."""
    cwd = cwd or Path(__file__).resolve().parent.parent.parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    rev = done.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                           text=True, timeout=5).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybrid")
    except PackageNotFoundError:
        return "unknown"


def config_hash(config_path: str | None) -> str:
    if not config_path:
        return "embedded-default"
    return hashlib.sha256(Path(config_path).read_bytes()).hexdigest()


def document(*, workload_path: str, workload_sha256: str, targets: Sequence[str], judge: str | None,
             router: str, config_path: str | None, scorer: str, results: Sequence[ItemResult],
             scores: dict[str, float], calibration: dict[str, Any] | None, elapsed_s: float) -> dict[str, Any]:
    models: dict[str, list[str]] = {}
    for r in results:
        if r.model:
            seen = models.setdefault(r.target, [])
            if r.model not in seen:
                seen.append(r.model)
    return {
        "format": FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "hybrid_version": _version(),
        "workload": {"path": workload_path, "sha256": workload_sha256, "items": len(scores)},
        "router": router,
        "config": {"path": config_path or "<embedded default>", "sha256": config_hash(config_path)},
        "scorer": scorer,
        "targets": list(targets),
        "judge": judge,
        "model_ids": models,
        "elapsed_s": round(elapsed_s, 3),
        "summary": summarise(results, targets),
        "calibration": calibration,
        "scores": scores,
        "items": [r.to_json() for r in results],
    }


def load_document(path: str | Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "items" not in doc:
        raise ValueError(f"{path}: not a hybrid eval result (format {FORMAT})")
    return doc


def item_results(doc: dict[str, Any]) -> list[ItemResult]:
    return [ItemResult(**row) for row in doc["items"]]


def save(doc: dict[str, Any], path: str | Path) -> None:
    Path(path).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def _fmt(v: float | None, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}{unit}"


def text_summary(doc: dict[str, Any]) -> str:
    """The terminal summary: one row per target, then the calibration's choice."""
    lines = [f"workload {doc['workload']['path']} ({doc['workload']['items']} items), router {doc['router']}, "
             f"revision {doc.get('git_revision') or '?'}"]
    head = f"{'target':<16} {'quality':>8} {'95% CI':>15} {'errors':>6} {'cost $':>10} {'cf. $':>10} " \
           f"{'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'ttft50':>7}"
    lines += [head, "-" * len(head)]
    for target in doc["targets"]:
        s = doc["summary"][target]["overall"]
        ci = s["ci95"]
        lines.append(f"{target:<16} {_fmt(s['quality']):>8} {('[' + _fmt(ci[0]) + ', ' + _fmt(ci[1]) + ']') if ci else '-':>15} "
                     f"{s['errors']:>6} {s['cost']:>10.5f} {s['counterfactual']:>10.5f} {_fmt(s['latency_p50'], '', 2):>7} "
                     f"{_fmt(s['latency_p95'], '', 2):>7} {_fmt(s['latency_p99'], '', 2):>7} {_fmt(s['ttft_p50'], '', 2):>7}")
    cal = doc.get("calibration")
    if cal:
        chosen = cal.get("chosen")
        lines.append("")
        if chosen:
            lines.append(f"calibration ({cal['cheap']} vs {cal['capable']}, {cal['items']} items): threshold "
                         f"{chosen['threshold']:.4f} reaches {chosen['quality']:.3f} (target {cal['target']:.0%} of "
                         f"{cal['capable_quality']:.3f}) sending {chosen['share_capable']:.0%} to {cal['capable']} "
                         f"at ${chosen['cost']:.5f}")
        else:
            lines.append(f"calibration ({cal['cheap']} vs {cal['capable']}): no threshold reaches the target")
    return "\n".join(lines)
