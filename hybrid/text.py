"""Folding text for comparison: what two short answers must agree on to count as the same."""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")


def fold(text: str) -> str:
    """Unicode-normalised (NFKC), case-folded, whitespace collapsed, and stripped of surrounding spaces, quotes,
    backticks, asterisks and final punctuation: "  Paris.\\n" and "paris" fold alike."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", text).strip().strip(" .!\"'`*")
