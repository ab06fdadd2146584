"""The eval harness's parts on their own: graders on right, wrong and malformed answers; workload checks;
calibration on synthetic results with a known optimum; writing the threshold; comparing runs."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path

import pytest

from hybrid.config import load_config
from hybrid.evals import graders
from hybrid.evals.calibrate import Paired, calibrate, write_threshold
from hybrid.evals.compare import compare
from hybrid.evals.graders import GradeError, grade
from hybrid.evals.workload import WorkloadError, load_workload, parse_item

REPO = Path(__file__).resolve().parent.parent


def _item(grader: object, reference: object = None, prompt: str = "q?"):  # type: ignore[no-untyped-def]
    return parse_item({"id": "x", "prompt": prompt, "grader": grader, "reference": reference}, "test")


def _grade(grader: object, reference: object, answer: str, judge=None) -> float:  # type: ignore[no-untyped-def]
    return asyncio.run(grade(_item(grader, reference), answer, judge))


# ------------------------------------------------------------------------------------------------ graders


def test_exact_folds_case_space_and_trailing_punctuation() -> None:
    assert _grade("exact", "Positive", "  positive.\n") == 1.0
    assert _grade("exact", ["spam", "junk"], "Junk") == 1.0
    assert _grade("exact", "positive", "It is positive") == 0.0
    assert _grade("exact", "positive", "") == 0.0


def test_contains_needs_every_reference() -> None:
    assert _grade("contains", "Canberra", "The capital is CANBERRA, not Sydney.") == 1.0
    assert _grade("contains", ["Jane", "Austen"], "Jane  Austen wrote it") == 1.0
    assert _grade("contains", ["Jane", "Austen"], "Austen wrote it") == 0.0


def test_regex_searches_case_insensitively() -> None:
    assert _grade({"type": "regex", "pattern": r"git\s+checkout\s+-b"}, None, "Use `GIT checkout -b name`") == 1.0
    assert _grade({"type": "regex", "pattern": r"O\(log n\)"}, None, "O(n)") == 0.0


@pytest.mark.parametrize(("answer", "want"), [
    ("391", 1.0), ("17 * 23 = 391", 1.0), ("The answer is: 391.", 1.0), ("It's 1,250.00 in total", 0.0),
    ("391.004", 1.0), ("390", 0.0), ("I don't know", 0.0), ("", 0.0), ("Answer: 391, because 17 * 20 = 340", 1.0),
])
def test_numeric_reads_the_final_number(answer: str, want: float) -> None:
    assert _grade({"type": "numeric", "tolerance": 0.01}, "391", answer) == want


def test_numeric_relative_tolerance() -> None:
    assert _grade({"type": "numeric", "tolerance": 0.05, "relative": True}, "1000", "about 1040") == 1.0
    assert _grade({"type": "numeric", "tolerance": 0.05, "relative": True}, "1000", "about 1060") == 0.0


SCHEMA = {"type": "object", "required": ["name", "qty"],
          "properties": {"name": {"type": "string"}, "qty": {"type": "integer"}}}


@pytest.mark.parametrize(("answer", "want"), [
    ('{"name": "Lamp", "qty": 3}', 1.0),
    ('Here you go:\n```json\n{"name": "lamp", "qty": 3, "extra": true}\n```', 1.0),  # fenced; extra keys allowed
    ('Sure! {"name": "lamp", "qty": 3} Hope that helps.', 1.0),
    ('{"name": "lamp", "qty": "3"}', 0.0),  # schema: qty must be an integer
    ('{"name": "desk", "qty": 3}', 0.0),  # valid, but not the reference
    ('{"name": "lamp", "qty": 3', 0.0),  # malformed
    ("no json here", 0.0),
])
def test_json_schema_validates_and_checks_the_reference(answer: str, want: float) -> None:
    assert _grade({"type": "json_schema", "schema": SCHEMA}, {"name": "lamp", "qty": 3}, answer) == want


def test_judge_scores_are_parsed_and_failures_are_errors_not_zeros() -> None:
    seen: list[str] = []

    async def judge(prompt: str) -> str:
        seen.append(prompt)
        return "The answer is mostly right.\nSCORE: 4"

    item = _item("judge", "The move slips to June.", "Summarise: the move is delayed to June.")
    assert asyncio.run(grade(item, "Moving in June.", judge)) == 0.75
    assert "The move slips to June." in seen[0] and "Moving in June." in seen[0] and "SCORE: <1-5>" in seen[0]

    async def rambles(prompt: str) -> str:
        return "I think it is quite good overall."

    async def broken(prompt: str) -> str:
        raise ConnectionError("judge down")

    for bad in (rambles, broken, None):
        with pytest.raises(GradeError):
            asyncio.run(grade(item, "Moving in June.", bad))
    assert graders.parse_judge_score("SCORE: 1") == 0.0 and graders.parse_judge_score("**Score: 5**") == 1.0


def test_graders_read_a_bounded_part_of_a_runaway_answer() -> None:
    huge = "x" * (graders.MAX_GRADED_CHARS * 4) + "391"
    assert _grade({"type": "numeric"}, "391", huge) == 0.0  # the tail past the bound is never read


# ------------------------------------------------------------------------------------------------ workloads


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "q"}', "'id' is required"),
    ('{"id": "a"}', "'messages' or 'prompt'"),
    ('{"id": "a", "prompt": "q", "grader": "fuzzy", "reference": "x"}', "grader must be one of"),
    ('{"id": "a", "prompt": "q", "grader": {"type": "regex", "pattern": "("}}', "bad regex"),
    ('{"id": "a", "prompt": "q", "grader": {"type": "json_schema", "schema": {"type": "nope"}}}', "bad schema"),
    ('{"id": "a", "prompt": "q", "grader": "numeric", "reference": "many"}', "numeric reference"),
    ('{"id": "a", "prompt": "q", "grader": "exact"}', "needs a reference"),
    ('{"id": "a", "prompt": "q", "reference": "x", "weight": 0}', "'weight'"),
    ('not json', "not JSON"),
])
def test_a_bad_item_is_refused_with_its_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"id": "ok", "prompt": "fine", "reference": "x"}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=message) as info:
        load_workload(path)
    assert f"{path}:2" in str(info.value)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text('{"id": "a", "prompt": "q", "reference": "x"}\n{"id": "a", "prompt": "r", "reference": "y"}\n')
    with pytest.raises(WorkloadError, match="duplicate id"):
        load_workload(path)


def test_the_sample_workload_is_graded_and_covers_its_kinds() -> None:
    w = load_workload(REPO / "workloads/sample.jsonl")
    assert len(w.items) >= 150
    kinds = {i.grader.kind for i in w.items}
    assert {"numeric", "json_schema", "exact", "contains", "regex", "judge"} <= kinds
    assert {"arithmetic", "extraction", "classification", "factual", "summarisation", "code"} <= set(w.tags)


def test_the_sample_references_pass_their_own_graders() -> None:
    """Every non-judge item's reference, given as the answer, gets full marks (a wrong reference fails here)."""
    w = load_workload(REPO / "workloads/sample.jsonl")
    for item in w.items:
        if item.grader.kind == "judge":
            continue
        if item.grader.kind == "json_schema":
            answer = json.dumps(item.reference)
        elif item.grader.kind == "regex":
            continue  # a pattern is not an answer; the regex graders are tested above
        else:
            answer = item.reference if isinstance(item.reference, str) else item.reference[0]
        assert asyncio.run(grade(item, answer)) == 1.0, item.id


# ------------------------------------------------------------------------------------------------ calibration


def _brute_force(rows: list[Paired], target: float) -> tuple[float, float]:
    """The cheapest (cost, share) reaching the target, trying every subset boundary by sorting: an independent
    implementation of the definition, O(n^2)."""
    capable_q = sum(r.weight * r.capable_quality for r in rows) / sum(r.weight for r in rows)
    best = None
    nothing_up = {2.0} if max(r.score for r in rows) < 1.0 else set()  # a threshold the config can hold
    for t in sorted({r.score for r in rows} | nothing_up):
        up = [r for r in rows if r.score >= t]
        q = sum(r.weight * (r.capable_quality if r.score >= t else r.cheap_quality) for r in rows) / sum(r.weight for r in rows)
        cost = sum(r.capable_cost if r.score >= t else r.cheap_cost for r in rows)
        share = sum(r.weight for r in up) / sum(r.weight for r in rows)
        if q >= target * capable_q - 1e-12 and (best is None or (round(cost, 12), share) < best):
            best = (round(cost, 12), share)
    assert best is not None
    return best


def test_calibration_finds_the_known_optimum() -> None:
    """Easy items (scores below 0.4) are answered right by both; hard ones (0.6 and over) only by the capable
    target: the cheapest threshold at full quality sends exactly the hard ones up, between 0.35 and 0.6."""
    rows = [Paired(f"e{i}", 0.05 + 0.03 * i, 1.0, 1.0, 1.0, 0.0, 0.01) for i in range(11)]  # 0.05..0.35
    rows += [Paired(f"h{i}", 0.6 + 0.03 * i, 1.0, 0.0, 1.0, 0.0, 0.01) for i in range(9)]  # 0.60..0.84
    cal = calibrate(rows, "local", "cloud", target=1.0)
    assert cal.chosen is not None
    assert cal.chosen.threshold == pytest.approx((0.35 + 0.6) / 2)
    assert cal.chosen.share_capable == pytest.approx(9 / 20) and cal.chosen.quality == 1.0
    assert cal.chosen.cost == pytest.approx(0.09)
    assert cal.cheap_quality == pytest.approx(11 / 20) and cal.capable_quality == 1.0
    shares = [p.share_capable for p in cal.points]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0


def test_calibration_matches_brute_force_on_noisy_results() -> None:
    rng = random.Random(7)
    for trial, target in itertools.product(range(30), (0.8, 0.9, 0.95, 1.0)):
        rows = []
        for i in range(rng.randint(5, 40)):
            s = round(rng.random(), 2)  # ties in score happen
            rows.append(Paired(f"{trial}-{i}", s, rng.choice([0.5, 1.0, 2.0]), float(rng.random() > s),
                               float(rng.random() > 0.1), rng.random() * 0.001, rng.random() * 0.01))
        cal = calibrate(rows, "a", "b", target)
        assert cal.chosen is not None
        assert (round(cal.chosen.cost, 12), cal.chosen.share_capable) == pytest.approx(_brute_force(rows, target))
        # the written threshold routes exactly the chosen items up
        up = sum(r.weight for r in rows if r.score >= cal.chosen.threshold) / sum(r.weight for r in rows)
        assert up == pytest.approx(cal.chosen.share_capable)


CONFIG = """# the team's router
[[backends]]
name = "cpu"
kind = "llamacpp"
tier = "local"
model = "gemma-3-270m"

[routing]
overflow_wait_s = 0   # never wait
complexity_threshold = 0.5

[cache]
backend = "off"
"""


def test_the_threshold_is_written_into_the_config_keeping_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(CONFIG)
    write_threshold(path, 0.4125)
    text = path.read_text()
    assert load_config(str(path)).routing.complexity_threshold == 0.4125
    assert "# the team's router" in text and "overflow_wait_s = 0   # never wait" in text
    assert text.count("complexity_threshold") == 1
    path.write_text(CONFIG.replace("complexity_threshold = 0.5\n", ""))  # no such line yet
    write_threshold(path, 0.7)
    assert load_config(str(path)).routing.complexity_threshold == 0.7
    path.write_text(CONFIG.split("[routing]")[0])  # no [routing] section at all
    write_threshold(path, 0.3)
    assert load_config(str(path)).routing.complexity_threshold == 0.3


# ------------------------------------------------------------------------------------------------ compare


def _doc(scores: dict[str, float], target: str = "local") -> dict[str, object]:
    from hybrid.evals.results import summarise
    from hybrid.evals.runner import ItemResult

    results = [ItemResult(k, target, v, None, "", 0.1, 0.05, 0.0, 0.0) for k, v in scores.items()]
    return {"targets": [target], "summary": summarise(results, [target]), "items": [r.to_json() for r in results],
            "model_ids": {target: ["m"]}}


def test_compare_flags_a_drop_beyond_the_interval_only() -> None:
    old = _doc({f"i{n}": 1.0 for n in range(40)})
    worse = _doc({f"i{n}": (0.0 if n % 2 else 1.0) for n in range(40)})
    noise = _doc({f"i{n}": (0.0 if n == 3 else 1.0) for n in range(40)})
    rows, regressed = compare(old, worse)
    assert regressed and rows[0]["regression"] and rows[0]["difference"] == pytest.approx(-0.5)
    rows, regressed = compare(old, noise)
    assert not regressed and not rows[0]["regression"]
    rows, regressed = compare(worse, old)
    assert not regressed and rows[0]["improvement"]


def test_calibration_scores_read_the_cache_embedding_when_production_would() -> None:
    """With the semantic cache on, the router's learned scorer reads the embedding the cache computed: the
    scores calibration sorts by must be those, not the lexical head's."""
    from hybrid.cache.embeddings import LocalMiniLM
    from hybrid.cache.keys import conversation_text
    from hybrid.config import CacheConfig, Config
    from hybrid.evals.cli import _scores
    from hybrid.protocol import parse_chat_request
    from hybrid.routing.features import extract_features
    from hybrid.routing.learned import LearnedScorer

    items = [_item("exact", "x", "Design a chat system for ten million users.")]
    lexical = _scores(Config(), items)
    semantic = _scores(Config(cache=CacheConfig(semantic=True)), items)
    embedder = LocalMiniLM()
    embedder.load()
    req = parse_chat_request({"model": "auto", "messages": items[0].messages})
    vector = embedder.embed_sync([conversation_text(req)])[0]
    scorer = LearnedScorer()
    assert lexical["x"] == pytest.approx(scorer.score(extract_features(req)), abs=1e-6)
    assert semantic["x"] == pytest.approx(scorer.score(extract_features(req, vector)), abs=1e-5)
    assert semantic["x"] != lexical["x"]


def test_an_unreachable_router_is_an_error_with_its_reason(tmp_path: Path) -> None:
    import subprocess
    import sys

    workload = tmp_path / "w.jsonl"
    workload.write_text('{"id": "a", "prompt": "2+2?", "reference": "4", "grader": "numeric"}\n')
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-m", "hybrid", "eval", str(workload), "--targets", "local", "--url",
                           "http://127.0.0.1:9/v1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "nothing was graded; the first error: ConnectError" in done.stderr
    doc = json.loads(out.read_text())  # the results are still written, with every error in them
    assert doc["items"][0]["error"].startswith("ConnectError") and doc["summary"]["local"]["overall"]["errors"] == 1
