"""File helpers: atomic writes (text, or JSON with `write_json_atomic`; `read_json` reads one back or a default) (a reader sees the old file or folder or the whole new one, never half of one,
even after a crash or a power cut), the files shipped inside installed wheels (`package_files`) and
turngym's cache folder (`cache_dir`).

Depends on nothing else of ours, so any layer may import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder is created) to write a file or a folder to; when the
    block ends it is fsynced (a folder: every file and folder in it), renamed onto ``path`` (an existing
    folder is replaced) and the parent folder is fsynced, so the new content is on disk before its name
    is and the rename itself survives a power cut. Removed when the block raises (Ctrl-C included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{threading.get_ident()}"
    tmp = path.with_name(f"{path.name}.{tag}.tmp")
    try:
        yield tmp
        if tmp.is_dir():
            fsync_tree(tmp)
            if path.is_dir():  # a rename cannot replace a non-empty folder: move the old one aside first
                old = path.with_name(f"{path.name}.{tag}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            fsync_file(tmp)
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing or unreadable (a resumable step's result file)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """``data`` as JSON to ``path`` atomically (parent folders made); returns the path."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(data, indent=indent))


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's content to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to the disk; a no-op on Windows,
    which cannot open a folder and commits its entries with the rename."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under ``folder`` (and the folder itself), deepest first."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


__all__ = ["atomic_path", "fsync_dir", "fsync_file", "fsync_tree", "write_text_atomic"]


def package_files(distribution: str) -> list[Path] | None:
    """The files an installed distribution lists, located on disk (None when it is not installed): how
    turngym finds the data and models shipped inside PyPI wheels (the default model's GGUF, Wikipedia
    summaries, the MiniLM retriever). Callers pick their file and raise their own error."""
    from importlib import metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    return [Path(str(f.locate())) for f in dist.files or ()]


def cache_dir() -> Path:
    """turngym's cache root: ``$TURNGYM_CACHE``, else ``$XDG_CACHE_HOME/turngym``, else ``~/.cache/turngym``."""
    root = os.environ.get("TURNGYM_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "turngym"
