"""Calibration: where to put ``routing.complexity_threshold``, from graded results of a cheap and a capable
target on the same items and the scorer's score of each item.

Sending the items scored at or over a threshold to the capable target and the rest to the cheap one gives, for
every threshold, a quality (weighted mean of the grades each item would get), a cost and a share sent to the
capable tier. The curve is that, over every cut between two distinct scores; the chosen threshold is the
cheapest one whose quality reaches ``target`` times the capable target's own quality (ties: the fewest items
sent up). The threshold is placed midway between the two scores the cut falls between, not on either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Paired:
    """One item graded on both targets."""

    item: str
    score: float  # the routing scorer's score
    weight: float
    cheap_quality: float
    capable_quality: float
    cheap_cost: float
    capable_cost: float


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    share_capable: float  # of the weight
    quality: float
    cost: float


@dataclass
class Calibration:
    cheap: str
    capable: str
    target: float  # the fraction of the capable target's quality to reach
    items: int
    cheap_quality: float
    capable_quality: float
    points: list[CurvePoint] = field(default_factory=list)
    chosen: CurvePoint | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Calibration:
        chosen = raw.get("chosen")
        return cls(raw["cheap"], raw["capable"], raw["target"], raw["items"], raw["cheap_quality"],
                   raw["capable_quality"], [CurvePoint(**p) for p in raw.get("points", [])],
                   CurvePoint(**chosen) if chosen else None)


def calibrate(rows: Sequence[Paired], cheap: str, capable: str, target: float = 0.95) -> Calibration:
    if not rows:
        raise ValueError(f"no item was graded on both {cheap} and {capable}")
    total_w = sum(r.weight for r in rows)
    ordered = sorted(rows, key=lambda r: r.score, reverse=True)
    # start with nothing sent up, then move items up one distinct score at a time (highest first)
    quality_sum = sum(r.weight * r.cheap_quality for r in rows)
    cost = sum(r.cheap_cost for r in rows)
    up_w = 0.0
    scores = sorted({r.score for r in rows}, reverse=True)
    top = scores[0]
    cheap_quality = quality_sum / total_w
    # "nothing sent up" is a threshold above every score: one the config can hold only when no score is 1.0
    points = [CurvePoint(round((top + 1.0) / 2, 6), 0.0, cheap_quality, cost)] if top < 1.0 else []
    i = 0
    for k, s in enumerate(scores):
        while i < len(ordered) and ordered[i].score == s:
            r = ordered[i]
            quality_sum += r.weight * (r.capable_quality - r.cheap_quality)
            cost += r.capable_cost - r.cheap_cost
            up_w += r.weight
            i += 1
        below = scores[k + 1] if k + 1 < len(scores) else None
        threshold = 0.0 if below is None else (s + below) / 2
        points.append(CurvePoint(round(threshold, 6), up_w / total_w, quality_sum / total_w, cost))
    capable_quality = points[-1].quality
    goal = target * capable_quality
    reaching = [p for p in points if p.quality >= goal - 1e-12]
    chosen = min(reaching, key=lambda p: (round(p.cost, 12), p.share_capable)) if reaching else None
    return Calibration(cheap, capable, target, len(rows), cheap_quality, capable_quality, points, chosen)


def pair_results(results: Sequence[Any], scores: dict[str, float], cheap: str, capable: str) -> list[Paired]:
    """Items graded without error on both targets (``results``: ItemResult-like objects or their dicts)."""
    by: dict[tuple[str, str], Any] = {}
    for r in results:
        d = r if isinstance(r, dict) else r.to_json()
        by[(d["item"], d["target"])] = d
    rows = []
    for item, score in scores.items():
        a, b = by.get((item, cheap)), by.get((item, capable))
        if a is None or b is None or a["score"] is None or b["score"] is None:
            continue
        rows.append(Paired(item, score, a["weight"], a["score"], b["score"], a["cost"], b["cost"]))
    return rows


_ROUTING = re.compile(r"^\s*\[routing\]\s*(#.*)?$")
_SECTION = re.compile(r"^\s*\[")
_KEY = re.compile(r"^(\s*)complexity_threshold\s*=.*$")


def write_threshold(config: str | Path, threshold: float) -> None:
    """Set ``routing.complexity_threshold`` in a TOML config, keeping every other line (and comment) as it was;
    the result is read back with the router's own loader before it replaces the file."""
    from hybrid.config import load_config

    path = Path(config)
    lines = path.read_text("utf-8").splitlines()
    value = f"complexity_threshold = {threshold:.4f}  # hybrid eval calibrate"
    start = next((i for i, line in enumerate(lines) if _ROUTING.match(line)), None)
    if start is None:
        lines += ["", "[routing]", value]
    else:
        end = next((i for i in range(start + 1, len(lines)) if _SECTION.match(lines[i])), len(lines))
        for i in range(start + 1, end):
            m = _KEY.match(lines[i])
            if m:
                lines[i] = m.group(1) + value
                break
        else:
            lines.insert(start + 1, value)
    text = "\n".join(lines) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, "utf-8")
    try:
        cfg = load_config(str(tmp))
        if abs(cfg.routing.complexity_threshold - round(threshold, 4)) > 1e-9:
            raise ValueError("the threshold did not land in [routing]")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
