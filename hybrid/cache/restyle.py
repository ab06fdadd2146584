"""A formal question retyped as people type into a chat, for training the pair model (verifier_training.py).

In every labelled pair the pair models were trained on where one side is formal ("How do I copy a file from my host
into a container?") and the other chat-typed ("copy a file out of a docker container onto my host machine"), the two
ask the same question: 860 such paraphrases against 2 such near-misses. So a difference of style read as a sign of a
paraphrase, and on sealed v12, whose near-misses were mostly written across styles, the pair model served 20 of 125
of them. :func:`chat_typed` retypes one side of a pair written in one style, near-misses and paraphrases alike, so
that style says nothing about the label and only what the question asks does.

The retyping drops only what the asker's intent does not hang on (the "How do I" frame, the closing mark, articles,
case), never a word that tells the pair apart: each word of the retyped text that its partner lacks survives.
"""

from __future__ import annotations

import random
import re

_WORD = re.compile(r"[\w']+")

# a question's frame, and what it becomes in a chat: "" drops it, a tail goes after the rest ("..., why")
_FRAMES: tuple[tuple[re.Pattern[str], tuple[str, ...], tuple[str, ...]], ...] = tuple(
    (re.compile(rf"^{head}\s+", re.IGNORECASE), heads, tails) for head, heads, tails in (
        (r"how (?:do|can|should) (?:i|we|you)", ("", "how to ", "how do i "), (", how", " - how?", "")),
        (r"how to", ("", "how to "), (", how", "")),
        (r"what is the difference between", ("difference between ", "diff between "), ("",)),
        (r"what(?: is|'s)", ("", "whats ", "what's "), (" explained", " meaning", "", "?")),
        (r"why (?:does|do|is|are|did|would)", ("",), (", why", " - why?", " why")),
        (r"(?:can|could) (?:i|you|we)", ("can i ", "", "possible to "), ("", "?")),
        (r"should (?:i|we)", ("should i ", "worth it to "), ("", "?")),
        (r"is it (?:safe|ok|okay|possible|normal|worth it) to", ("", "ok to "), ("?", ", safe?", "")),
        (r"(?:please )?(?:tell me|explain)", ("", "explain "), ("", " pls")),
    ))
_ARTICLES = {"a", "an", "the"}


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def is_formal(text: str) -> bool:
    """Written as a formal question or sentence: a capital first, a closing mark last."""
    text = text.strip()
    return bool(text) and text[0].isupper() and text[-1] in "?.!"


def chat_typed(text: str, partner: str, rng: random.Random) -> str:
    """``text`` as it might be typed into a chat: lower case mostly, no closing mark, often without its question
    frame ("how do I ...", "what is ...") or with the frame moved to the end, sometimes without articles. Every word
    of ``text`` that ``partner`` lacks is kept (a near-miss stays one), and the result is never ``partner``."""
    keep = words(text) - words(partner)
    body = text.strip().rstrip("?.! ")
    out = body
    for pattern, heads, tails in _FRAMES if not re.search(r"[?.!]\s", body) else ():  # one sentence only
        found = pattern.match(body)
        if found is None:
            continue
        rest = body[found.end():]
        frame = {w.lower() for w in _WORD.findall(found.group(0))}
        if frame & keep:  # the frame is what differs ("how do I" against "why do I"): it stays
            break
        head, tail = rng.choice(heads), rng.choice(tails)
        out = head + rest + (tail if not head else "")
        break
    if rng.random() < 0.35:
        tokens = out.split(" ")
        out = " ".join(t for t in tokens if t.lower() not in _ARTICLES or t.lower() in keep) or out
    if rng.random() < 0.85:
        out = out.lower()
    elif out[:1].isupper():
        out = out[0].lower() + out[1:]
    if not keep <= words(out) or _same(out, partner):
        out = body.lower()  # the lightest retyping: case and the closing mark
    return out


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).rstrip("?.! ") == " ".join(b.lower().split()).rstrip("?.! ")
