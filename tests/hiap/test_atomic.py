"""Atomic writes: a reader sees the old file or the whole new one; a failed write leaves the old file and no temp."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hiap.base.atomic as atomic
from hiap.base.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from hiap.base.errors import HiapError


def test_writes_replace_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    write_bytes_atomic(path, b"short")
    assert path.read_bytes() == b"short"  # replaced, not overwritten in place (no tail of the old bytes)
    write_text_atomic(path, "h\u00e9")
    assert path.read_bytes() == "h\u00e9".encode()
    write_json_atomic(path, {"b": [1, 2], "a": None})
    assert path.read_text() == '{\n  "b": [\n    1,\n    2\n  ],\n  "a": null\n}\n'
    write_json_atomic(path, {"a": 1}, indent=1)
    assert path.read_text() == '{\n "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    seen = []

    def full_disk(fd: int) -> None:
        seen.append((tmp_path / "report.json.tmp").read_bytes())  # the new bytes are on disk, under the temp name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(HiapError) as err:
        write_json_atomic(path, {"new": True})
    assert seen == [b'{\n  "new": true\n}\n']
    assert str(err.value) == f"Cannot write '{path}': No space left on device."
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_rename_that_fails_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()  # a folder where the file should go: os.replace refuses
    (target / "keep").write_text("k")
    with pytest.raises(HiapError, match=f"Cannot write '{target}': Is a directory"):
        write_bytes_atomic(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "keep").read_text() == "k"


def test_a_missing_folder_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "f.json"
    with pytest.raises(HiapError) as err:
        write_json_atomic(path, {})
    assert str(err.value) == f"Cannot write '{path}': No such file or directory."
    assert list(tmp_path.iterdir()) == []


def test_imports_without_torch() -> None:
    """The device install writes its reports with it and has no torch."""
    code = "import sys, hiap.base.atomic; sys.exit(int(any(m.split('.')[0] in ('torch', 'timm') for m in sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
