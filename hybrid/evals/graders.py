"""Grading one answer against one item: a score in [0, 1], or :class:`GradeError` when the grade cannot be known
(a judge that failed or answered without a score). An error is never a zero: it is counted apart."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from hybrid.evals.workload import Item
from hybrid.text import fold

MAX_GRADED_CHARS = 64 << 10  # what a grader reads of an answer: bounds a regex's work on a runaway answer


class GradeError(Exception):
    """The grade is unknown (not: the answer is wrong)."""


JudgeFn = Callable[[str], Awaitable[str]]  # a rubric prompt in, the judge's reply out


def grade_exact(answer: str, reference: str | list[str]) -> float:
    refs = reference if isinstance(reference, list) else [reference]
    return 1.0 if fold(answer) in {fold(r) for r in refs} else 0.0


def grade_contains(answer: str, reference: str | list[str]) -> float:
    """Every reference string appears in the answer (case and spacing folded)."""
    refs = reference if isinstance(reference, list) else [reference]
    a = fold(answer)
    return 1.0 if all(fold(r) in a for r in refs) else 0.0


def grade_regex(answer: str, pattern: str) -> float:
    return 1.0 if re.search(pattern, answer, re.IGNORECASE | re.DOTALL) else 0.0


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUMBER.finditer(text):
        token = m.group().replace(",", "")
        try:
            out.append(float(token))
        except ValueError:
            continue
    return out


_ANSWER_NUMBER = re.compile(r"\banswer\b[^0-9\n-]{0,24}(-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?)", re.IGNORECASE)


def grade_numeric(answer: str, reference: Any, tolerance: float = 0.0, relative: bool = False) -> float:
    """The answer's final number is within ``tolerance`` of the reference (a fraction of it with ``relative``).
    Its final number: the one after the last "answer" (``The answer is 391``), else the first after the last
    ``=``, else the last number in it."""
    want = float(str(reference).replace(",", ""))
    named = _ANSWER_NUMBER.findall(answer)
    if named:
        got = _numbers(named[-1])
    else:
        after_eq = _numbers(answer.rpartition("=")[2]) if "=" in answer else []
        got = after_eq[:1] or _numbers(answer)[-1:]
    if not got:
        return 0.0
    bound = abs(want) * tolerance if relative else tolerance
    return 1.0 if abs(got[0] - want) <= bound + 1e-9 else 0.0


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_in(answer: str) -> Any:
    """The first JSON value in the answer: a fenced block, the whole text, or the outermost braces."""
    candidates = [m.group(1) for m in _FENCE.finditer(answer)] + [answer]
    start = min((i for i in (answer.find("{"), answer.find("[")) if i >= 0), default=-1)
    if start >= 0:
        end = max(answer.rfind("}"), answer.rfind("]"))
        if end > start:
            candidates.append(answer[start : end + 1])
    for text in candidates:
        try:
            return orjson.loads(text.strip())
        except orjson.JSONDecodeError:
            continue
    raise ValueError("no JSON")


def _contains(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _contains(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(_contains(g, w) for g, w in zip(got, want))
    if isinstance(want, str) and isinstance(got, str):
        return fold(got) == fold(want)
    if isinstance(want, (int, float)) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return abs(got - want) <= 1e-9
    return bool(got == want)


def grade_json_schema(answer: str, schema: dict[str, Any], reference: Any = None) -> float:
    """1 when the answer holds JSON valid under the schema (and, with a reference, containing it); else 0."""
    from jsonschema import Draft202012Validator

    try:
        value = _json_in(answer)
    except ValueError:
        return 0.0
    if not Draft202012Validator(schema).is_valid(value):
        return 0.0
    if reference is not None and not _contains(value, reference):
        return 0.0
    return 1.0


RUBRIC = """You are grading an answer to a question against a reference answer.

Question:
<<<
{question}
>>>

Reference answer:
<<<
{reference}
>>>

Answer to grade:
<<<
{answer}
>>>

Score the answer from 1 to 5: 5 = correct and complete, as good as the reference; 4 = correct with a minor
omission; 3 = partly correct; 2 = mostly wrong; 1 = wrong, missing or off-topic. Judge the content, not the
style or length. Reply with one line in exactly this form: SCORE: <1-5>"""

_SCORE = re.compile(r"SCORE\s*[:=]\s*\**\s*([1-5])\b", re.IGNORECASE)
_JUDGE_EXCERPT = 8_000


def judge_prompt(item: Item, answer: str) -> str:
    return RUBRIC.format(question=item.prompt_text[:_JUDGE_EXCERPT],
                         reference=str(item.reference or "(none: judge on correctness alone)")[:_JUDGE_EXCERPT],
                         answer=answer[:_JUDGE_EXCERPT])


def parse_judge_score(reply: str) -> float:
    """The rubric's 1-5 as a score in [0, 1]; :class:`GradeError` when the reply carries no score."""
    found = _SCORE.findall(reply)
    if not found:
        raise GradeError(f"the judge's reply has no SCORE line: {reply[:120]!r}")
    return (int(found[-1]) - 1) / 4


async def grade(item: Item, answer: str, judge: JudgeFn | None = None) -> float:
    answer = answer[:MAX_GRADED_CHARS]
    g, ref = item.grader, item.reference
    if g.kind == "exact":
        return grade_exact(answer, ref)
    if g.kind == "contains":
        return grade_contains(answer, ref)
    if g.kind == "regex":
        return grade_regex(answer, g.options.get("pattern", ref))
    if g.kind == "numeric":
        return grade_numeric(answer, ref, float(g.options.get("tolerance", 0.0)), bool(g.options.get("relative")))
    if g.kind == "json_schema":
        return grade_json_schema(answer, g.options["schema"], ref)
    if g.kind == "judge":
        if judge is None:
            raise GradeError("a judge item, and no --judge target")
        try:
            reply = await judge(judge_prompt(item, answer))
        except GradeError:
            raise
        except Exception as exc:  # the judge's call failed: the grade is unknown
            raise GradeError(f"the judge failed: {exc}") from None
        return parse_judge_score(reply)
    raise GradeError(f"unknown grader {g.kind!r}")
