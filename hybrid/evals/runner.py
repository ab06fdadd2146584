"""Running a workload against targets through the router: every item to every target, a bounded number in
flight per target, the cache bypassed (``cache-control: no-store``), each request tagged ``source=eval`` so its
ledger rows are told apart. Judge items are graded by the judge target, through the router too."""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from hybrid import http1
from hybrid.costs import Costing
from hybrid.evals.client import Outcome, chat
from hybrid.evals.graders import GradeError, grade
from hybrid.evals.workload import Item, Workload

DEFAULT_MAX_TOKENS = 256


@dataclass
class ItemResult:
    item: str
    target: str
    score: float | None  # None: no grade (a failed request or an unknown grade; see error)
    error: str | None
    answer: str
    latency_s: float
    ttft_s: float | None
    cost: float
    counterfactual: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tier: str = ""
    backend: str = ""
    model: str = ""
    route_reason: str = ""
    weight: float = 1.0
    tags: list[str] = field(default_factory=list)
    judge_cost: float = 0.0  # what grading this answer cost (judge items)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """A bar per target on one redrawn line on a terminal; elsewhere (a log, CI) a line every 10%."""

    def __init__(self, totals: dict[str, int], out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.totals = totals
        self.done = dict.fromkeys(totals, 0)
        self.errors = dict.fromkeys(totals, 0)
        self.started = time.monotonic()
        self._last_tenth = dict.fromkeys(totals, -1)

    def step(self, target: str, error: bool) -> None:
        self.done[target] += 1
        self.errors[target] += int(error)
        if self.tty:
            line = "  ".join(f"{t} [{self._bar(self.done[t], n)}] {self.done[t]}/{n}"
                             + (f" ({self.errors[t]} err)" if self.errors[t] else "") for t, n in self.totals.items())
            self.out.write(f"\r{line}  {time.monotonic() - self.started:.0f}s ")
            self.out.flush()
            return
        tenth = self.done[target] * 10 // max(1, self.totals[target])
        if tenth != self._last_tenth[target]:
            self._last_tenth[target] = tenth
            self.out.write(f"{target}: {self.done[target]}/{self.totals[target]} done, {self.errors[target]} errors, "
                           f"{time.monotonic() - self.started:.0f}s\n")
            self.out.flush()

    @staticmethod
    def _bar(done: int, total: int, width: int = 12) -> str:
        filled = width * done // max(1, total)
        return "#" * filled + "." * (width - filled)

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


@dataclass
class EvalRun:
    """What to run, against which router."""

    workload: Workload
    targets: list[str]
    base_url: str  # the router's /v1 URL
    api_key: str = ""
    concurrency: int = 4
    judge: str | None = None
    timeout_s: float = 300.0
    stream: bool = True


async def run_eval(run: EvalRun, costing: Costing, progress: Progress | None = None) -> list[ItemResult]:
    headers = {"cache-control": "no-store"}
    if run.api_key:
        headers["authorization"] = f"Bearer {run.api_key}"
    pool = http1.Pool(run.base_url, headers=headers, max_connections=max(8, run.concurrency * (len(run.targets) + 1)))
    judge_slots = asyncio.Semaphore(run.concurrency)

    async def ask_judge(prompt: str, result: ItemResult) -> str:
        assert run.judge is not None
        async with judge_slots:
            out = await chat(pool, {"model": run.judge, "messages": [{"role": "user", "content": prompt}],
                                    "max_tokens": 16, "temperature": 0},
                             {"x-hybrid-tags": "source=eval,eval_role=judge"}, run.timeout_s)
        if not out.ok:
            raise GradeError(f"the judge ({run.judge}) failed: {out.error}")
        result.judge_cost += _cost(out, costing)
        return out.text

    async def one(target: str, item: Item, slots: asyncio.Semaphore) -> ItemResult:
        body: dict[str, Any] = {"model": target, "messages": item.messages,
                                "max_tokens": item.max_tokens or DEFAULT_MAX_TOKENS, "temperature": 0,
                                "stream": run.stream}
        async with slots:
            out = await chat(pool, body, {"x-hybrid-tags": "source=eval"}, run.timeout_s)
        result = _result(item, target, out, costing)
        if out.ok:
            try:
                judge = functools.partial(ask_judge, result=result) if run.judge else None
                result.score = await grade(item, out.text, judge)
            except GradeError as exc:
                result.error = f"grade: {exc}"
        if progress is not None:
            progress.step(target, result.error is not None)
        return result

    try:
        tasks: list[Coroutine[Any, Any, ItemResult]] = []
        for target in run.targets:
            slots = asyncio.Semaphore(run.concurrency)
            tasks.extend(one(target, item, slots) for item in run.workload.items)
        return list(await asyncio.gather(*tasks))
    finally:
        await pool.close()
        if progress is not None:
            progress.close()


def _cost(out: Outcome, costing: Costing) -> float:
    """What an answer cost, priced as the router's ledger prices it: by the backend and the model id it was asked
    for (``x-hybrid-model``); a local backend by its generation time."""
    if not out.ok:
        return 0.0
    details: Any = out.usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens", 0) or 0) if isinstance(details, dict) else 0
    generation_s = out.latency_s - out.ttft_s if out.ttft_s is not None else 0.0
    return costing.cost(out.headers.get("x-hybrid-backend", ""), out.headers.get("x-hybrid-model") or out.model,
                        _tokens(out, "prompt"), _tokens(out, "completion"), cached, generation_s)


def _tokens(out: Outcome, kind: str) -> int:
    return int(out.usage.get(f"{kind}_tokens", 0) or 0)


def _result(item: Item, target: str, out: Outcome, costing: Costing) -> ItemResult:
    prompt, completion = _tokens(out, "prompt"), _tokens(out, "completion")
    return ItemResult(
        item=item.id, target=target, score=None, error=out.error, answer=out.text, latency_s=round(out.latency_s, 6),
        ttft_s=None if out.ttft_s is None else round(out.ttft_s, 6), cost=_cost(out, costing),
        counterfactual=costing.counterfactual(prompt, completion) if out.ok else 0.0,
        prompt_tokens=prompt, completion_tokens=completion, tier=out.headers.get("x-hybrid-tier", ""),
        backend=out.headers.get("x-hybrid-backend", ""), model=out.model,
        route_reason=out.headers.get("x-hybrid-route-reason", ""), weight=item.weight, tags=list(item.tags),
    )

