"""Where the router keeps files: assembled models and its own state (the response cache among it)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where assembled models live (``HYBRID_CACHE_DIR``, default ``~/.cache/hybrid``)."""
    base = os.environ.get("HYBRID_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "hybrid"


def data_dir() -> Path:
    """Where the router keeps its own state, the response cache among it (``HYBRID_DATA_DIR``, default the
    cache folder)."""
    base = os.environ.get("HYBRID_DATA_DIR")
    return Path(base) if base else cache_dir()
