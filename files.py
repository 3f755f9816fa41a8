"""File helpers: atomic writes (a reader sees the old file or the whole new one, never half of one) and
the files shipped inside installed wheels (`package_files`).

Depends on nothing else of ours, so any layer may import it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder is created) to write to: renamed onto ``path`` when the
    block ends, removed when it raises (Ctrl-C included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


__all__ = ["atomic_path", "write_text_atomic"]


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
