"""Atomic writes: all or nothing, with ordinary file permissions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hicur_monai.utils.io import atomic_open, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file_and_keeps_old_on_failure(tmp_path: Path):
    target = tmp_path / "sub" / "result.json"
    atomic_write_json(target, {"a": 1})
    assert target.read_text().strip() == '{\n  "a": 1\n}'
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert '"a": 1' in target.read_text()  # the old content survives
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temp file left behind


def test_atomic_files_get_umask_permissions_not_0600(tmp_path: Path):
    from hicur_monai.utils import io

    path = atomic_write_text(tmp_path / "x.txt", "hello")
    plain = tmp_path / "plain.txt"
    plain.write_text("hello")  # what open() gives under this process's umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~io._UMASK
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "y", "a"):
            pass
