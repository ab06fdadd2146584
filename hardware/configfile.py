"""Writing the planned local tier into a config file without clobbering anything else in it.

The file is edited as text: ``[[backends]]`` blocks whose ``tier`` is ``local`` are replaced by the plan's block;
every other line (comments, other backends, server, routing) stays as it was.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"-]+)\s*\]\]?\s*(#.*)?$")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def backend_block(entry: dict[str, Any], comment: str) -> str:
    lines = [f"# {comment}", "[[backends]]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in entry.items() if v not in ("", None)]
    return "\n".join(lines) + "\n"


def _blocks(text: str) -> list[tuple[str | None, list[str]]]:
    """Split into (header, lines) blocks; the preamble has header None."""
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines(keepends=True):
        m = _HEADER.match(line)
        if m and not line.lstrip().startswith("#"):
            blocks.append((line.strip(), [line]))
        else:
            blocks[-1][1].append(line)
    return blocks


def write_local_tier(path: str | Path, entry: dict[str, Any], comment: str) -> str:
    """Replace the local tier's backends in ``path`` (creating it if needed); returns the new text."""
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else ""
    if text:
        tomllib.loads(text)  # refuse to edit a file that is not valid TOML
    kept: list[str] = []
    for header, lines in _blocks(text):
        if header is not None and header.replace(" ", "") == "[[backends]]":
            body = "".join(lines[1:])
            try:
                tier = tomllib.loads(body).get("tier", "local")
            except tomllib.TOMLDecodeError:
                tier = None
            if tier == "local":
                continue
        kept.extend(lines)
    head = "".join(kept).rstrip("\n")
    block = backend_block(entry, comment)
    new = _insert_before_first_backend(head, block) if head.strip() else block
    tomllib.loads(new)  # the result must still parse
    p.write_text(new, encoding="utf-8")
    return new


def _insert_before_first_backend(head: str, block: str) -> str:
    """Put the local tier first among the backends (the order in which tiers appear), after any preamble tables."""
    lines = head.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip().replace(" ", "") == "[[backends]]":
            return "".join(lines[:i]) + block + "\n" + "".join(lines[i:]) + "\n"
    return head + "\n\n" + block
