"""turngym.files: atomic writes are durable (content fsynced before the rename, the folder after it) and
leave nothing behind when they fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turngym.files import atomic_path, write_text_atomic


@pytest.fixture
def events(monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name fsynced descriptors")
    log = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def record_replace(src, dst, *a, **k):
        log.append(("replace", str(src), str(dst)))
        return replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    return log


def test_a_file_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, events):
    path = tmp_path / "sub" / "result.json"
    write_text_atomic(path, "{}\n")
    assert path.read_text() == "{}\n"
    (_, tmp), rename, folder = events
    assert rename == ("replace", tmp, str(path)) and folder == ("fsync", str(path.parent))


def test_a_folder_is_written_whole_and_replaces_the_old_one(tmp_path, events):
    path = tmp_path / "checkpoint-3"
    path.mkdir()
    (path / "stale.bin").write_bytes(b"old")
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"new")
        (tmp / "adapter").mkdir()
        (tmp / "adapter" / "a.bin").write_bytes(b"a")
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == ["adapter", "adapter/a.bin", "weights.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]  # the old folder went, no temp one
    first = next(i for i, e in enumerate(events) if e[0] == "replace")
    synced = {e[1] for e in events[:first] if e[0] == "fsync"}
    assert {str(tmp / "weights.bin"), str(tmp / "adapter" / "a.bin"), str(tmp / "adapter"), str(tmp)} <= synced
    assert events[-1] == ("fsync", str(tmp_path))


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    (path / "keep.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("ha")
        raise KeyboardInterrupt
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "file.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (path / "keep.txt").read_text() == "old"
