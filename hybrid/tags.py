"""Tags on a request: who sent it and for what, so that its cost lands on the right feature and team.

From, in increasing precedence: the API key's default tags in the config (``server.key_tags``), the body's
``metadata`` object (OpenAI's field), ``user`` (as the tag ``user``), and the header
``x-hybrid-tags: feature=search,team=billing``. Keys and values are checked (charset, length, count); a bad tag is
a 400 naming it, so a typo never silently books cost to nowhere.
"""

from __future__ import annotations

import re
from typing import Any

from hybrid.errors import InvalidRequestError

HEADER = "x-hybrid-tags"
MAX_TAGS = 16
_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+ -]{1,128}$")


def _check(key: Any, value: Any, where: str) -> tuple[str, str]:
    if not isinstance(key, str) or not _KEY.match(key):
        raise InvalidRequestError(
            f"Invalid tag key {key!r} in {where}: lower-case letters, digits, '_', '.', '-', at most 32, starting "
            "with a letter.", param=where,
        )
    if not isinstance(value, str) or not _VALUE.match(value):
        raise InvalidRequestError(
            f"Invalid value for tag '{key}' in {where}: letters, digits, spaces and _ . : / @ + -, 1 to 128 "
            "characters.", param=f"{where}.{key}" if where == "metadata" else where,
        )
    return key, value


def parse_header(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise InvalidRequestError(f"Tag {part!r} in {HEADER} must be key=value.", param=HEADER)
        k, v = _check(key.strip(), val.strip(), HEADER)
        tags[k] = v
    return tags


def request_tags(defaults: dict[str, str], body: dict[str, Any], header: str | None) -> dict[str, str]:
    """The request's tags: key defaults, then ``metadata``, ``user`` and the header, each over the last."""
    tags = dict(defaults)
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequestError("'metadata' must be an object of string values.", param="metadata")
        for key, value in metadata.items():
            k, v = _check(key, value, "metadata")
            tags[k] = v
    user = body.get("user")
    if user is not None:
        tags.update([_check("user", user, "user")])
    if header:
        tags.update(parse_header(header))
    if len(tags) > MAX_TAGS:
        raise InvalidRequestError(f"A request may carry at most {MAX_TAGS} tags (got {len(tags)}).", param=HEADER)
    return tags
